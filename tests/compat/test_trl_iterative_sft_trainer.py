"""TRL 0.23.1's own unit test of `IterativeSFTTrainer`, re-expressed on the offline toy models.

TRL's test file (`tests/test_iterative_sft_trainer.py` in its source distribution) holds one scenario,
run for a causal model and a seq2seq model, each fed two ways:

* token tensors: three samples (5, 6 and 5 tokens; the first and last equal) with an all-ones
  `attention_mask` and `labels` equal to the ids, as the columns of a `datasets.Dataset` set to the
  torch format;
* texts: two sentences as `texts`, the same sentences as `texts_labels`, also `Dataset` columns.

The trainer is built from a plain `TrainingArguments` (batch 2, `max_steps` 2, learning rate 1e-3,
`report_to="none"`) with `processing_class=`; for the causal model the tokenizer's pad token is set to
its EOS token first. Then `trainer.optimizer.zero_grad` is replaced by itself with
`set_to_none=False`, one `step()` runs, and every parameter must hold a gradient (`.grad` not None).

That assertion holds only when the trainer clears gradients through `trainer.optimizer.zero_grad`
(the replacement zeroes them in place) and every parameter took part in the loss. Here the models are
the toy Llama-style and T5-style models instead of TRL's hub models, and the token ids are TRL's ids
folded into the toy vocabulary (same lengths, same repetitions). Beyond TRL's assertion, each
gradient must be zero after the step: cleared after the last update, not left pending.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainingArguments

from itersft import IterativeSFTTrainer

# TRL's token ids (GPT-2-sized vocabulary); folded into the toy vocabulary below.
TRL_SAMPLES = ([5303, 3621, 3666, 1438, 318], [3666, 1438, 318, 3666, 1438, 318], [5303, 3621, 3666, 1438, 318])
TEXTS = ["Testing the IterativeSFTTrainer.", "This is a test of the IterativeSFTTrainer"]


def tensor_columns(vocab_size: int) -> dict:
    """`input_ids`, `attention_mask` and `labels` as columns of a torch-formatted `datasets.Dataset`."""
    ids = [torch.tensor([token % vocab_size for token in sample]) for sample in TRL_SAMPLES]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [torch.ones_like(i) for i in ids],
                                 "labels": [i.clone() for i in ids]})
    dataset.set_format("torch")
    return {name: dataset[name] for name in ("input_ids", "attention_mask", "labels")}


def text_columns() -> dict:
    """`texts` and `texts_labels` (the same sentences) as columns of a torch-formatted `datasets.Dataset`."""
    dataset = Dataset.from_dict({"texts": TEXTS, "texts_labels": TEXTS})
    dataset.set_format("torch")
    return {"texts": dataset["texts"], "texts_labels": dataset["texts_labels"]}


@pytest.mark.parametrize("inputs", ["tensor", "text"])
@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_iterative_step_from_tensor(kind, inputs, request, tmp_path):
    """TRL's `test_iterative_step_from_tensor[qwen|t5, tensor|text]`."""
    if kind == "causal":
        model = request.getfixturevalue("causal_model")
        tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue("causal_dir"))
        tokenizer.pad_token = tokenizer.eos_token
    else:
        model = request.getfixturevalue("seq2seq_model")
        tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue("seq2seq_dir"))
    given = tensor_columns(len(tokenizer)) if inputs == "tensor" else text_columns()
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
                             learning_rate=1e-3, report_to="none")
    trainer = IterativeSFTTrainer(model=model, args=args, processing_class=tokenizer)
    trainer.optimizer.zero_grad = partial(trainer.optimizer.zero_grad, set_to_none=False)

    trainer.step(**given)

    for name, param in trainer.model.named_parameters():
        assert param.grad is not None, name
        assert torch.count_nonzero(param.grad) == 0, f"{name}: gradient left pending after the step"
