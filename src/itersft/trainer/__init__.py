"""The trainer: `IterativeSFTTrainer` (`trainer.py`) and the parts it is built from (see its docstring)."""

from itersft.trainer.trainer import IterativeSFTTrainer

__all__ = ["IterativeSFTTrainer"]
