"""The generate -> score -> filter -> train loop, and every part a caller composes it from.

`ExpertIteration` (`expert_iteration`) receives a trainer, a `SamplingConfig`, a scorer (or reward
functions in TRL's convention) and a filter, and runs rounds configured by `LoopConfig`; `LoopCallback`s
watch it. For convenience the parts it is composed from are exported here too, from the packages that
own them: the sampler (`itersft.sampling`), the scorers and reward functions (`itersft.scoring`), the
filters (`itersft.filters`) and prompts from a `datasets.Dataset` (`itersft.tasks`). The loop's own
modules: the checks of its inputs (`inputs`), sampling and scoring for rounds and evaluation alike
(`sample_and_score`), the replay buffer (`buffer`), per-round metrics (`metrics`), held-out evaluation
(`evaluation`), the run directory (`run_dir`, `full_disk`, `curves`) and the run's identity (`run_identity`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itersft.lazy import lazy_exports

_EXPORTS = {
    "ExpertIteration": "itersft.loop.expert_iteration", "LoopConfig": "itersft.loop.loop_config",
    "LoopCallback": "itersft.loop.callbacks",
    "Sampler": "itersft.sampling.sampler", "SamplingConfig": "itersft.sampling.sampler",
    "Sample": "itersft.sampling.samples",
    **{name: "itersft.filters" for name in ("AboveGroupMean", "BestOfK", "Compose", "Dedup", "DropUniformPrompts",
                                            "Threshold", "TopPercent")},
    **{name: "itersft.scoring" for name in ("CodeTests", "RewardFunctions", "RewardModel", "SandboxLimits",
                                            "ScoringOptions", "code", "exact_match", "math_answer", "numeric",
                                            "regex_match")},
    "prompts_from_dataset": "itersft.tasks",
}
__all__ = ["AboveGroupMean", "BestOfK", "CodeTests", "Compose", "Dedup", "DropUniformPrompts", "ExpertIteration",
           "LoopCallback", "LoopConfig", "RewardFunctions", "RewardModel", "Sample", "Sampler", "SamplingConfig",
           "SandboxLimits", "ScoringOptions", "Threshold", "TopPercent", "code", "exact_match", "math_answer",
           "numeric", "prompts_from_dataset", "regex_match"]

if TYPE_CHECKING:
    from itersft.filters import AboveGroupMean, BestOfK, Compose, Dedup, DropUniformPrompts, Threshold, TopPercent
    from itersft.loop.callbacks import LoopCallback
    from itersft.loop.expert_iteration import ExpertIteration
    from itersft.loop.loop_config import LoopConfig
    from itersft.sampling.sampler import Sampler, SamplingConfig
    from itersft.sampling.samples import Sample
    from itersft.scoring import (
        CodeTests,
        RewardFunctions,
        RewardModel,
        SandboxLimits,
        ScoringOptions,
        code,
        exact_match,
        math_answer,
        numeric,
        regex_match,
    )
    from itersft.tasks import prompts_from_dataset

__getattr__ = lazy_exports(__name__, _EXPORTS)
