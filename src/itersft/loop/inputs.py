"""The loop's checks on what it is given to run on, in one function that needs no model.

`ExpertIteration.run` calls `check_inputs` before it samples anything; `itersft run` calls the same
function before the model loads (a tokenizer is cheap to load), so a bad prompt file fails in seconds
with the error the Python API gives.
"""

from __future__ import annotations

from itersft.loop.loop_config import LoopConfig
from itersft.sampling.prompts import Prompt, check_format, check_prompts
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample
from itersft.scoring.scorers import Scorer, resolve_scorer, validate_meta


def check_inputs(scorer: Scorer | str, sampling: SamplingConfig, config: LoopConfig, tokenizer,
                 prompts: list[Prompt], meta: list[dict] | None = None, eval_prompts: list[Prompt] | None = None,
                 eval_meta: list[dict] | None = None, labelled: list[Sample] | None = None) -> None:
    """Raise a ValueError naming the first input that cannot run: no prompts; `meta` or `eval_meta` of
    another length than its prompts, or lacking what the scorer needs (`validate_meta`); a prompt that is
    neither a string nor chat messages (`check_prompts`); a prompt format the tokenizer cannot give
    (`check_format`); `labelled_ratio` > 0 with no `labelled` samples."""
    if not prompts:
        raise ValueError("`prompts` is empty: the loop needs prompts to sample from.")
    if meta is not None and len(meta) != len(prompts):
        raise ValueError(f"`meta` has {len(meta)} entries but `prompts` has {len(prompts)}.")
    if eval_prompts is not None and eval_meta is not None and len(eval_meta) != len(eval_prompts):
        raise ValueError(f"`eval_meta` has {len(eval_meta)} entries but `eval_prompts` has {len(eval_prompts)}.")
    if config.labelled_ratio > 0 and not labelled:
        raise ValueError("`labelled_ratio` > 0 needs `labelled` samples to mix in.")
    scorer = resolve_scorer(scorer)
    validate_meta(scorer, meta, len(prompts), "meta")
    if eval_prompts:
        validate_meta(scorer, eval_meta, len(eval_prompts), "eval_meta")
    labelled_prompts = [s.prompt for s in labelled or []]
    check_prompts(prompts, "prompts")
    if eval_prompts is not None:
        check_prompts(eval_prompts, "eval_prompts")
    check_prompts(labelled_prompts, "labelled prompts")
    check_format(sampling.chat_template, sampling.system_prompt, [*prompts, *(eval_prompts or []), *labelled_prompts],
                 tokenizer)
