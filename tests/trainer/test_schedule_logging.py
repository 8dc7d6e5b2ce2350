"""Learning-rate schedule, `global_step` units, callback hooks, logging and the statistics of `step()`.

Uses the `causal_model` / `tokenizer` fixtures (a tiny Llama-style model and a byte-level tokenizer,
built offline). The byte-level tokenizer adds no BOS, so a text of n bytes is n tokens, plus EOS.
"""

from __future__ import annotations

import copy
import glob
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer

LR = 1e-3
KEYS = {"loss", "learning_rate", "grad_norm", "updates", "skipped_updates", "samples", "skipped_samples",
        "trained_tokens", "real_tokens", "padded_tokens", "step_time", "tokens_per_second", "global_step"}


def config(tmp_path, **kwargs) -> IterativeSFTConfig:
    kwargs.setdefault("learning_rate", LR)
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def learning_rates(trainer, calls: int) -> list[float]:
    """The LR of the update each call takes (one sample per call: one update per call)."""
    return [trainer.step(texts=[f"sample {i}"])["learning_rate"] for i in range(calls)]


def n_tokens(tokenizer, text: str) -> int:
    """Tokens `step()` trains on for `text`: its ids plus the EOS it appends."""
    return len(tokenizer(text)["input_ids"]) + 1


# ---- learning-rate schedule ---------------------------------------------------------------------


def test_no_max_steps_gives_constant_nonzero_lr(causal_model, tokenizer, tmp_path):
    # TRL 0.23 decayed over a zero-length horizon here: LR 0, nothing trained.
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)
    assert learning_rates(trainer, 6) == pytest.approx([LR] * 6, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(LR)


def test_no_max_steps_warmup_ramps_then_stays_constant(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, warmup_steps=2), tokenizer)
    assert learning_rates(trainer, 6) == pytest.approx([0.0, LR / 2, LR, LR, LR, LR], rel=1e-12, abs=1e-15)


def test_max_steps_linear_decays_over_horizon(causal_model, tokenizer, tmp_path, caplog):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_steps=4, lr_scheduler_type="linear"),
                                  tokenizer)
    assert learning_rates(trainer, 4) == pytest.approx([LR, 0.75 * LR, 0.5 * LR, 0.25 * LR], rel=1e-12)
    with caplog.at_level(logging.WARNING, logger="itersft.trainer"):
        assert learning_rates(trainer, 1) == [0.0]  # past the horizon
    assert "max_steps" in caplog.text


def test_max_steps_linear_with_warmup(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_steps=4, warmup_steps=1), tokenizer)
    assert learning_rates(trainer, 4) == pytest.approx([0.0, LR, 2 / 3 * LR, 1 / 3 * LR], rel=1e-12, abs=1e-15)


def test_horizon_schedule_without_max_steps_warns_and_stays_constant(causal_model, tokenizer, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="itersft.trainer"):
        trainer = IterativeSFTTrainer(causal_model, config(tmp_path, lr_scheduler_type="cosine"), tokenizer)
    assert "max_steps" in caplog.text
    assert learning_rates(trainer, 3) == pytest.approx([LR] * 3, rel=1e-12)


def test_fractional_steps_without_max_steps_raise(causal_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="logging_steps"):
        IterativeSFTTrainer(causal_model, config(tmp_path, logging_steps=0.5), tokenizer)


# ---- global_step and callbacks ------------------------------------------------------------------


def test_global_step_counts_optimizer_updates(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer)
    stats = trainer.step(texts=[f"text {i}" for i in range(8)])  # 4 micro-batches -> 2 updates
    assert stats["updates"] == 2 and stats["global_step"] == 2 and trainer.state.global_step == 2
    stats = trainer.step(texts=[f"text {i}" for i in range(5)])  # 3 micro-batches -> windows of 2 and 1
    assert stats["updates"] == 2 and trainer.state.global_step == 4


class CountingCallback(TrainerCallback):
    def __init__(self):
        self.events: list[tuple[str, int]] = []

    def _record(self, name, state):
        self.events.append((name, state.global_step))

    def on_train_begin(self, args, state, control, **kwargs):
        self._record("train_begin", state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._record("step_begin", state)

    def on_substep_end(self, args, state, control, **kwargs):
        self._record("substep_end", state)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._record("pre_optimizer_step", state)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._record("optimizer_step", state)

    def on_step_end(self, args, state, control, **kwargs):
        self._record("step_end", state)

    def count(self, name: str) -> int:
        return sum(1 for event, _ in self.events if event == name)


def test_callback_step_hooks_fire_once_per_update(causal_model, tokenizer, tmp_path):
    callback = CountingCallback()
    args = config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer, callbacks=[callback])
    trainer.step(texts=[f"text {i}" for i in range(8)])
    assert callback.events == [
        ("train_begin", 0),
        ("step_begin", 0), ("substep_end", 0), ("pre_optimizer_step", 0), ("optimizer_step", 0), ("step_end", 1),
        ("step_begin", 1), ("substep_end", 1), ("pre_optimizer_step", 1), ("optimizer_step", 1), ("step_end", 2),
    ]
    trainer.step(texts=[f"text {i}" for i in range(6)])  # windows of 2 and 1 micro-batches
    assert callback.count("train_begin") == 1
    assert [callback.count(n) for n in ("step_begin", "optimizer_step", "step_end")] == [4, 4, 4]
    assert callback.count("substep_end") == 3  # the 1-micro-batch window has no non-final micro-batch


# ---- logging ------------------------------------------------------------------------------------


def test_logging_every_update_matches_returned_stats(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, logging_steps=1, per_device_train_batch_size=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer)
    returned = [trainer.step(texts=["hello world", "hi"]), trainer.step(texts=["another one", "x"])]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [1, 2]
    for entry, stats in zip(logs, returned):
        for key in ("loss", "learning_rate", "grad_norm", "trained_tokens", "real_tokens", "padded_tokens",
                    "updates", "samples", "skipped_samples", "skipped_updates"):
            assert entry[key] == pytest.approx(stats[key], rel=1e-12), key


def test_logging_every_second_update(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, logging_steps=2), tokenizer)
    returned = [trainer.step(texts=[f"sample {i}"]) for i in range(5)]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4]
    assert [entry["loss"] for entry in logs] == pytest.approx([returned[1]["loss"], returned[3]["loss"]])


def test_tensorboard_receives_train_loss(causal_model, tokenizer, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(log_dir))  # transformers 5 has no `logging_dir`
    args = IterativeSFTConfig(output_dir=str(tmp_path / "out"), report_to=["tensorboard"], logging_steps=1)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer)
    losses = [trainer.step(texts=["hello world"])["loss"], trainer.step(texts=["hello again"])["loss"]]
    trainer.end()
    event_files = glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True)
    assert event_files, f"no event file under {log_dir}"
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]
    scalars = accumulator.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2]
    assert [s.value for s in scalars] == pytest.approx(losses, rel=1e-6)
    assert "train/learning_rate" in accumulator.Tags()["scalars"]


# ---- statistics ---------------------------------------------------------------------------------


def test_stats_counts_for_known_input(causal_model, tokenizer, tmp_path):
    texts = ["abc", "hello", "", "xy"]  # "" is only EOS: nothing to predict, skipped
    args = config(tmp_path, per_device_train_batch_size=2, shuffle_samples=False)
    stats = IterativeSFTTrainer(causal_model, args, tokenizer).step(texts=texts)
    assert set(stats) == KEYS
    lengths = [n_tokens(tokenizer, t) for t in ("abc", "hello", "xy")]
    assert lengths == [4, 6, 3]
    assert stats["samples"] == 3 and stats["skipped_samples"] == 1
    assert stats["updates"] == 2 and stats["skipped_updates"] == 0 and stats["global_step"] == 2
    assert stats["trained_tokens"] == sum(n - 1 for n in lengths)  # the first token is never predicted
    assert stats["real_tokens"] == sum(lengths)
    assert stats["padded_tokens"] == sum(lengths)  # the default batching packs each micro-batch: no padding
    assert stats["step_time"] > 0
    assert stats["tokens_per_second"] == pytest.approx(stats["real_tokens"] / stats["step_time"], rel=1e-6)
    assert stats["learning_rate"] == pytest.approx(LR)
    assert math.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    padded = IterativeSFTTrainer(causal_model, config(tmp_path, per_device_train_batch_size=2, shuffle_samples=False,
                                                      batching="padded"), tokenizer).step(texts=texts)
    assert padded["padded_tokens"] == 2 * max(lengths[:2]) + lengths[2]  # micro-batches [abc, hello], [xy]


def test_stats_loss_and_grad_norm_match_independent_computation(causal_model, tokenizer, tmp_path):
    texts = ["abc", "hello there", "xy", "a longer sentence"]
    reference = copy.deepcopy(causal_model)
    args = config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2)  # one update
    stats = IterativeSFTTrainer(causal_model, args, tokenizer).step(texts=texts)
    assert stats["updates"] == 1

    total, count = torch.zeros(()), 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]])
        logits = reference(input_ids=ids).logits[0, :-1]
        total = total + F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum")
        count += ids.shape[1] - 1
    loss = total / count
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in reference.parameters() if p.grad is not None))
    assert stats["trained_tokens"] == count
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert stats["grad_norm"] == pytest.approx(norm.item(), rel=1e-4)


def test_non_finite_loss_skips_update_and_keeps_weights(causal_model, tokenizer, tmp_path, caplog):
    with torch.no_grad():
        causal_model.get_input_embeddings().weight[tokenizer.convert_tokens_to_ids("a")] = float("nan")
    before = [p.detach().clone() for p in causal_model.parameters()]
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)
    with caplog.at_level(logging.WARNING, logger="itersft.trainer"):
        stats = trainer.step(texts=["abc"])
    assert "skipped an optimizer update" in caplog.text
    assert stats["updates"] == 0 and stats["skipped_updates"] == 1 and stats["global_step"] == 0
    assert trainer.state.global_step == 0
    for b, p in zip(before, causal_model.parameters()):
        assert torch.equal(b, p) or (torch.isnan(b) == torch.isnan(p)).all() and torch.equal(
            b.nan_to_num(), p.nan_to_num())
