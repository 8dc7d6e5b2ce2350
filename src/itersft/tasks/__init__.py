"""Tasks: where prompts (and what scoring needs to know about them) come from.

`prompt_sources` reads a run config's prompt sets, one kind of source per entry of `SOURCES`;
`files` reads local files and folders (JSON/JSONL, Parquet, CSV, `save_to_disk`) and `datasets` names;
`prompt_rows` turns rows in TRL's prompt-only format into prompts and metadata, and
`prompts_from_dataset` does it for a `datasets.Dataset`; `code_benchmarks` loads HumanEval- and
MBPP-format problems from local files; `reasoning_gym` builds prompts from reasoning-gym's tasks
(held-out sets without the training questions) and holds the scorers that check them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itersft.lazy import lazy_exports

__all__ = ["SOURCES", "PromptSource", "prompts_from_dataset", "read_labelled", "read_prompts"]

if TYPE_CHECKING:
    from itersft.tasks.prompt_rows import prompts_from_dataset
    from itersft.tasks.prompt_sources import SOURCES, PromptSource, read_labelled, read_prompts

__getattr__ = lazy_exports(__name__, {"prompts_from_dataset": "itersft.tasks.prompt_rows",
                                      **{name: "itersft.tasks.prompt_sources"
                                         for name in ("SOURCES", "PromptSource", "read_labelled", "read_prompts")}})
