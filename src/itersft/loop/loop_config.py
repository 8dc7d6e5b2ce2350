"""`LoopConfig`: how the expert-iteration loop runs, every setting checked when it is built.

A field declared with `metadata={"identity": False}` (`OUTSIDE_IDENTITY`) does not change what a run
samples, keeps or trains, so a rerun may change it and still resume (`run_identity`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from itersft.checks import Problems
from itersft.loop.buffer import check_labelled_ratio
from itersft.scoring.pool import DEFAULT_TIMEOUT, ScoringOptions, check_scoring_options

OUTSIDE_IDENTITY = {"identity": False}


@dataclass
class LoopConfig:
    """How the loop runs.

    Attributes:
        output_dir: the run directory: round checkpoints, `metrics.jsonl`, `curves.png`, `final/`,
            `run_identity.json` (a `str` or `os.PathLike`). It must be writable: checked when the loop is
            built, before anything is sampled.
        rounds: number of generate -> train rounds. Not part of the run's identity: rerunning a finished
            run with more rounds continues it.
        prompts_per_round: prompts sampled per round, taken as consecutive fresh slices of the prompt
            list (wrapping around); None: every prompt every round.
        train_epochs: passes over a round's training set.
        step_size: samples per `trainer.step()` call; each call makes
            ceil(step_size / (batch size x accumulation)) optimizer updates.
        restart_from_base: train each round from the initial weights (ReST-EM, STaR) on that round's
            data; sampling still uses the latest model. Implies a fresh optimizer each round. Not with
            DeepSpeed, whose optimizer keeps its own copy of the weights.
        reset_optimizer: start each round with a fresh optimizer state and LR schedule (warmup again).
        buffer_capacity: kept samples remembered across rounds (oldest evicted first); 0: no buffer;
            None: unbounded.
        replay_samples: samples drawn from the buffer (earlier rounds) into each round's training set.
        labelled_ratio: share of each round's training set made of the original labelled data.
        pass_score: a sample is correct when its score is at least this (pass@k, accuracy).
        eval_samples: k for held-out pass@k; 0: greedy accuracy only.
        fail_fast: let a scorer's exception stop the loop at the first sample it fails on, instead of
            marking that sample unscorable. Without it the loop still stops when the scorer fails on
            every sample of a round or of an evaluation (see `ScorerFailedError`).
        score_timeout: seconds one sample's scoring may take; past it the scoring worker is killed and
            the sample scores 0.0 (counted as `samples_timed_out`). None only with `score_in_process`.
        score_workers: scoring worker processes; None: the CPUs available, at most 8.
        score_in_process: call the scorer on the whole batch in this process (GPU reward models,
            batching scorers) with NO timeout: a hanging scorer hangs the run, a crashing one ends it.
            Needs `score_timeout=None` and `score_workers=None`.
        seed: seeds the loop's own choices: the order of each round's training samples, the buffer's
            draws and the labelled mix (see `expert_iteration` for every seed).
        keep_rounds: round checkpoints kept on disk, newest first; an older one is deleted once a newer
            one has landed (a round checkpoint holds the model, the optimizer state and more: about 3x
            the model's size). Resuming needs only the newest. None keeps them all. `final/` is always
            kept.
        write_samples: write every sample each round draws, scored and marked kept or not, to
            `samples/round-NNNN.jsonl` (what `itersft export` builds DPO, KTO and SFT datasets from); kept for
            every round. False writes only `accepted/` (the kept samples). Not part of the run's identity.
        resume_changed: resume a run whose identity (`run_identity.json`: model, tokenizer, prompts,
            scorer, filter, sampling, loop and training settings) differs from this one's. Without it
            such a rerun is refused with an error naming every changed field; with it the changes are
            logged as a warning and recorded in `run_identity.json`. `itersft run --resume-changed`.
    """

    output_dir: str = field(metadata=OUTSIDE_IDENTITY)
    rounds: int = field(default=4, metadata=OUTSIDE_IDENTITY)
    prompts_per_round: int | None = None
    train_epochs: int = 1
    step_size: int = 64
    restart_from_base: bool = False
    reset_optimizer: bool = False
    buffer_capacity: int | None = 0
    replay_samples: int = 0
    labelled_ratio: float = 0.0
    pass_score: float = 1.0
    eval_samples: int = 0
    fail_fast: bool = field(default=False, metadata=OUTSIDE_IDENTITY)
    score_timeout: float | None = field(default=DEFAULT_TIMEOUT, metadata=OUTSIDE_IDENTITY)
    score_workers: int | None = field(default=None, metadata=OUTSIDE_IDENTITY)
    score_in_process: bool = field(default=False, metadata=OUTSIDE_IDENTITY)
    seed: int = 0
    keep_rounds: int | None = field(default=2, metadata=OUTSIDE_IDENTITY)
    write_samples: bool = field(default=True, metadata=OUTSIDE_IDENTITY)
    resume_changed: bool = field(default=False, metadata=OUTSIDE_IDENTITY)

    def __post_init__(self) -> None:
        problems = Problems("LoopConfig")
        if isinstance(self.output_dir, os.PathLike):  # a Path is a fine way to name it; stored as text (JSON)
            self.output_dir = os.fspath(self.output_dir)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            problems.add(f"`output_dir` must be a non-empty path string, got {self.output_dir!r}.")
        for name in ("rounds", "train_epochs", "step_size"):
            problems.integer(name, getattr(self, name), minimum=1)
        for name in ("replay_samples", "eval_samples"):
            problems.integer(name, getattr(self, name), minimum=0)
        problems.integer("prompts_per_round", self.prompts_per_round, minimum=1, optional=True)
        problems.integer("buffer_capacity", self.buffer_capacity, minimum=0, optional=True)
        problems.integer("keep_rounds", self.keep_rounds, minimum=1, optional=True)
        problems.integer("seed", self.seed)
        for name in ("restart_from_base", "reset_optimizer", "fail_fast", "write_samples", "resume_changed"):
            problems.boolean(name, getattr(self, name))
        problems.number("pass_score", self.pass_score)
        check_labelled_ratio(self.labelled_ratio, problems)
        if self.replay_samples and self.buffer_capacity == 0:
            problems.add("`replay_samples` > 0 needs a buffer: set `buffer_capacity` (None = unbounded).")
        check_scoring_options(self.score_timeout, self.score_workers, self.score_in_process, problems, "score_")
        problems.raise_if_any()

    @property
    def scoring(self) -> ScoringOptions:
        """How the scorer runs (`score_timeout`, `score_workers`, `score_in_process`)."""
        return ScoringOptions(self.score_timeout, self.score_workers, self.score_in_process)
