"""itersft: iterative supervised fine-tuning for Hugging Face language models.

`IterativeSFTTrainer` optimises on samples the caller hands it, one `step()` at a time, so the caller
can generate, score and filter between steps; `itersft.loop` runs that generate -> score -> filter ->
train loop for you.
"""

from itersft.config import IterativeSFTConfig
from itersft.trainer import IterativeSFTTrainer

__all__ = ["IterativeSFTConfig", "IterativeSFTTrainer"]
__version__ = "0.1.0"
