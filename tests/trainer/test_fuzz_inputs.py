"""Generated bad input to `step()` and the constructor: a clear error naming the argument, or a documented skip.

`step()` is fed every mutation below of a valid call, on a causal and on a seq2seq toy model: wrong
containers, wrong element types, ids outside the vocabulary, masks that are not 0/1, misaligned
labels, orphaned companion arguments, invalid Unicode, malformed chat turns. Each must either raise a
`ValueError`/`TypeError` whose message names the argument in backticks, or train nothing and count
the samples as skipped (the documented outcome for samples with no label token, e.g. an empty text).
After each one the trainer must be untouched (weights equal and finite, no pending gradient, no update
counted, no optimizer state), and after all of them a valid `step()` must equal a fresh trainer's.
The constructor is fed bad settings the same way.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

from itersft import IterativeSFTConfig, IterativeSFTTrainer

GOOD_IDS = [torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11])]


def _tensor_mutations(name: str, vocab: int, is_encoder_decoder: bool) -> list:
    """Bad values for a list-of-1-D-tensors argument (`input_ids`, `attention_mask`, `labels`)."""
    elements = [[5, 6, 7], 3.5, "x", None, torch.tensor([], dtype=torch.long), torch.tensor([[5, 6]]),
                torch.tensor([5.0, 6.0]), torch.tensor([True, False]), torch.tensor([1 + 2j, 3j]),
                torch.tensor([vocab, 5]), torch.tensor([-1, 5]), torch.tensor([2**40, 5]),
                torch.tensor([float("nan"), 1.0]), torch.tensor([5, 6], dtype=torch.int8) * 0 - 3]
    if name == "attention_mask":
        elements += [torch.tensor([1, 2, 1, 1]), torch.tensor([1, -1, 1, 1]), torch.tensor([1, 1])]
    if name == "labels":
        elements.append(torch.tensor([-101, 5, 6, 7]))
        if not is_encoder_decoder:  # a seq2seq target may be shorter than its source
            elements.append(torch.tensor([5, 6]))
    containers = [5, "ids", b"ids", torch.tensor([5, 6]), {"a": 1}, {5, 6}, []]
    return containers + [[element, GOOD_IDS[1]] for element in elements]


def _string_mutations() -> list:
    return [5, "text", b"text", [], {"a": "b"}, [5, "b"], [None, "b"], [b"a", "b"], [["a"], "b"],
            ["bad \ud800 surrogate", "b"], [torch.tensor([5]), "b"]]


def _message_mutations() -> list:
    return [5, "hi", [], [[]], [["not a dict"]], [[{}]], [[{"role": "user"}]], [[{"content": "x"}]],
            [[{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]],
            [[{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]],
            [[{"role": "user", "content": "q"}, {"role": "assistant", "content": None}]],
            [[{"role": "user", "content": "q"}]],
            [[{"role": 3, "content": "q"}, {"role": "assistant", "content": "y"}]],
            [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "\udc80"}]]]


def bad_step_inputs(is_encoder_decoder: bool, vocab: int) -> list[dict]:
    """Every bad `step()` call of this file for one model kind."""
    labels = {"labels": [torch.tensor([5, 6]), torch.tensor([7])]} if is_encoder_decoder else {}
    cases = []
    for name in ("input_ids", "attention_mask", "labels"):
        for value in _tensor_mutations(name, vocab, is_encoder_decoder):
            call = {"input_ids": GOOD_IDS, **labels}
            call[name] = value
            cases.append(call)
    for value in _string_mutations():
        cases.append({"texts": value, **({"texts_labels": ["a", "b"]} if is_encoder_decoder else {})})
        cases.append({"prompts": ["p", "q"], "completions": value})
    cases += [{"messages": value} for value in _message_mutations()]
    cases += [
        {"labels": GOOD_IDS}, {"attention_mask": GOOD_IDS}, {"texts_labels": ["a"]}, {"completions": ["a"]},
        {"prompts": ["a"]}, {"input_ids": GOOD_IDS, "texts": ["a", "b"]},
        {"texts": ["a", "b"], "prompts": ["a", "b"], "completions": ["c", "d"]},
        {"input_ids": GOOD_IDS, "labels": GOOD_IDS[:1]}, {"texts": ["a", "b"], "texts_labels": ["a"]},
        {"texts": [""]}, {"prompts": ["", ""], "completions": ["", ""]}, {},
    ]
    return cases


def _names_an_argument(message: str) -> bool:
    return re.search(r"`(input_ids|attention_mask|labels|texts|texts_labels|prompts|completions|messages)"
                     r"(\[\d+\])?", message) is not None


def _untouched(trainer, weights) -> None:
    assert trainer.state.global_step == 0 and not trainer.optimizer.state
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, weights[name]) and bool(torch.isfinite(p).all()), name
        assert p.grad is None, name


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_generated_bad_step_inputs_error_clearly_or_skip_and_leave_the_trainer_untouched(
        kind, causal_model, seq2seq_model, tokenizer, tmp_path):
    model = causal_model if kind == "causal" else seq2seq_model
    fresh = copy.deepcopy(model)
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2)
    trainer = IterativeSFTTrainer(model, config, tokenizer=tokenizer)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    cases = bad_step_inputs(kind == "seq2seq", trainer.facts.vocab_size)
    assert len(cases) >= 100
    outcomes = {"error": 0, "skipped": 0}
    for index, call in enumerate(cases):
        try:
            stats = trainer.step(**call)
        except (ValueError, TypeError) as error:
            message = str(error)
            assert _names_an_argument(message) or "no samples" in message, (index, call, message)
            assert "Traceback" not in message
            outcomes["error"] += 1
        else:
            assert stats["updates"] == 0 and stats["skipped_samples"] > 0, (index, call, stats)
            outcomes["skipped"] += 1
        _untouched(trainer, weights)
    assert outcomes["error"] > 90
    assert outcomes["skipped"] == (2 if kind == "causal" else 0)  # causal empty texts: nothing to learn, skipped

    reference = IterativeSFTTrainer(fresh, config, tokenizer=tokenizer)
    valid = {"texts": ["hello", "world"], "texts_labels": ["a", "b"]} if kind == "seq2seq" else {"texts": ["ab", "cd"]}
    got, expected = trainer.step(**valid), reference.step(**valid)
    assert got["loss"] == expected["loss"] and math.isfinite(got["loss"])
    for (name, p), q in zip(trainer.model.named_parameters(), reference.model.parameters()):
        assert torch.equal(p, q), name


BAD_SETTINGS = [
    {"per_device_train_batch_size": -1}, {"per_device_train_batch_size": 0}, {"per_device_train_batch_size": True},
    {"per_device_train_batch_size": 1.5}, {"per_device_eval_batch_size": 0}, {"gradient_accumulation_steps": 0},
    {"gradient_accumulation_steps": -2}, {"max_length": True}, {"max_length": 0}, {"max_length": -3},
    {"max_length": 2.5}, {"truncation_mode": "middle"}, {"truncation_mode": None}, {"learning_rate": float("inf")},
    {"learning_rate": float("nan")}, {"learning_rate": -1.0}, {"weight_decay": float("inf")},
    {"max_grad_norm": -1.0}, {"max_grad_norm": float("nan")}, {"batching": "fast"}, {"shuffle_samples": 1},
    {"add_eos_token": "yes"}, {"guard_updates": None}, {"optimize_device_cache": 0}, {"adam_beta1": 1.0},
    {"adam_beta2": -0.1}, {"adam_epsilon": 0.0}, {"warmup_steps": -1}, {"logging_steps": 0}, {"save_steps": -5},
    {"eval_steps": 0}, {"max_steps": -7}, {"logging_steps": 0.5}, {"model_init_kwargs": "dtype=bf16"},
]


@pytest.mark.parametrize("setting", BAD_SETTINGS, ids=lambda s: f"{next(iter(s))}={next(iter(s.values()))!r}")
def test_bad_settings_are_refused_naming_the_setting(setting, tmp_path):
    (name,) = setting
    with pytest.raises((ValueError, TypeError)) as raised:
        IterativeSFTConfig(output_dir=str(tmp_path), **setting)
    assert name in str(raised.value)  # ours name it in backticks; a few are refused by TrainingArguments first


@pytest.mark.parametrize("arguments", [
    {"max_length": True}, {"max_length": 0}, {"max_length": "512"}, {"truncation_mode": "middle"},
    {"truncation_mode": 3}, {"optimize_device_cache": "no"}, {"optimize_device_cache": 1},
], ids=lambda a: f"{next(iter(a))}={next(iter(a.values()))!r}")
def test_bad_constructor_arguments_are_refused_naming_them(arguments, causal_model, tokenizer, tmp_path):
    (name,) = arguments
    config = IterativeSFTConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises((ValueError, TypeError)) as raised:
        IterativeSFTTrainer(causal_model, config, tokenizer, **arguments)
    assert f"`{name}`" in str(raised.value)
