"""Score: turn (prompt, completion, metadata) into a number, safely.

`scorers` holds the scorer protocol, the built-in scorers by name and `score_samples`, the only place a
scorer is called; `pool` runs every scorer per sample in worker processes with a hard wall-clock
timeout; `final_answer` is the rule `numeric` and `math` read answers by; `math_verifier` and
`code_verifier` are the `math` and `code` built-ins, the latter running completions in `code_sandbox`
(with `sandbox_child` as the process it starts, and `sandbox_harness` splitting the program from the
checker that runs the tests). `reward_functions` runs reward functions in TRL's GRPO convention in a
scorer's place (`reward_calls`: one call as TRL makes it; `reward_model`: a sequence classifier as
one), and `scorer_choice` takes one or the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from itersft.lazy import lazy_exports

_EXPORTS = {
    "BUILTIN_SCORERS": "itersft.scoring.scorers", "Scorer": "itersft.scoring.scorers",
    "exact_match": "itersft.scoring.scorers", "numeric": "itersft.scoring.scorers",
    "regex_match": "itersft.scoring.scorers", "resolve_scorer": "itersft.scoring.scorers",
    "math_answer": "itersft.scoring.math_verifier",
    "code": "itersft.scoring.code_verifier", "CodeTests": "itersft.scoring.code_verifier",
    "SandboxLimits": "itersft.scoring.code_sandbox",
    "ScoringOptions": "itersft.scoring.pool", "ScorerOutputError": "itersft.scoring.pool",
    "ScorerFailedError": "itersft.scoring.report",
    "RewardFunctions": "itersft.scoring.reward_functions", "RewardModel": "itersft.scoring.reward_model",
}
__all__ = ["BUILTIN_SCORERS", "CodeTests", "RewardFunctions", "RewardModel", "SandboxLimits", "Scorer",
           "ScorerFailedError", "ScorerOutputError", "ScoringOptions", "code", "exact_match", "math_answer", "numeric",
           "regex_match", "resolve_scorer"]

if TYPE_CHECKING:
    from itersft.scoring.code_sandbox import SandboxLimits
    from itersft.scoring.code_verifier import CodeTests, code
    from itersft.scoring.math_verifier import math_answer
    from itersft.scoring.pool import ScorerOutputError, ScoringOptions
    from itersft.scoring.report import ScorerFailedError
    from itersft.scoring.reward_functions import RewardFunctions
    from itersft.scoring.reward_model import RewardModel
    from itersft.scoring.scorers import BUILTIN_SCORERS, Scorer, exact_match, numeric, regex_match, resolve_scorer

__getattr__ = lazy_exports(__name__, _EXPORTS)
