"""PEFT adapters, gradient checkpointing, bf16 autocast on CPU, device-cache clearing and seq2seq training.

Uses the `causal_dir` / `seq2seq_dir` fixtures (tiny Llama- and T5-style models saved with
`save_pretrained`); two models loaded from the same folder start from identical weights.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

import itersft.trainer.trainer as trainer_module
from itersft import IterativeSFTConfig, IterativeSFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from gradient_reference import UpdateRecorder  # noqa: E402  (tests/compat: the shared recorder)

TEXTS = ["hello world", "the cat sat on the mat", "abc"]


def config(tmp_path, **kwargs) -> IterativeSFTConfig:
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def lora_config() -> LoraConfig:
    return LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_only_lora_trained(model, before: dict[str, torch.Tensor]) -> None:
    after = dict(model.named_parameters())
    lora = [name for name in after if "lora_" in name]
    assert lora, "no LoRA parameters found"
    for name, value in after.items():
        if "lora_" in name:
            assert value.requires_grad, name
        else:
            assert not value.requires_grad, name
            assert torch.equal(value, before[name]), f"base weight {name} changed"
    assert any(not torch.equal(after[name], before[name]) for name in lora), "no LoRA weight changed"
    # lora_B starts at zero, so lora_A only moves from the second update on; both must have moved
    assert any(not torch.equal(after[n], before[n]) for n in lora if "lora_A" in n)
    assert any(not torch.equal(after[n], before[n]) for n in lora if "lora_B" in n)


# ---- PEFT ---------------------------------------------------------------------------------------


def test_peft_config_trains_only_adapters(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, learning_rate=1e-2), tokenizer,
                                  peft_config=lora_config())
    assert isinstance(trainer.model, PeftModel)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in trainer.model.named_parameters() if "lora_" in n}
    before = snapshot(trainer.model)
    for _ in range(3):
        stats = trainer.step(texts=TEXTS)
        assert math.isfinite(stats["loss"])
    assert_only_lora_trained(trainer.model, before)


def test_prewrapped_peft_model_trains_only_adapters(causal_model, tokenizer, tmp_path):
    model = get_peft_model(causal_model, lora_config())
    trainer = IterativeSFTTrainer(model, config(tmp_path, learning_rate=1e-2), tokenizer)
    assert trainer.model is model
    before = snapshot(model)
    for _ in range(3):
        trainer.step(texts=TEXTS)
    assert_only_lora_trained(model, before)


def test_peft_model_with_peft_config_raises(causal_model, tokenizer, tmp_path):
    model = get_peft_model(causal_model, lora_config())
    with pytest.raises(ValueError, match="PeftModel"):
        IterativeSFTTrainer(model, config(tmp_path), tokenizer, peft_config=lora_config())


# ---- gradient checkpointing ---------------------------------------------------------------------


def _layer_calls(model) -> list[int]:
    # A module inside the layer: transformers checkpoints the layer's `forward`, so hooks on the layer
    # itself fire once, while its submodules run again when backward recomputes the layer.
    calls = [0]
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_applied_and_matches_plain_run(causal_dir, tokenizer, tmp_path):
    """Checkpointing recomputes each layer in backward and gives the plain run's gradient.

    Gradients are compared, not the weights after the update: Adam's first step moves every weight by
    about lr x sign(gradient), so a gradient within rounding of zero may flip its weight by 2 x lr
    between two exact runs, depending on which CPU kernels ran.
    """
    results = {}
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(causal_dir)
        args = config(tmp_path / str(checkpointing), gradient_checkpointing=checkpointing, learning_rate=1e-3,
                      per_device_train_batch_size=len(TEXTS))
        recorder = UpdateRecorder()
        trainer = IterativeSFTTrainer(model, args, tokenizer, callbacks=[recorder])
        assert model.is_gradient_checkpointing is checkpointing
        calls = _layer_calls(model)
        stats = trainer.step(texts=TEXTS)
        results[checkpointing] = (stats, calls[0], recorder.grads[0])
    (plain, plain_calls, plain_grads), (ckpt, ckpt_calls, ckpt_grads) = results[False], results[True]
    assert plain_calls == 1 and ckpt_calls == 2  # checkpointed: the layer is recomputed in backward
    assert ckpt["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert ckpt_grads.keys() == plain_grads.keys() and plain_grads
    for name, value in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], value, rtol=1e-4, atol=1e-7, msg=name)


# ---- bf16 ---------------------------------------------------------------------------------------


def test_bf16_on_cpu_autocasts_and_trains(causal_model, tokenizer, tmp_path):
    args = config(tmp_path, bf16=True, use_cpu=True, learning_rate=1e-2, per_device_train_batch_size=len(TEXTS))
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer)
    dtypes = []
    causal_model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    losses = [trainer.step(texts=TEXTS)["loss"] for _ in range(6)]
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in causal_model.parameters())  # master weights stay fp32
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]


# ---- device cache -------------------------------------------------------------------------------


def test_optimize_device_cache_runs_on_cpu(causal_model, tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, optimize_device_cache=True), tokenizer)
    assert math.isfinite(trainer.step(texts=TEXTS)["loss"])


def test_optimize_device_cache_clears_after_every_step(causal_model, tokenizer, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "clear_device_cache", lambda *a, **k: calls.append(k))
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, optimize_device_cache=True), tokenizer)
    for _ in range(3):
        trainer.step(texts=TEXTS)
    assert len(calls) == 3


# ---- seq2seq ------------------------------------------------------------------------------------


@pytest.fixture
def seq2seq_tokenizer(seq2seq_dir):
    return AutoTokenizer.from_pretrained(seq2seq_dir)


def test_seq2seq_texts_labels_train(seq2seq_model, seq2seq_tokenizer, tmp_path):
    source, target = "translate: cat", "chat"
    source_ids = seq2seq_tokenizer(source, return_tensors="pt")["input_ids"]
    target_ids = seq2seq_tokenizer(text_target=target)["input_ids"] + [seq2seq_tokenizer.eos_token_id]
    with torch.no_grad():
        reference = seq2seq_model(input_ids=source_ids, labels=torch.tensor([target_ids])).loss.item()

    trainer = IterativeSFTTrainer(seq2seq_model, config(tmp_path, learning_rate=1e-2), seq2seq_tokenizer)
    first = trainer.step(texts=[source], texts_labels=[target])
    # the loss is on the target (with EOS), every target token counts, and decoder inputs are shifted
    assert first["trained_tokens"] == len(target_ids)
    assert first["loss"] == pytest.approx(reference, rel=1e-5)
    losses = [first["loss"]] + [trainer.step(texts=[source], texts_labels=[target])["loss"] for _ in range(19)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_seq2seq_without_targets_raises(seq2seq_model, seq2seq_tokenizer, tmp_path):
    trainer = IterativeSFTTrainer(seq2seq_model, config(tmp_path), seq2seq_tokenizer)
    with pytest.raises(ValueError, match="texts_labels"):
        trainer.step(texts=["translate: cat"])
    with pytest.raises(ValueError, match="labels"):
        trainer.step(input_ids=[torch.tensor([5, 6, 7])])
    assert trainer.state.global_step == 0


def test_seq2seq_by_path_with_peft(seq2seq_dir, tmp_path):
    peft = LoraConfig(r=4, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
    trainer = IterativeSFTTrainer(str(seq2seq_dir), config(tmp_path, learning_rate=1e-2), peft_config=peft)
    assert trainer.is_encoder_decoder and isinstance(trainer.model, PeftModel)
    before = snapshot(trainer.model)
    for _ in range(2):
        assert math.isfinite(trainer.step(texts=["translate: cat"], texts_labels=["chat"])["loss"])
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before if "lora_" not in n)
    assert any(not torch.equal(after[n], before[n]) for n in before if "lora_" in n)
    assert isinstance(AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir), type(trainer.model.get_base_model()))
