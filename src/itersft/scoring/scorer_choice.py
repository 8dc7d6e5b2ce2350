"""What scores a loop: a scorer, or reward functions in TRL's convention, never both."""

from __future__ import annotations

from typing import Any

from itersft.checks import Problems
from itersft.scoring.reward_functions import RewardFunctions
from itersft.scoring.scorers import Scorer, resolve_scorer


def choose_scorer(scorer: Any, reward_funcs: Any, reward_weights: Any) -> tuple[Scorer | RewardFunctions, Any]:
    """(what `score_samples` is given, how the run's identity names it) from the loop's arguments.

    Exactly one of `scorer` (see `resolve_scorer`) and `reward_funcs` (see `RewardFunctions`, or one
    already built) must be given; `reward_weights` goes with `reward_funcs` given as functions. Every
    problem is raised as one ValueError before a reward model loads.
    """
    problems = Problems("scoring")
    if scorer is not None and reward_funcs is not None:
        problems.add(f"both `scorer` ({scorer!r}) and `reward_funcs` are given: score with one of them (a scorer, or "
                     "reward functions in TRL's convention, combined by `reward_weights`).")
    elif scorer is None and reward_funcs is None:
        problems.add("neither `scorer` nor `reward_funcs` is given: the loop needs one to score its samples.")
    if reward_weights is not None and (reward_funcs is None or isinstance(reward_funcs, RewardFunctions)):
        problems.add(f"`reward_weights` ({reward_weights!r}) go with `reward_funcs` given as functions"
                     + (" (a RewardFunctions holds its own weights)." if reward_funcs is not None else "."))
    problems.raise_if_any()
    if reward_funcs is None:
        return resolve_scorer(scorer), scorer
    functions = reward_funcs if isinstance(reward_funcs, RewardFunctions) else RewardFunctions(reward_funcs,
                                                                                               reward_weights)
    return functions, functions.describe()
