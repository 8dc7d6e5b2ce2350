"""What `IterativeSFTTrainer.__init__` accepts, loads and refuses.

Models and tokenizers come from the `causal_dir` / `seq2seq_dir` fixtures (tiny toy models saved with
`save_pretrained`); a model "given by name" is one of those folders passed as a path string.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import re
import typing

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    T5ForConditionalGeneration,
    Trainer,
    TrainingArguments,
)

import itersft.trainer.trainer as trainer_module
from itersft import IterativeSFTConfig, IterativeSFTTrainer

# prompt "ab" (2 tokens) + completion "cdefghij" (8 tokens + EOS): 11 tokens, 9 of them completion.
PROMPT, COMPLETION = "ab", "cdefghij"


def config(tmp_path, **kwargs) -> IterativeSFTConfig:
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def trained_tokens(trainer) -> int:
    return trainer.step(prompts=[PROMPT], completions=[COMPLETION])["trained_tokens"]


# ---- tokenizer arguments ------------------------------------------------------------------------


def test_positional_quickstart_takes_tokenizer(causal_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output_dir is relative
    trainer = IterativeSFTTrainer(causal_model, tokenizer)
    assert trainer.processing_class is tokenizer
    assert isinstance(trainer.args, IterativeSFTConfig)
    stats = trainer.step(texts=["hello world"])
    assert stats["global_step"] == 1 and math.isfinite(stats["loss"])


def test_processing_class_keyword(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), processing_class=tokenizer)
    assert trainer.processing_class is tokenizer
    assert trainer.step(texts=["hello"])["updates"] == 1


def test_tokenizer_and_processing_class_together_raise(causal_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="processing_class"):
        IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, processing_class=tokenizer)


def test_positional_tokenizer_and_keyword_tokenizer_raise(causal_model, tokenizer):
    with pytest.raises(ValueError, match="once"):
        IterativeSFTTrainer(causal_model, tokenizer, tokenizer=tokenizer)


# ---- model given by name ------------------------------------------------------------------------


def test_causal_model_by_path_loads_weights_and_tokenizer(causal_dir, tmp_path):
    trainer = IterativeSFTTrainer(str(causal_dir), config(tmp_path))
    assert isinstance(trainer.model, LlamaForCausalLM)
    assert trainer.is_encoder_decoder is False
    reference = AutoModelForCausalLM.from_pretrained(causal_dir)
    for (name, loaded), (_, saved) in zip(trainer.model.named_parameters(), reference.named_parameters()):
        assert torch.equal(loaded, saved), name  # the saved weights, not a fresh random init
    loaded_tokenizer = trainer.processing_class
    assert loaded_tokenizer is not None and loaded_tokenizer.eos_token == "</s>"
    assert loaded_tokenizer("hi")["input_ids"] == AutoTokenizer.from_pretrained(causal_dir)("hi")["input_ids"]
    assert math.isfinite(trainer.step(texts=["hello"])["loss"])


def test_seq2seq_model_by_path_loads_seq2seq(seq2seq_dir, tmp_path):
    trainer = IterativeSFTTrainer(str(seq2seq_dir), config(tmp_path))
    assert isinstance(trainer.model, T5ForConditionalGeneration)
    assert trainer.is_encoder_decoder is True and trainer.model.config.is_encoder_decoder
    reference = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir)
    assert torch.equal(trainer.model.shared.weight, reference.shared.weight)
    assert trainer.processing_class is not None
    assert math.isfinite(trainer.step(texts=["source"], texts_labels=["target"])["loss"])


def test_model_init_kwargs_dtype_applies_to_model_by_path(causal_dir, tmp_path):
    args = config(tmp_path, model_init_kwargs={"dtype": torch.bfloat16})
    trainer = IterativeSFTTrainer(str(causal_dir), args)
    assert trainer.model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    assert math.isfinite(trainer.step(texts=["hello"])["loss"])


def test_model_init_kwargs_with_built_model_raise(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, model_init_kwargs={"dtype": torch.bfloat16})
    with pytest.raises(ValueError, match="model_init_kwargs"):
        IterativeSFTTrainer(causal_model, args, tokenizer)


# ---- iterative-SFT settings ---------------------------------------------------------------------


def test_no_max_length_trains_every_completion_token(causal_model, tokenizer, tmp_path):
    assert trained_tokens(IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)) == 9


@pytest.mark.parametrize(("mode", "expected"), [("keep_end", 4), ("keep_start", 3)])
def test_config_max_length_and_truncation_mode_honoured(causal_model, tokenizer, tmp_path, mode, expected):
    # 11 tokens cut to 5. keep_start: "abcde", labels on "cde" -> 3 trained tokens. keep_end: "ghij</s>",
    # all completion -> 4 trained (the first position predicts nothing).
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_length=5, truncation_mode=mode), tokenizer)
    assert trained_tokens(trainer) == expected


@pytest.mark.parametrize(("mode", "expected"), [("keep_end", 4), ("keep_start", 3)])
def test_constructor_max_length_and_truncation_mode_honoured(causal_model, tokenizer, tmp_path, mode, expected):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer, max_length=5, truncation_mode=mode)
    assert trained_tokens(trainer) == expected


def test_same_max_length_in_both_places_is_fine(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_length=5), tokenizer, max_length=5)
    assert trained_tokens(trainer) == 4


def test_conflicting_max_length_raises(causal_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="max_length"):
        IterativeSFTTrainer(causal_model, config(tmp_path, max_length=8), tokenizer, max_length=16)


def test_invalid_truncation_mode_raises(causal_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="truncation_mode"):
        config(tmp_path, truncation_mode="middle")
    with pytest.raises(ValueError, match="truncation_mode"):
        IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer, truncation_mode="middle")


@pytest.mark.parametrize("where", ["config", "constructor"])
def test_optimize_device_cache_honoured(causal_model, tokenizer, tmp_path, monkeypatch, where):
    calls = []
    monkeypatch.setattr(trainer_module, "clear_device_cache", lambda *a, **k: calls.append(1))
    if where == "config":
        trainer = IterativeSFTTrainer(causal_model, config(tmp_path, optimize_device_cache=True), tokenizer)
    else:
        trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer, optimize_device_cache=True)
    trainer.step(texts=["hello"])
    trainer.step(texts=["world"])
    assert len(calls) == 2


@pytest.mark.parametrize(("given", "configured"), [
    ({"truncation_mode": "keep_end"}, {"truncation_mode": "keep_start"}),
    ({"optimize_device_cache": False}, {"optimize_device_cache": True}),
])
def test_an_explicit_constructor_setting_that_args_contradicts_raises(causal_model, tokenizer, tmp_path, given,
                                                                      configured):
    """Passing the default value explicitly is still passing it: it must not silently lose to `args`."""
    (name,) = given
    with pytest.raises(ValueError, match=f"`{name}` is .* here but .* in `args`"):
        IterativeSFTTrainer(causal_model, config(tmp_path, **configured), tokenizer, **given)


def test_an_explicit_constructor_setting_wins_over_the_args_default(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer, truncation_mode="keep_start",
                                  optimize_device_cache=True)
    assert trainer.settings.truncation_mode == "keep_start" and trainer.settings.optimize_device_cache is True
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, truncation_mode="keep_start"), tokenizer)
    assert trainer.settings.truncation_mode == "keep_start"  # left out: the config's value


@pytest.mark.parametrize("bad", [{"max_length": True}, {"per_device_train_batch_size": True},
                                 {"shuffle_samples": 1}, {"learning_rate": float("inf")}])
def test_bools_are_not_numbers_and_numbers_are_not_bools(tmp_path, bad):
    (name,) = bad
    with pytest.raises(ValueError, match=f"`{name}`"):
        config(tmp_path, **bad)


def test_optimize_device_cache_off_by_default(causal_model, tokenizer, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "clear_device_cache", lambda *a, **k: calls.append(1))
    IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer).step(texts=["hello"])
    assert calls == []


# ---- args ---------------------------------------------------------------------------------------


def test_no_args_uses_working_defaults(causal_model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = IterativeSFTTrainer(model=causal_model, tokenizer=tokenizer)
    before = [p.detach().clone() for p in causal_model.parameters()]
    stats = trainer.step(texts=["hello world", "goodbye"])
    assert stats["global_step"] == 1 and stats["updates"] == 1
    assert stats["learning_rate"] == pytest.approx(trainer.args.learning_rate) and stats["learning_rate"] > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, causal_model.parameters()))


def test_plain_training_arguments(causal_model, tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2,
                             gradient_accumulation_steps=2)
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer, max_length=5)
    assert trainer.args is args
    stats = trainer.step(texts=["abcdefgh"] * 8)
    assert stats["updates"] == 2 and trainer.state.global_step == 2
    assert stats["trained_tokens"] == 8 * 4  # max_length from the constructor applies
    assert stats["learning_rate"] == pytest.approx(args.learning_rate)


def test_args_of_wrong_type_raise(causal_model, tokenizer):
    with pytest.raises(TypeError, match="args"):
        IterativeSFTTrainer(causal_model, {"output_dir": "x"}, tokenizer)


def test_optimizer_and_scheduler_exist_after_construction(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, learning_rate=1e-3), tokenizer)
    assert isinstance(trainer.optimizer, torch.optim.Optimizer)
    assert trainer.lr_scheduler is not None
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in causal_model.parameters() if p.requires_grad}


# ---- the caller's tokenizer ---------------------------------------------------------------------


def _tokenizer_snapshot(tokenizer) -> dict:
    simple = (str, int, float, bool, type(None))
    backend = tokenizer.backend_tokenizer
    return {
        "attributes": {k: v for k, v in vars(tokenizer).items() if isinstance(v, simple)},
        "init_kwargs": copy.deepcopy(tokenizer.init_kwargs),
        "truncation_side": tokenizer.truncation_side,
        "padding_side": tokenizer.padding_side,
        "pad_token": tokenizer.pad_token,
        "eos_token": tokenizer.eos_token,
        "model_max_length": tokenizer.model_max_length,
        "chat_template": tokenizer.chat_template,
        "backend_truncation": backend.truncation,
        "backend_padding": backend.padding,
        "vocab": len(tokenizer),
    }


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_callers_tokenizer_not_mutated(causal_model, tokenizer, tmp_path, mode):
    before = _tokenizer_snapshot(tokenizer)
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_length=4, truncation_mode=mode), tokenizer)
    assert _tokenizer_snapshot(tokenizer) == before
    trainer.step(texts=["a long text that gets truncated", "x"])
    trainer.step(prompts=[PROMPT], completions=[COMPLETION])
    trainer.step(messages=[[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])
    assert _tokenizer_snapshot(tokenizer) == before


# ---- what the trainer is ------------------------------------------------------------------------


def test_train_raises_not_implemented_and_points_at_step_and_the_loop(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)
    with pytest.raises(NotImplementedError) as raised:
        trainer.train()
    named = set(re.findall(r"`((?:itersft\.[\w.]+)|(?:IterativeSFTTrainer\.\w+))`", str(raised.value)))
    assert named == {"IterativeSFTTrainer.step", "itersft.loop.ExpertIteration"}


def test_train_error_names_apis_that_exist(causal_model, tokenizer, tmp_path):
    """Every API the error names can be reached by that very name (`itersft.loop` exports the loop)."""
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer)
    with pytest.raises(NotImplementedError) as raised:
        trainer.train()
    for name in re.findall(r"`((?:itersft\.[\w.]+)|(?:IterativeSFTTrainer\.\w+))`", str(raised.value)):
        module, attribute = name.rsplit(".", 1)
        owner = IterativeSFTTrainer if module == "IterativeSFTTrainer" else importlib.import_module(module)
        assert callable(getattr(owner, attribute)), name


def test_constructor_type_hints_say_what_it_accepts():
    """The hints resolve, and say that `args` may be a tokenizer (the `IterativeSFTTrainer(model, tokenizer)`
    quickstart) and `model` a name or path."""
    from datasets import Dataset
    from peft import PeftConfig, PeftModel

    hints = typing.get_type_hints(IterativeSFTTrainer.__init__, localns={
        "Dataset": Dataset, "PeftConfig": PeftConfig, "PeftModel": PeftModel})
    assert {PreTrainedTokenizerBase, ProcessorMixin, TrainingArguments} <= set(typing.get_args(hints["args"]))
    assert {PreTrainedTokenizerBase, ProcessorMixin} <= set(typing.get_args(hints["tokenizer"]))
    assert {PreTrainedModel, PeftModel, str, os.PathLike} <= set(typing.get_args(hints["model"]))


def test_is_a_transformers_trainer(causal_model, tokenizer, tmp_path):
    assert isinstance(IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer), Trainer)


def test_missing_model_raises(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="model"):
        IterativeSFTTrainer(None, config(tmp_path), tokenizer)


def test_fsdp1_is_refused_with_a_pointer_to_fsdp2(causal_model, tokenizer, tmp_path, monkeypatch):
    """FSDP1 (deprecated in transformers) is not supported; FSDP2 is tested in tests/distributed."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import FullyShardedDataParallelPlugin

    class WithFsdp1(IterativeSFTTrainer):  # what transformers sets up when an FSDP1 config is launched
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            plugin = FullyShardedDataParallelPlugin(fsdp_version=1)
            monkeypatch.setitem(AcceleratorState._shared_state, "fsdp_plugin", plugin)  # undone after the test
            self.is_fsdp_enabled = True

    with pytest.raises(ValueError, match="FSDP1 is not supported: use FSDP2"):
        WithFsdp1(causal_model, config(tmp_path), tokenizer)
