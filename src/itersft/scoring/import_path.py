"""Code named in a config as "package.module:function" (or "package.module:Class.attribute")."""

from __future__ import annotations

import importlib
import re
from typing import Any

_IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_import_path(spec: str) -> bool:
    """Whether `spec` has the shape "package.module:function" (no path or hub id does: they have no ':')."""
    return _IMPORT_PATH.fullmatch(spec) is not None


def import_object(spec: str) -> Any:
    """The object `spec` names, imported now (ImportError or AttributeError when it cannot be)."""
    module_name, _, attr_path = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        target = getattr(target, attr)
    return target
