"""The ways published TRL code builds and drives the trainer, each checked by the gradient it applies.

Every test records the gradient of each optimizer update (`UpdateRecorder`) and compares it with a
hand-written reference on the same tiny model (`gradient_reference`): each sample alone, its token
losses summed, divided by the label-token count of the whole window, clipped as `max_grad_norm`
clips. "It ran" is never enough: a dropped label, a per-micro-batch mean, an ignored setting or a
wrongly frozen parameter changes the numbers.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from itersft import IterativeSFTConfig, IterativeSFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_reference import (  # noqa: E402
    UpdateRecorder,
    assert_same_gradients,
    causal_label_count,
    causal_loss_sum,
    expected_update,
)


def causal_reference(model, params, input_ids, labels, max_grad_norm):
    """Loss and gradient of one update on these causal samples (see `gradient_reference`)."""
    losses = [lambda m, i=i, lab=lab: causal_loss_sum(m, i, lab) for i, lab in zip(input_ids, labels)]
    return expected_update(model, params, losses, causal_label_count(labels), max_grad_norm)


def text_ids(tokenizer, text: str) -> torch.Tensor:
    """How `step(texts=...)` tokenises a text for a causal model: its tokens, then EOS."""
    return torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])


# ---- the specification's quickstart -------------------------------------------------------------


def test_spec_quickstart_pad_is_eos_positional_tokenizer_tensors_then_texts(causal_dir, tmp_path, monkeypatch):
    """`tokenizer.pad_token = tokenizer.eos_token; IterativeSFTTrainer(model, tokenizer)`, then
    `step(input_ids=..., attention_mask=...)` without labels and `step(texts=...)`, all defaults.

    Labels are the ids; every real EOS is learned although it is also the pad token (TRL masked it).
    """
    monkeypatch.chdir(tmp_path)  # the default output_dir is relative
    model = AutoModelForCausalLM.from_pretrained(causal_dir)
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    tokenizer.pad_token = tokenizer.eos_token
    trainer = IterativeSFTTrainer(model, tokenizer)
    recorder = UpdateRecorder()
    trainer.add_callback(recorder)
    max_norm = trainer.args.max_grad_norm
    eos = tokenizer.eos_token_id
    input_ids = [torch.tensor([10, 11, 12, eos]), torch.tensor([20, 21, 22, 23, 24, 25, eos]),
                 torch.tensor([30, 31, eos])]

    first = trainer.step(input_ids=input_ids, attention_mask=[torch.ones_like(i) for i in input_ids])
    texts = ["hello world", "a b", "the quick brown fox"]
    second = trainer.step(texts=texts)

    assert trainer.state.global_step == 2 and len(recorder.grads) == 2
    loss, grads = causal_reference(model, recorder.params[0], input_ids, input_ids, max_norm)
    assert first["trained_tokens"] == 3 + 6 + 2
    assert first["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)
    ids = [text_ids(tokenizer, t) for t in texts]
    loss, grads = causal_reference(model, recorder.params[1], ids, ids, max_norm)
    assert second["trained_tokens"] == sum(len(i) - 1 for i in ids)
    assert second["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[1], grads)


# ---- TRL's documentation quickstart -------------------------------------------------------------


@pytest.mark.parametrize("built", ["by_path", "instance_with_processing_class"])
def test_trl_docs_quickstart(built, causal_dir, tmp_path):
    """`IterativeSFTTrainer("name", args=IterativeSFTConfig(max_length=512, output_dir=...))`, or the model
    instance with `processing_class=tokenizer`; then tensors, then `texts` with `texts_labels`.

    By path, the first update must match a reference on the saved weights: the model is loaded, not
    re-initialised, and its tokenizer is the saved one.
    """
    args = IterativeSFTConfig(max_length=512, output_dir=str(tmp_path))
    saved = AutoModelForCausalLM.from_pretrained(causal_dir)
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    if built == "by_path":
        trainer = IterativeSFTTrainer(str(causal_dir), args=args)
    else:
        trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(causal_dir), args=args,
                                      processing_class=tokenizer)
    recorder = UpdateRecorder()
    trainer.add_callback(recorder)
    input_ids = [torch.tensor([40, 41, 42, 43, 44]), torch.tensor([50, 51, 52])]
    trainer.step(input_ids=input_ids, attention_mask=[torch.ones_like(i) for i in input_ids])
    texts = ["one two three", "four"]
    stats = trainer.step(texts=texts, texts_labels=texts)

    _, grads = causal_reference(saved, None, input_ids, input_ids, args.max_grad_norm)
    assert_same_gradients(recorder.grads[0], grads)
    ids = [text_ids(tokenizer, t) for t in texts]
    loss, grads = causal_reference(saved, recorder.params[1], ids, ids, args.max_grad_norm)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[1], grads)


# ---- tokenizer= with a plain TrainingArguments --------------------------------------------------


def test_tokenizer_keyword_with_plain_training_arguments(causal_model, tokenizer, tmp_path):
    """`tokenizer=` and a plain `TrainingArguments` with `max_steps`, `lr_scheduler_type`,
    `gradient_accumulation_steps` and `report_to`: every one is honoured.

    Four samples, batch 2, accumulation 2: each call is one update over one window of two micro-batches,
    its gradient the mean over the window's tokens (not the mean of two micro-batch means). The cosine
    schedule runs over `max_steps`=3: factors 1, 0.75, 0.25.
    """
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, lr_scheduler_type="cosine",
                             gradient_accumulation_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                             report_to="none")
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer=tokenizer, callbacks=[recorder])
    assert not [c for c in trainer.callback_handler.callbacks if type(c).__module__.startswith("transformers.integr")]
    generator = torch.Generator().manual_seed(3)
    calls = [[torch.randint(4, len(tokenizer), (n,), generator=generator) for n in (2, 9, 4, 13)] for _ in range(3)]

    results = [trainer.step(input_ids=ids) for ids in calls]

    assert [r["updates"] for r in results] == [1, 1, 1] and trainer.state.global_step == 3
    for result, factor in zip(results, (1.0, 0.75, 0.25)):
        assert result["learning_rate"] == pytest.approx(1e-2 * factor, rel=1e-6)
    for index, ids in enumerate(calls):
        loss, grads = causal_reference(causal_model, recorder.params[index], ids, ids, args.max_grad_norm)
        assert results[index]["loss"] == pytest.approx(loss, rel=1e-5)
        assert_same_gradients(recorder.grads[index], grads)


# ---- gradient checkpointing enabled by the user -------------------------------------------------


@pytest.mark.parametrize("reentrant", [False, True])
def test_model_with_gradient_checkpointing_already_enabled(reentrant, causal_dir, tokenizer, tmp_path):
    """The user called `model.gradient_checkpointing_enable()` before building the trainer (config left
    at its default): checkpointing stays on (each layer runs again in backward) and the gradient is exact."""
    model = AutoModelForCausalLM.from_pretrained(causal_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renamed it activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    calls = [0]
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(model, IterativeSFTConfig(output_dir=str(tmp_path), report_to="none",
                                                            per_device_train_batch_size=4, max_grad_norm=0.0),
                                  tokenizer=tokenizer, callbacks=[recorder])
    input_ids = [torch.tensor([10, 11, 12, 13, 14]), torch.tensor([20, 21, 22]), torch.tensor([30, 31, 32, 33])]

    trainer.step(input_ids=input_ids)

    assert model.is_activation_checkpointing
    assert calls[0] == 2  # one micro-batch: its forward, and the recomputation in backward
    _, grads = causal_reference(model, recorder.params[0], input_ids, input_ids, 0.0)
    assert_same_gradients(recorder.grads[0], grads)


# ---- PeftModel with several adapters ------------------------------------------------------------


def test_peft_model_with_several_adapters_trains_only_the_active_one(causal_model, tokenizer, tmp_path):
    """A `PeftModel` holding adapters "critic" (active) and "policy": the optimizer holds the critic's
    weights only, its gradient is exact, and neither the policy adapter nor the base model moves."""
    # init_lora_weights=False: B starts non-zero, so both A and B get a gradient at the first update.
    model = get_peft_model(causal_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False), adapter_name="critic")
    model.add_adapter("policy", LoraConfig(r=2, target_modules=["q_proj", "o_proj"], init_lora_weights=False))
    model.set_adapter("critic")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    critic = {n for n in before if ".critic." in n}
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(model, IterativeSFTConfig(output_dir=str(tmp_path), report_to="none",
                                                            learning_rate=1e-2, max_grad_norm=0.0),
                                  tokenizer=tokenizer, callbacks=[recorder])
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in model.named_parameters() if n in critic}
    input_ids = [torch.tensor([10, 11, 12, 13, 14, 15]), torch.tensor([20, 21, 22])]

    for _ in range(2):
        trainer.step(input_ids=input_ids)

    assert model.active_adapter == "critic"
    for name, value in model.named_parameters():
        if name in critic:
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"{name} changed but is not the active adapter"
    for index in range(2):
        _, grads = causal_reference(model, recorder.params[index], input_ids, input_ids, 0.0)
        assert sorted(grads) == sorted(critic)
        assert_same_gradients(recorder.grads[index], grads)


# ---- a padded batch passed with labels=input_ids ------------------------------------------------


def test_padded_rows_with_labels_equal_to_the_ids(causal_model, tokenizer, tmp_path):
    """TRL scripts pass a padded batch's rows as `input_ids`, its `attention_mask`, and `labels` = the ids
    (pad ids included). Padding never carries loss, and the loss is divided by the real label tokens only:
    the gradient is the unpadded samples' token mean."""
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, IterativeSFTConfig(output_dir=str(tmp_path), report_to="none"),
                                  tokenizer=tokenizer, callbacks=[recorder])
    samples = [torch.tensor([10, 11, 12, 13, 14]), torch.tensor([20, 21]), torch.tensor([30, 31, 32])]
    pad = tokenizer.pad_token_id
    rows = [torch.cat([s, torch.full((5 - len(s),), pad)]) for s in samples]
    masks = [torch.tensor([1] * len(s) + [0] * (5 - len(s))) for s in samples]

    stats = trainer.step(input_ids=rows, attention_mask=masks, labels=[r.clone() for r in rows])

    loss, grads = causal_reference(causal_model, recorder.params[0], samples, samples, trainer.args.max_grad_norm)
    assert stats["trained_tokens"] == causal_label_count(samples) == 4 + 1 + 2
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)
