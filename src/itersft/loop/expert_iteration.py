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
reach the model (`itersft.sampling.prompts`), and every sample is trained in the format it was drawn in.

Completions that hit `max_new_tokens` before EOS are never trained on: they would teach the model to
stop where it was cut off. They leave before the filter (so a cut-off sample never takes the place of
a finished one, e.g. under `BestOfK`) and are counted as `samples_unfinished`; they are still scored,
and pass@k counts them, since they are what the model draws.

Seeds, one job each, so a rerun or a resume repeats the run exactly:

* `SamplingConfig.seed` fixes every draw, per (round, prompt, sample): which prompts share a batch or
  a rank does not change what a prompt's samples are.
* `LoopConfig.seed` fixes the loop's own choices: which replayed and labelled samples join a round,
  and the order in which a round's training set is cut into `step()` calls (`ExpertIteration.step_calls`).
* The trainer's `args.seed` fixes initialisation (adapters), dropout and the order of the samples
  inside each `step()` call (`shuffle_samples`).

The loop talks to the trainer through its public API only: `step()`, `reset_optimizer()`,
`save_checkpoint()`, `resume_from_checkpoint()`, `save_model()`, `log()`, `finish_run()`, and the attributes
`model`, `tokenizer`, `ranks`, `state`, `args`, `shards_parameters`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from itersft.atomic import atomic_directory, staging_path, write_json_atomic
from itersft.data.batching import shuffled
from itersft.loop.buffer import ReplayBuffer, mix_with_labelled
from itersft.loop.callbacks import LoopCallback
from itersft.loop.evaluation import evaluate_prompts
from itersft.loop.full_disk import reporting_full_disk
from itersft.loop.inputs import check_inputs
from itersft.loop.loop_config import LoopConfig
from itersft.loop.metrics import round_sample_metrics
from itersft.loop.run_dir import RunDirectory
from itersft.loop.run_identity import check_run_identity, describe_run, weights_fingerprint
from itersft.loop.sample_and_score import sample_and_score
from itersft.sampling.prompts import Prompt, PromptRenderer
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample
from itersft.scoring.reward_functions import RewardFunctions
from itersft.scoring.scorer_choice import choose_scorer
from itersft.scoring.scorers import Scorer
from itersft.tasks.prompt_rows import is_dataset, prompts_from_dataset

__all__ = ["ExpertIteration", "LoopConfig", "step_arguments"]

logger = logging.getLogger(__name__)


class ExpertIteration:
    """Runs the loop with the parts it is given (composition: swap any of them).

    Args:
        trainer: an `IterativeSFTTrainer`; its model is the one sampled from and trained.
        sampling: how completions are drawn (`SamplingConfig`).
        scorer: `(prompts, completions, **meta) -> list[float | None]`, a built-in name
            (`"exact_match"`, `"numeric"`, `"math"`, `"code"`; see `scorers`) or `"module:function"`.
            It runs per sample in worker processes under `config.score_timeout` (see `scoring.pool`).
            Give `scorer` or `reward_funcs`, not both.
        filter: `list[Sample] -> list[Sample]`, e.g. `Compose(Threshold(1.0), Dedup())`. It is given the
            round's finished samples only: a cut-off one is never trained, so it never competes. With
            `reward_funcs` it sees their weighted sum as each sample's score (`AboveGroupMean()` needs
            no threshold).
        config: `LoopConfig`.
        labelled: original labelled data as `Sample`s (prompt + completion), mixed in at
            `config.labelled_ratio`. Their prompts go through the chat template as sampled prompts do
            (a labelled sample with `messages` already set keeps them).
        callbacks: `LoopCallback`s, called on the main process (progress, per-round metrics).
        sources: where the prompts came from, e.g. `{"prompts": "data/train.jsonl"}`: recorded in
            `run_identity.json` for whoever reads it, never compared (the prompts' hash is).
        reward_funcs: reward functions in TRL's GRPO convention, in place of `scorer`: a callable,
            a "package.module:function" string, a reward model (a folder or hub id, a loaded
            `PreTrainedModel`, a `RewardModel`), a list of these, or a `RewardFunctions`. Each
            sample's score is their weighted sum, each one's reward is kept in `Sample.rewards`, and
            `trainer_state` is this trainer's state (see `scoring.reward_functions`).
        reward_weights: one weight per reward function (default 1.0 each), as TRL's `reward_weights`.

    Built, it has checked that `config.output_dir` is writable and fingerprinted the model's weights
    for the run's identity (`run_identity`), before any resume loads a checkpoint into them.
    """

    def __init__(self, trainer, sampling: SamplingConfig, scorer: Scorer | str | None = None, filter=None,
                 config: LoopConfig | None = None, labelled: list[Sample] | None = None,
                 callbacks: list[LoopCallback] | None = None, sources: dict[str, str] | None = None, *,
                 reward_funcs=None, reward_weights: list[float] | None = None):
        missing = [name for name, value in (("filter", filter), ("config", config)) if value is None]
        if missing:
            raise TypeError(f"ExpertIteration needs {' and '.join(f'`{name}`' for name in missing)}.")
        if config.restart_from_base and getattr(trainer, "is_deepspeed_enabled", False):
            raise ValueError("`restart_from_base` does not work under DeepSpeed: its ZeRO optimizer keeps its own "
                             "float32 copy of the weights, which loading the base weights would not reset (the next "
                             "update would bring the trained weights back). Use DDP or FSDP2, or turn it off.")
        self.run_dir = RunDirectory(config.output_dir, is_main=trainer.args.should_save)  # writable, or raise
        self.trainer = trainer
        self.sampling = sampling
        # a name or import path stays one in the run's identity; reward functions are described
        self.scorer, self._scorer_spec = choose_scorer(scorer, reward_funcs, reward_weights)
        if isinstance(self.scorer, RewardFunctions):
            self.scorer.bind(trainer)
        self.sources = dict(sources or {})
        if config.score_in_process:
            logger.warning("score_in_process: the scorer runs in this process with no timeout; a scorer that hangs "
                           "hangs the run and one that crashes ends it.")
        self.filter = filter
        self.config = config
        self.labelled = list(labelled or [])
        self.callbacks = list(callbacks or []) if trainer.is_world_process_zero() else []
        self.buffer = ReplayBuffer(config.buffer_capacity, seed=config.seed) if config.buffer_capacity != 0 else None
        # The initial weights, kept on CPU for `restart_from_base` (taken before any resume).
        self._base_state = ({k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
                            if config.restart_from_base else None)
        self._weights = weights_fingerprint(trainer)

    def run(self, prompts: list[Prompt], meta: list[dict] | None = None, eval_prompts: list[Prompt] | None = None,
            eval_meta: list[dict] | None = None) -> list[dict[str, Any]]:
        """Run (or resume) the loop and return one metrics dict per round.

        A prompt is a string or chat messages (see `itersft.sampling.prompts`). `meta[i]` is passed to the
        scorer with prompt i (e.g. `{"answer": "42"}`). `prompts` (and `eval_prompts`) may instead be a
        `datasets.Dataset` in TRL's prompt-only format, a `prompt` column and any others, which become the
        metadata (`itersft.tasks.prompts_from_dataset`; then without `meta`). Every prompt, and the
        metadata the scorer needs, is checked before anything is sampled (`check_inputs`). Rerunning the
        same call after an interruption resumes after the last complete round, unless the run's identity changed
        (`run_identity`: a ValueError names every changed field; `LoopConfig.resume_changed` resumes
        anyway). A round whose scorer fails on every sample stops the run (`ScorerFailedError`), and a
        full disk is reported as `OSError(ENOSPC)`: rerun once space is freed. At the end `final/` holds the model and
        tokenizer, and the trainer's callbacks see the run end (`trainer.finish_run()`, which fires
        `on_train_end` as `Trainer.train` does; trackers flush).
        """
        prompts, meta = _from_dataset(prompts, meta, "prompts")
        eval_prompts, eval_meta = _from_dataset(eval_prompts, eval_meta, "eval_prompts")
        check_inputs(self.scorer, self.sampling, self.config, self.trainer.tokenizer, prompts, meta, eval_prompts,
                     eval_meta, self.labelled)
        self._render_labelled()
        identity = describe_run(self.trainer, self._weights, self._scorer_spec, self.filter, self.sampling,
                                self.config, prompts, meta, eval_prompts, eval_meta, self.labelled)
        latest = self.run_dir.latest_round_dir()
        resuming_after = _read_json(latest / "loop_state.json")["round"] if latest is not None else None
        check_run_identity(self.run_dir.root, identity, resuming_after, self.config.resume_changed,
                           self.trainer.args.should_save, self.sources)
        state = self._resume()
        if state is None:
            state = {"round": -1, "history": [], "initial": {}}
            if eval_prompts:
                state["initial"] = self._evaluate(eval_prompts, eval_meta, round_index=-1)
        for round_index in range(state["round"] + 1, self.config.rounds):
            metrics = self._round(round_index, prompts, meta, eval_prompts, eval_meta)
            state = {"round": round_index, "history": state["history"] + [metrics], "initial": state["initial"]}
            self._checkpoint(round_index, state)
            for callback in self.callbacks:
                callback.on_round_end(metrics)
        self._save_final()
        with reporting_full_disk(self.run_dir.root, "the run summary (loop_summary.json, curves.png)",
                                 then="rerun the same command: only `final/` and the summary are written again"):
            self.run_dir.write_summary(state)
        self.trainer.finish_run()
        for callback in self.callbacks:
            callback.on_run_end(state["history"])
        return state["history"]

    def _render_labelled(self) -> None:
        """Put the labelled samples' prompts in the format the sampler renders prompts in."""
        renderer = PromptRenderer(self.trainer.tokenizer, self.trainer.model, self.sampling.chat_template,
                                  self.sampling.system_prompt)
        logger.info("%s", renderer.describe())  # the CLI sets other ranks' level to WARNING
        self.labelled = [s if s.messages is not None else replace(s, messages=renderer.conversation(s.prompt))
                         for s in self.labelled]

    # ---- one round ----------------------------------------------------------------------------

    def _round(self, round_index: int, prompts, meta, eval_prompts, eval_meta) -> dict[str, Any]:
        started = time.perf_counter()
        trainer = self.trainer
        # Every rank receives every rank's samples, so best-of-k, top-% and dedup mean the same as in one process.
        scored = sample_and_score(trainer.model, trainer.tokenizer, self.sampling, self.scorer, prompts, meta,
                                  self._round_prompt_indices(round_index, len(prompts)), round_index,
                                  f"round {round_index}", ranks=trainer.ranks, lockstep=trainer.shards_parameters,
                                  progress=self._progress("round", round_index), scoring=self.config.scoring,
                                  fail_fast=self.config.fail_fast)
        drawn = scored.samples
        # Cut-off completions leave here, before the filter: a per-prompt cap must not spend its slot on them.
        kept = self.filter([s for s in drawn if s.finished])
        metrics = {"round": round_index, **round_sample_metrics(drawn, kept, self.config.pass_score)}
        generated_tokens = sum(len(s.completion_ids) for s in drawn)
        metrics.update(scorer_errors=scored.scorer_errors, samples_timed_out=scored.timed_out,
                       sampling_seconds=scored.sampling_seconds,
                       sampling_tokens_per_second=generated_tokens / max(scored.sampling_seconds, 1e-9))
        with reporting_full_disk(self.run_dir.root / "accepted", f"the samples kept in round {round_index}",
                                 then=_resume_hint(round_index - 1)):
            self.run_dir.write_accepted(round_index, kept)
        self._write_samples(round_index, drawn, kept)

        replayed = self.buffer.draw(self.config.replay_samples, round_index) if self.config.replay_samples else []
        if self.buffer is not None:
            self.buffer.add(kept)
        training_set = mix_with_labelled(kept + replayed, self.labelled, self.config.labelled_ratio,
                                         self.config.seed, round_index)
        metrics.update(self._train(round_index, training_set))
        if eval_prompts:
            metrics.update(self._evaluate(eval_prompts, eval_meta, round_index))
        metrics["round_seconds"] = time.perf_counter() - started
        trainer.log({f"loop/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        logger.info("round %d: kept %d of %d samples, train loss %s, eval accuracy %s", round_index,
                    metrics["samples_kept"], metrics["samples_drawn"], metrics.get("train_loss"),
                    metrics.get("eval_accuracy"))
        return metrics

    def _progress(self, phase: str, round_index: int):
        """The sampler's progress hook, forwarding to the callbacks (None when there are none)."""
        if not self.callbacks:
            return None

        def report(done: int, total: int) -> None:
            for callback in self.callbacks:
                callback.on_sampling_progress(phase, round_index, done, total)

        return report

    def _round_prompt_indices(self, round_index: int, total: int) -> list[int]:
        """This round's prompts: a fresh consecutive slice (wrapping around), or all of them."""
        per_round = self.config.prompts_per_round
        if per_round is None or per_round >= total:
            return list(range(total))
        start = (round_index * per_round) % total
        return [(start + i) % total for i in range(per_round)]

    def step_calls(self, round_index: int, training_set: list[Sample]) -> list[list[Sample]]:
        """How round `round_index` cuts `training_set` into `step()` calls: the samples of each call, in order.

        `train_epochs` passes, each in an order drawn from `LoopConfig.seed` and the round (see the module
        docstring), cut into `step_size` chunks; a chunk holding both chat and raw-text samples (prompts
        of both kinds) is two calls, chat first. With several processes each call is split among them
        (`Ranks.block`), and `step()` weighs every token of every rank alike; `step()` orders each
        call's samples by its own rule. The loop trains exactly these calls (`step_arguments` turns
        one into `step()`'s arguments), so a control that must train as the loop does can ask for them.
        """
        calls = []
        for epoch in range(self.config.train_epochs):
            order = shuffled(training_set, self.config.seed, round_index * 1_000 + epoch)
            for start in range(0, len(order), self.config.step_size):
                calls.extend(_by_format(order[start : start + self.config.step_size]))
        return calls

    def _train(self, round_index: int, training_set: list[Sample]) -> dict[str, Any]:
        """Train on the round's samples in the `step()` calls `step_calls` gives."""
        if self.config.restart_from_base:
            self.trainer.model.load_state_dict(self._base_state)
        if self.config.restart_from_base or self.config.reset_optimizer:
            self.trainer.reset_optimizer()
        started = time.perf_counter()
        loss_sum = tokens = updates = real_tokens = 0
        for call in self.step_calls(round_index, training_set):
            stats = self.trainer.step(**step_arguments(self.trainer.ranks.block(call)[1]))
            if stats["trained_tokens"]:
                loss_sum += stats["loss"] * stats["trained_tokens"]
            tokens += stats["trained_tokens"]
            updates += stats["updates"]
            real_tokens += stats["real_tokens"]
        seconds = time.perf_counter() - started
        return {"train_samples": len(training_set), "train_loss": loss_sum / tokens if tokens else None,
                "train_updates": updates, "global_step": self.trainer.state.global_step,
                "training_seconds": seconds, "training_tokens_per_second": real_tokens / seconds if seconds else None}

    def _evaluate(self, eval_prompts, eval_meta, round_index: int) -> dict[str, Any]:
        trainer = self.trainer
        return evaluate_prompts(trainer.model, trainer.tokenizer, self.sampling, self.scorer, eval_prompts,
                                eval_meta, self.config.pass_score, self.config.eval_samples, round_index,
                                ranks=trainer.ranks, lockstep=trainer.shards_parameters,
                                progress=self._progress("eval", round_index), scoring=self.config.scoring)

    # ---- checkpoints --------------------------------------------------------------------------

    def _write_samples(self, round_index: int, drawn: list[Sample], trained: list[Sample]) -> None:
        """`samples/round-NNNN.jsonl`: every sample of the round, scored, marked kept when trained on
        (`LoopConfig.write_samples`). Written before the round's checkpoint, as `accepted/` is (see `run_dir`)."""
        if self.config.write_samples:
            with reporting_full_disk(self.run_dir.samples_file(round_index),
                                     f"the samples drawn in round {round_index}", then=_resume_hint(round_index - 1)):
                self.run_dir.write_samples(round_index, drawn, trained)

    def _checkpoint(self, round_index: int, state: dict[str, Any]) -> None:
        def add_loop_state(staging: Path) -> None:
            write_json_atomic(staging / "loop_state.json", state)
            if self.buffer is not None:
                write_json_atomic(staging / "buffer.json", self.buffer.state_dict())
            write_json_atomic(staging / "loop_config.json", asdict(self.config))

        directory = self.run_dir.round_dir(round_index)
        with reporting_full_disk(directory, f"the round {round_index} checkpoint", staging_path(directory),
                                 self.run_dir.is_main, then=_resume_hint(round_index - 1)):
            self.trainer.save_checkpoint(directory, extra=add_loop_state)
        for pruned in self.run_dir.prune_rounds(self.config.keep_rounds):
            logger.info("deleted %s (keep_rounds=%s)", pruned.name, self.config.keep_rounds)
        with reporting_full_disk(self.run_dir.root / "metrics.jsonl", "the metrics", then=_resume_hint(round_index)):
            self.run_dir.write_metrics(state["history"])

    def _save_final(self) -> None:
        """`final/`: the model (or adapters) and tokenizer, loadable with `from_pretrained`, written atomically."""
        trainer, final = self.trainer, self.run_dir.final_dir
        with reporting_full_disk(final, "the final model", staging_path(final), trainer.args.should_save,
                                 then="rerun the same command: only `final/` is written again"):
            with atomic_directory(final, trainer.args.should_save, trainer.accelerator.wait_for_everyone) as staging:
                trainer.save_model(str(staging))
                if trainer.args.should_save:
                    trainer.processing_class.save_pretrained(str(staging))

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


def _from_dataset(prompts, meta, argument: str):
    """(prompts, meta) as given, or read from a `datasets.Dataset` (which carries its own metadata)."""
    if not is_dataset(prompts):
        return prompts, meta
    if meta is not None:
        raise ValueError(f"`{argument}` is a datasets.Dataset, whose other columns are the metadata: leave "
                         f"`{argument.replace('prompts', 'meta')}` out.")
    return prompts_from_dataset(prompts, argument=argument)


def _by_format(samples: list[Sample]) -> list[list[Sample]]:
    """The chat samples, then the raw-text ones (each list in order), leaving out an empty kind."""
    chat = [s for s in samples if s.messages is not None]
    raw = [s for s in samples if s.messages is None]
    return [kind for kind in (chat, raw) if kind]


def step_arguments(samples: list[Sample]) -> dict[str, list]:
    """`step()` arguments for samples of one kind: the conversation with the completion as the assistant
    turn, or the raw prompt and completion texts."""
    if samples and samples[0].messages is not None:
        return {"messages": [s.training_conversation() for s in samples]}
    return {"prompts": [s.prompt for s in samples], "completions": [s.completion for s in samples]}


def _resume_hint(last_complete_round: int) -> str:
    return ("rerun the same command: the run resumes after round " + str(last_complete_round)
            if last_complete_round >= 0 else "rerun the same command: the run starts again at round 0")


def _read_json(path: Path):
    return json.loads(path.read_text())

