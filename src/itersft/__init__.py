"""itersft: iterative supervised fine-tuning for Hugging Face language models.

`IterativeSFTTrainer` optimises on samples the caller hands it, one `step()` at a time, so the caller
can generate, score and filter between steps; `itersft.loop` runs that generate -> score -> filter ->
train loop for you.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itersft.lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["IterativeSFTConfig", "IterativeSFTTrainer"]

if TYPE_CHECKING:
    from itersft.config import IterativeSFTConfig
    from itersft.trainer import IterativeSFTTrainer

__getattr__ = lazy_exports(__name__, {"IterativeSFTConfig": "itersft.config",
                                      "IterativeSFTTrainer": "itersft.trainer"})
