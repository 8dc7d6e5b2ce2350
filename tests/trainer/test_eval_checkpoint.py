"""Evaluation during `step()` calls, checkpoints written to disk, and resuming from them.

Uses the `causal_dir` / `causal_model` / `tokenizer` fixtures (a tiny Llama-style model saved with
`save_pretrained`). Each `step()` call below takes exactly one optimizer update, so `global_step`
equals the number of calls made.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM

from itersft import IterativeSFTConfig, IterativeSFTTrainer

EVAL_TEXTS = ["hello world", "abc", "the cat sat"]
TRAIN_CALLS = [["hello world", "abcd"], ["the cat", "sat on"], ["a mat", "xyz"], ["hello cat", "world abc"]]


def config(tmp_path, **kwargs) -> IterativeSFTConfig:
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def run_calls(trainer, calls) -> list[dict]:
    return [trainer.step(texts=texts) for texts in calls]


def eval_entries(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "eval_loss" in entry]


def with_eos(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]


# ---- evaluation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("eval_batch_size", [1, 2, 8])
def test_eval_every_two_updates_on_text_dataset(causal_model, tokenizer, tmp_path, eval_batch_size):
    args = config(tmp_path, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=2,
                  per_device_eval_batch_size=eval_batch_size)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer, eval_dataset=Dataset.from_dict({"text": EVAL_TEXTS}))
    run_calls(trainer, TRAIN_CALLS)
    entries = eval_entries(trainer)
    assert [entry["step"] for entry in entries] == [2, 4]
    assert entries[0]["eval_loss"] != entries[1]["eval_loss"]

    # The text column is tokenised as step() would (EOS appended); eval_loss is the mean over all label
    # tokens whatever the eval batch size (transformers' own averages per-batch means instead).
    causal_model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in EVAL_TEXTS:
            ids = torch.tensor([with_eos(tokenizer, text)])
            total += F.cross_entropy(causal_model(input_ids=ids).logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert entries[-1]["eval_loss"] == pytest.approx(total / count, rel=1e-5)


def test_eval_every_two_updates_on_tokenised_dataset(causal_model, tokenizer, tmp_path):
    dataset = Dataset.from_dict({"input_ids": [with_eos(tokenizer, t) for t in EVAL_TEXTS]})
    args = config(tmp_path, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer, eval_dataset=dataset)
    run_calls(trainer, TRAIN_CALLS + TRAIN_CALLS[:1])
    assert [entry["step"] for entry in eval_entries(trainer)] == [2, 4]


def test_seq2seq_eval_loss_is_the_token_mean_and_predict_reports_it(seq2seq_model, tokenizer, tmp_path):
    pairs = {"text": ["translate hello", "a", "the cat sat on"], "text_label": ["bonjour", "b c d e f", "x"]}
    trainer = IterativeSFTTrainer(seq2seq_model, config(tmp_path, per_device_eval_batch_size=2), tokenizer,
                                  eval_dataset=Dataset.from_dict(pairs))
    total = count = 0
    seq2seq_model.eval()
    with torch.no_grad():  # the model's own loss (a mean over one row's targets), weighted by its target count
        for row in trainer.eval_dataset:
            inputs, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            total += seq2seq_model(input_ids=inputs, labels=labels).loss.item() * labels.numel()
            count += labels.numel()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert trainer.predict(trainer.eval_dataset).metrics["test_loss"] == pytest.approx(total / count, rel=1e-5)


def _argmax(logits, labels):
    return logits.argmax(dim=-1)


def _next_token_accuracy(prediction) -> dict[str, float]:
    predictions, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    predicted, target = predictions[:, :-1], labels[:, 1:]  # logits at t predict the token at t + 1
    keep = target != -100
    return {"accuracy": float((predicted[keep] == target[keep]).mean())}


def test_compute_metrics_accuracy_matches_independent_computation(causal_model, tokenizer, tmp_path):
    # Train on the eval texts so that the accuracy is well above chance and differs between evaluations.
    args = config(tmp_path, eval_strategy="steps", eval_steps=2, per_device_train_batch_size=3,
                  per_device_eval_batch_size=2, learning_rate=3e-2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer, eval_dataset=Dataset.from_dict({"text": EVAL_TEXTS}),
                                  compute_metrics=_next_token_accuracy, preprocess_logits_for_metrics=_argmax)
    for _ in range(4):
        trainer.step(texts=EVAL_TEXTS)
    entries = eval_entries(trainer)
    assert [entry["step"] for entry in entries] == [2, 4]
    accuracy = entries[-1]["eval_accuracy"]
    assert 0.0 <= accuracy <= 1.0

    causal_model.eval()
    correct = total = 0
    with torch.no_grad():
        for text in EVAL_TEXTS:
            ids = torch.tensor(with_eos(tokenizer, text))
            predicted = causal_model(input_ids=ids[None]).logits[0, :-1].argmax(-1)
            correct += int((predicted == ids[1:]).sum())
            total += len(ids) - 1
    assert accuracy == pytest.approx(correct / total)
    assert accuracy > 0.05  # well above chance (1/260): the metric sees real predictions, not padding


# ---- checkpoints --------------------------------------------------------------------------------


def test_save_steps_writes_complete_checkpoint(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, save_strategy="steps", save_steps=2, per_device_train_batch_size=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer)
    run_calls(trainer, TRAIN_CALLS[:1])
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path))
    run_calls(trainer, TRAIN_CALLS[1:2])
    weights_at_2 = {k: v.detach().clone() for k, v in causal_model.state_dict().items()}
    run_calls(trainer, TRAIN_CALLS[2:3])  # step 3: no new checkpoint

    assert sorted(name for name in os.listdir(tmp_path) if "checkpoint" in name) == ["checkpoint-2"]
    checkpoint = tmp_path / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
            "config.json", "tokenizer_config.json"} <= files
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == 2
    saved = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    for name, value in weights_at_2.items():
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)


def test_save_total_limit_rotates_checkpoints(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, save_strategy="steps", save_steps=2, save_total_limit=1, per_device_train_batch_size=2)
    run_calls(IterativeSFTTrainer(causal_model, args, tokenizer), TRAIN_CALLS)
    assert sorted(name for name in os.listdir(tmp_path) if "checkpoint" in name) == ["checkpoint-4"]


def _resume_config(output_dir) -> IterativeSFTConfig:
    return config(output_dir, save_strategy="steps", save_steps=2, max_steps=4, learning_rate=1e-2,
                  per_device_train_batch_size=1, gradient_accumulation_steps=2)


def test_resume_continues_exactly(causal_dir, tokenizer, tmp_path):
    model_a = AutoModelForCausalLM.from_pretrained(causal_dir)
    trainer_a = IterativeSFTTrainer(model_a, _resume_config(tmp_path / "a"), tokenizer)
    stats_a = run_calls(trainer_a, TRAIN_CALLS)
    assert [s["global_step"] for s in stats_a] == [1, 2, 3, 4]

    model_b = AutoModelForCausalLM.from_pretrained(causal_dir)
    trainer_b = IterativeSFTTrainer(model_b, _resume_config(tmp_path / "b"), tokenizer)
    resumed = trainer_b.resume_from_checkpoint(str(tmp_path / "a" / "checkpoint-2"))
    assert resumed == str(tmp_path / "a" / "checkpoint-2")
    assert trainer_b.state.global_step == 2
    stats_b = run_calls(trainer_b, TRAIN_CALLS[2:])

    for a, b in zip(stats_a[2:], stats_b):
        assert b["global_step"] == a["global_step"]
        assert b["learning_rate"] == pytest.approx(a["learning_rate"], rel=1e-12)  # scheduler restored
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # call 3: weights; call 4: optimizer state
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)
    for (name, pa), (_, pb) in zip(model_a.named_parameters(), model_b.named_parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-6, atol=1e-7, msg=name)
    # the resumed run writes its own checkpoint at step 4
    assert (tmp_path / "b" / "checkpoint-4" / "trainer_state.json").is_file()


def test_resume_true_picks_latest_checkpoint(causal_dir, tokenizer, tmp_path):
    trainer_a = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(causal_dir), _resume_config(tmp_path),
                                    tokenizer)
    run_calls(trainer_a, TRAIN_CALLS)
    trainer_b = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(causal_dir), _resume_config(tmp_path),
                                    tokenizer)
    assert trainer_b.resume_from_checkpoint(True) == str(tmp_path / "checkpoint-4")
    assert trainer_b.state.global_step == 4
    for pa, pb in zip(trainer_a.model.parameters(), trainer_b.model.parameters()):
        assert torch.equal(pa, pb)


def test_resume_true_with_no_checkpoint_returns_none(causal_model, tokenizer, tmp_path):
    for output_dir in (tmp_path / "missing", tmp_path):  # a folder that does not exist, and an empty one
        trainer = IterativeSFTTrainer(causal_model, config(output_dir), tokenizer)
        assert trainer.resume_from_checkpoint(True) is None
        assert trainer.state.global_step == 0


def test_resume_from_bad_path_raises(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)
    with pytest.raises(ValueError, match="checkpoint"):
        trainer.resume_from_checkpoint(str(tmp_path / "no-such-checkpoint"))
    (tmp_path / "checkpoint-7").mkdir()  # a folder without trainer_state.json
    with pytest.raises(ValueError, match="checkpoint"):
        trainer.resume_from_checkpoint(str(tmp_path / "checkpoint-7"))
