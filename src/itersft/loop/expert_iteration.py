"""The generate -> score -> filter -> train loop (expert iteration), resumable round by round.

One round:

1. **Generate**: draw k completions for each of this round's prompts with the model being trained.
2. **Score**: a plain scorer callable gives each sample a float, or None when it cannot score it.
3. **Filter**: keep what deserves training (a threshold, best-of-k, top-%, dedup, ...).
4. **Train**: `trainer.step(prompts=..., completions=...)` on the kept samples (`step(messages=...)`
   for prompts that went through the chat template, so only the assistant turn is learned),
   optionally with replayed samples from earlier rounds and original labelled data mixed in.
5. **Evaluate and checkpoint**: held-out accuracy, per-round metrics, and an atomic checkpoint of
   everything needed to resume (model, optimizer, scheduler, RNG, buffer, round index).

The methods it covers, by option:

* STaR (Zelikman et al. 2022): `Threshold(1.0)` on a correctness scorer, `restart_from_base=True`.
  Left out: rationalisation (re-prompting failures with the answer as a hint).
* ReST-EM (Singh et al. 2023): `Threshold`, `restart_from_base=True`, fresh prompts each round.
  The rising reward threshold of ReST (Gulcehre et al. 2023) is `Threshold.min_score`, which may be
  raised between rounds from a callback of your own.
* RAFT (Dong et al. 2023): `BestOfK(1)` or `TopPercent(p)` on a reward-model scorer.
* RFT (Yuan et al. 2023): `Threshold(1.0)` then `Dedup()` to keep distinct reasoning paths.
  Left out: pooling samples from several models.

Prompts are strings or chat messages; `SamplingConfig.chat_template` and `system_prompt` say how they
reach the model (`itersft.loop.prompts`), and every sample is trained in the format it was drawn in.

Completions that hit `max_new_tokens` before EOS are never trained on: they would teach the model to
stop where it was cut off. They are counted as `samples_unfinished`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from itersft.checkpoint import write_json_atomic
from itersft.data.batching import shuffled
from itersft.distributed import Ranks
from itersft.loop.buffer import ReplayBuffer, mix_with_labelled
from itersft.loop.evaluation import evaluate_prompts
from itersft.loop.metrics import round_sample_metrics
from itersft.loop.prompts import Prompt, PromptRenderer, check_format, check_prompts
from itersft.loop.run_dir import RunDirectory
from itersft.loop.sampler import Sampler, SamplingConfig
from itersft.loop.samples import Sample
from itersft.loop.scorers import Scorer, resolve_scorer, score_samples

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """How the loop runs.

    Attributes:
        output_dir: the run directory: round checkpoints, `metrics.jsonl`, `curves.png`, `final/`.
        rounds: number of generate -> train rounds.
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
        fail_fast: let a scorer's exception stop the loop instead of marking the sample unscorable.
        seed: seeds the order of training samples and the buffer's draws.
        progress: show tqdm bars while sampling (the CLI turns this on).
    """

    output_dir: str
    rounds: int = 4
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
    fail_fast: bool = False
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        problems = []
        for name in ("rounds", "train_epochs", "step_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"`{name}` must be an int >= 1, got {getattr(self, name)!r}.")
        for name in ("replay_samples", "eval_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                problems.append(f"`{name}` must be an int >= 0, got {getattr(self, name)!r}.")
        if self.prompts_per_round is not None and (not isinstance(self.prompts_per_round, int)
                                                   or self.prompts_per_round < 1):
            problems.append(f"`prompts_per_round` must be None or an int >= 1, got {self.prompts_per_round!r}.")
        if self.buffer_capacity is not None and (not isinstance(self.buffer_capacity, int) or self.buffer_capacity < 0):
            problems.append(f"`buffer_capacity` must be None or an int >= 0, got {self.buffer_capacity!r}.")
        if self.replay_samples and self.buffer_capacity == 0:
            problems.append("`replay_samples` > 0 needs a buffer: set `buffer_capacity` (None = unbounded).")
        if not 0 <= self.labelled_ratio < 1:
            problems.append(f"`labelled_ratio` must be in [0, 1), got {self.labelled_ratio!r}.")
        if problems:
            raise ValueError("Invalid LoopConfig:\n- " + "\n- ".join(problems))


class ExpertIteration:
    """Runs the loop with the parts it is given (composition: swap any of them).

    Args:
        trainer: an `IterativeSFTTrainer`; its model is the one sampled from and trained.
        sampling: how completions are drawn (`SamplingConfig`).
        scorer: `(prompts, completions, **meta) -> list[float | None]`, a built-in name
            (`"exact_match"`, `"numeric_answer"`) or `"module:function"`.
        filter: `list[Sample] -> list[Sample]`, e.g. `Compose(Threshold(1.0), Dedup())`.
        config: `LoopConfig`.
        labelled: original labelled data as `Sample`s (prompt + completion), mixed in at
            `config.labelled_ratio`. Their prompts go through the chat template as sampled prompts do
            (a labelled sample with `messages` already set keeps them).
    """

    def __init__(self, trainer, sampling: SamplingConfig, scorer: Scorer | str, filter, config: LoopConfig,
                 labelled: list[Sample] | None = None):
        if config.restart_from_base and getattr(trainer, "is_deepspeed_enabled", False):
            raise ValueError("`restart_from_base` does not work under DeepSpeed: its ZeRO optimizer keeps its own "
                             "float32 copy of the weights, which loading the base weights would not reset (the next "
                             "update would bring the trained weights back). Use DDP or FSDP2, or turn it off.")
        if config.labelled_ratio > 0 and not labelled:
            raise ValueError("`labelled_ratio` > 0 needs `labelled` samples to mix in.")
        self.trainer = trainer
        self.sampling = sampling
        self.scorer = resolve_scorer(scorer)
        self.filter = filter
        self.config = config
        self.labelled = list(labelled or [])
        self.ranks = Ranks(trainer.accelerator)
        self.run_dir = RunDirectory(config.output_dir, is_main=trainer.args.should_save)
        self.buffer = ReplayBuffer(config.buffer_capacity, seed=config.seed) if config.buffer_capacity != 0 else None
        # The initial weights, kept on CPU for `restart_from_base` (taken before any resume).
        self._base_state = ({k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
                            if config.restart_from_base else None)

    @property
    def tokenizer(self):
        return self.trainer.encoder.tokenizer

    def run(self, prompts: list[Prompt], meta: list[dict] | None = None, eval_prompts: list[Prompt] | None = None,
            eval_meta: list[dict] | None = None) -> list[dict[str, Any]]:
        """Run (or resume) the loop and return one metrics dict per round.

        A prompt is a string or chat messages (see `itersft.loop.prompts`); every prompt is checked
        before anything is sampled. `meta[i]` is passed to the scorer with prompt i (e.g.
        `{"answer": "42"}`). Rerunning the same call after an interruption resumes after the last
        complete round.
        """
        if not prompts:
            raise ValueError("`prompts` is empty: the loop needs prompts to sample from.")
        if meta is not None and len(meta) != len(prompts):
            raise ValueError(f"`meta` has {len(meta)} entries but `prompts` has {len(prompts)}.")
        if eval_prompts is not None and eval_meta is not None and len(eval_meta) != len(eval_prompts):
            raise ValueError(f"`eval_meta` has {len(eval_meta)} entries but `eval_prompts` has {len(eval_prompts)}.")
        self._prepare_prompts(prompts, eval_prompts)
        state = self._resume()
        if state is None:
            state = {"round": -1, "history": [], "initial": {}}
            if eval_prompts:
                state["initial"] = self._evaluate(eval_prompts, eval_meta, round_index=-1)
        for round_index in range(state["round"] + 1, self.config.rounds):
            metrics = self._round(round_index, prompts, meta, eval_prompts, eval_meta)
            state = {"round": round_index, "history": state["history"] + [metrics], "initial": state["initial"]}
            self._checkpoint(round_index, state)
        self.run_dir.finish(self.trainer, state)
        return state["history"]

    def _prepare_prompts(self, prompts: list[Prompt], eval_prompts: list[Prompt] | None) -> None:
        """Check every prompt and the prompt format now, and put labelled prompts in the sampled format."""
        check_prompts(prompts, "prompts")
        if eval_prompts is not None:
            check_prompts(eval_prompts, "eval_prompts")
        check_prompts([s.prompt for s in self.labelled], "labelled prompts")
        every_prompt = [*prompts, *(eval_prompts or []), *(s.prompt for s in self.labelled)]
        check_format(self.sampling.chat_template, self.sampling.system_prompt, every_prompt, self.tokenizer)
        renderer = PromptRenderer(self.tokenizer, self.trainer.model, self.sampling.chat_template,
                                  self.sampling.system_prompt)
        logger.info("%s", renderer.describe())  # the CLI sets other ranks' level to WARNING
        self.labelled = [s if s.messages is not None else replace(s, messages=renderer.conversation(s.prompt))
                         for s in self.labelled]

    # ---- one round ----------------------------------------------------------------------------

    def _round(self, round_index: int, prompts, meta, eval_prompts, eval_meta) -> dict[str, Any]:
        started = time.perf_counter()
        # Each rank samples and scores a contiguous share of the round's prompts; the filter then sees
        # every rank's samples, so best-of-k, top-% and dedup mean the same as in one process.
        _, indices = self.ranks.block(self._round_prompt_indices(round_index, len(prompts)))
        lockstep = self.ranks if self.trainer.shards_parameters else None
        sampler = Sampler(self.trainer.model, self.tokenizer, self.sampling, lockstep=lockstep)
        runs = _contiguous_runs(indices)
        if lockstep is not None:  # every rank makes as many sample() calls as the others
            runs += [(0, [])] * (lockstep.max(len(runs), self.trainer.args.device) - len(runs))
        local = []
        sampling_started = time.perf_counter()
        for offset, chunk in runs:
            chunk_meta = [meta[i] for i in chunk] if meta is not None else None
            local += sampler.sample([prompts[i] for i in chunk], round_index, meta=chunk_meta,
                                    prompt_offset=offset, progress=self.config.progress)
        sampling_seconds = time.perf_counter() - sampling_started
        report = score_samples(self.scorer, local, fail_fast=self.config.fail_fast)
        drawn = self.ranks.gather(local)
        (scorer_errors,) = self.ranks.sum([report.errors], self.trainer.args.device)
        kept = self.filter(drawn)
        metrics = {"round": round_index, **round_sample_metrics(drawn, kept, self.config.pass_score)}
        finished = [s for s in kept if s.finished]
        generated_tokens = sum(len(s.completion_ids) for s in drawn)
        metrics.update(samples_unfinished=len(kept) - len(finished), scorer_errors=int(scorer_errors),
                       sampling_seconds=sampling_seconds,
                       sampling_tokens_per_second=generated_tokens / max(sampling_seconds, 1e-9))
        self.run_dir.write_accepted(round_index, finished)

        replayed = self.buffer.draw(self.config.replay_samples, round_index) if self.config.replay_samples else []
        if self.buffer is not None:
            self.buffer.add(finished)
        training_set = mix_with_labelled(finished + replayed, self.labelled, self.config.labelled_ratio,
                                         self.config.seed, round_index)
        metrics.update(self._train(round_index, training_set))
        if eval_prompts:
            metrics.update(self._evaluate(eval_prompts, eval_meta, round_index))
        metrics["round_seconds"] = time.perf_counter() - started
        self.trainer.log({f"loop/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.info("round %d: kept %d of %d samples, train loss %s, eval accuracy %s", round_index,
                    metrics["samples_kept"], metrics["samples_drawn"], metrics.get("train_loss"),
                    metrics.get("eval_accuracy"))
        return metrics

    def _round_prompt_indices(self, round_index: int, total: int) -> list[int]:
        """This round's prompts: a fresh consecutive slice (wrapping around), or all of them."""
        per_round = self.config.prompts_per_round
        if per_round is None or per_round >= total:
            return list(range(total))
        start = (round_index * per_round) % total
        return [(start + i) % total for i in range(per_round)]

    def _train(self, round_index: int, training_set: list[Sample]) -> dict[str, Any]:
        """Train on the round's samples, `train_epochs` passes in `step_size` chunks.

        With several processes every rank holds the same training set and passes its share of each
        chunk to `step()`, which weighs every token of every rank alike. A chunk holding both chat and
        raw-text samples (prompts of both kinds) takes one `step()` per kind, chat first, on every rank.
        """
        if self.config.restart_from_base:
            self.trainer.model.load_state_dict(self._base_state)
        if self.config.restart_from_base or self.config.reset_optimizer:
            self.trainer.reset_optimizer()
        started = time.perf_counter()
        loss_sum = tokens = updates = real_tokens = 0
        for epoch in range(self.config.train_epochs if training_set else 0):
            order = shuffled(training_set, self.config.seed, round_index * 1_000 + epoch)
            for start in range(0, len(order), self.config.step_size):
                for kind in _by_format(order[start : start + self.config.step_size]):
                    _, chunk = self.ranks.block(kind)
                    stats = self.trainer.step(**_step_inputs(chunk))
                    if stats["trained_tokens"]:
                        loss_sum += stats["loss"] * stats["trained_tokens"]
                    tokens += stats["trained_tokens"]
                    updates += stats["updates"]
                    real_tokens += stats["total_tokens"]
        seconds = time.perf_counter() - started
        return {"train_samples": len(training_set), "train_loss": loss_sum / tokens if tokens else None,
                "train_updates": updates, "global_step": self.trainer.state.global_step,
                "training_seconds": seconds, "training_tokens_per_second": real_tokens / seconds if seconds else None}

    def _evaluate(self, eval_prompts, eval_meta, round_index: int) -> dict[str, Any]:
        return evaluate_prompts(self.trainer.model, self.tokenizer, self.sampling, self.scorer, eval_prompts,
                                eval_meta, self.config.pass_score, self.config.eval_samples, round_index,
                                progress=self.config.progress, ranks=self.ranks,
                                lockstep=self.trainer.shards_parameters)

    # ---- checkpoints --------------------------------------------------------------------------

    def _checkpoint(self, round_index: int, state: dict[str, Any]) -> None:
        def add_loop_state(staging: Path) -> None:
            write_json_atomic(staging / "loop_state.json", state)
            if self.buffer is not None:
                write_json_atomic(staging / "buffer.json", self.buffer.state_dict())
            write_json_atomic(staging / "loop_config.json", asdict(self.config))

        self.trainer.save_checkpoint(self.run_dir.round_dir(round_index), extra=add_loop_state)
        self.run_dir.write_metrics(state["history"])

    def _resume(self) -> dict[str, Any] | None:
        """Load the last complete round, if any; None for a fresh run."""
        latest = self.run_dir.latest_round_dir()
        if latest is None:
            return None
        self.trainer.resume_from_checkpoint(str(latest))
        if self.buffer is not None:
            self.buffer.load_state_dict(_read_json(latest / "buffer.json"))
        state = _read_json(latest / "loop_state.json")
        logger.info("Resuming after round %d from %s", state["round"], latest)
        self.run_dir.write_metrics(state["history"])
        return state


def _by_format(samples: list[Sample]) -> list[list[Sample]]:
    """The chat samples, then the raw-text ones (each list in order), leaving out an empty kind."""
    chat = [s for s in samples if s.messages is not None]
    raw = [s for s in samples if s.messages is None]
    return [kind for kind in (chat, raw) if kind]


def _step_inputs(samples: list[Sample]) -> dict[str, list]:
    """`step()` arguments for samples of one kind: the conversation with the completion as the assistant
    turn, or the raw prompt and completion texts."""
    if samples and samples[0].messages is not None:
        return {"messages": [s.training_conversation() for s in samples]}
    return {"prompts": [s.prompt for s in samples], "completions": [s.completion for s in samples]}


def _contiguous_runs(indices: list[int]) -> list[tuple[int, list[int]]]:
    """Split indices into runs of consecutive values, as (first index, run) pairs."""
    runs: list[tuple[int, list[int]]] = []
    for index in indices:
        if runs and runs[-1][1][-1] + 1 == index:
            runs[-1][1].append(index)
        else:
            runs.append((index, [index]))
    return runs


def _read_json(path: Path):
    return json.loads(path.read_text())

