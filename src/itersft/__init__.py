"""itersft: iterative supervised fine-tuning for Hugging Face language models.

`IterativeSFTTrainer` optimises on samples the caller hands it, one `step()` at a time, so the caller
can generate, score and filter between steps; `itersft.loop` runs that generate -> score -> filter ->
train loop for you.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["IterativeSFTConfig", "IterativeSFTTrainer"]

# Imported on first use, so `import itersft` (and `itersft --help`) does not pay for torch/transformers.
_LAZY = {"IterativeSFTConfig": "itersft.config", "IterativeSFTTrainer": "itersft.trainer"}

if TYPE_CHECKING:
    from itersft.config import IterativeSFTConfig
    from itersft.trainer import IterativeSFTTrainer


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'itersft' has no attribute {name!r}")
