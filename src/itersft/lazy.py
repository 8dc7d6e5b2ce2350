"""Package exports imported on first use, so importing a package (and `itersft --help`) stays instant.

A package lists what it exports as `{name: module}` and sets `__getattr__ = lazy_exports(__name__, that)`:
`from itersft.loop import ExpertIteration` then imports `itersft.loop.expert_iteration` only at that
moment, while `import itersft.loop.callbacks` never pays for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package` that imports each exported name from its module on use."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
