"""`evaluate()` follows the same extension points as `step()`: the user's collator and `compute_loss`.

`eval_loss` is the mean over every label token of the eval set. With a `data_collator` the labels are
the collator's (a completion-only collator: answers only), so training and evaluation measure the same
thing; with a `compute_loss` override the loss is the override's, called with the eval set's label-token
count as `num_items_in_batch`. Each expected value is computed sample by sample, by hand.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from itersft import IterativeSFTConfig, IterativeSFTTrainer

IGNORE_INDEX = -100
MARKER = "=>"
TEXTS = ["12+34=>46", "7*8=>56 and more", "what is 100-1=>99", "two=>2"]


def config(tmp_path, **overrides) -> IterativeSFTConfig:
    values = dict(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=3)
    values.update(overrides)
    return IterativeSFTConfig(**values)


def text_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])


def answer_labels(tokenizer, ids: torch.Tensor, text: str) -> torch.Tensor:
    """-100 up to and including the marker, the ids after it."""
    prompt = len(tokenizer(text[: text.index(MARKER) + len(MARKER)])["input_ids"])
    return torch.cat([torch.full((prompt,), IGNORE_INDEX), ids[prompt:]])


class AnswerOnlyCollator:
    """Pads and keeps loss only after the marker; records whether it was handed labels."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.keys: set[str] = set()

    def __call__(self, features):
        for feature in features:
            self.keys |= set(feature)
        width = max(f["input_ids"].size(0) for f in features)
        pad = self.tokenizer.pad_token_id
        ids = torch.stack([F.pad(f["input_ids"], (0, width - f["input_ids"].size(0)), value=pad) for f in features])
        mask = torch.stack([F.pad(f["attention_mask"], (0, width - f["attention_mask"].size(0))) for f in features])
        labels = torch.full_like(ids, IGNORE_INDEX)
        marker = torch.tensor(self.tokenizer(MARKER, add_special_tokens=False)["input_ids"])
        for row, feature in enumerate(features):
            tokens = feature["input_ids"]
            found = (tokens.unfold(0, marker.size(0), 1) == marker).all(dim=1).nonzero()
            if len(found):
                answer = int(found[0]) + marker.size(0)
                labels[row, answer : tokens.size(0)] = tokens[answer:]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def mean_loss(model, samples: list[tuple[torch.Tensor, torch.Tensor]], weights=None) -> float:
    """Token-mean cross-entropy over the samples' labels, each sample alone (no padding)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, labels in samples:
            logits = model(input_ids=ids[None]).logits[0, :-1].float()
            losses = F.cross_entropy(logits, labels[1:], ignore_index=IGNORE_INDEX, reduction="none")
            if weights is not None:
                losses = losses * weights(labels[1:])
            total += losses.sum().item()
            count += int((labels[1:] != IGNORE_INDEX).sum())
    return total / count


def test_eval_loss_follows_the_collators_labels(causal_model, tokenizer, tmp_path):
    """A text eval set with a completion-only collator: the loss is over the answer tokens only, and the
    collator gets the rows as `step()` hands texts (no `labels`)."""
    collator = AnswerOnlyCollator(tokenizer)
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, data_collator=collator,
                                  eval_dataset=Dataset.from_dict({"text": TEXTS}))

    metrics = trainer.evaluate()

    samples = [(ids, answer_labels(tokenizer, ids, text)) for ids, text in ((text_ids(tokenizer, t), t) for t in TEXTS)]
    assert collator.keys == {"input_ids", "attention_mask"}
    assert metrics["eval_loss"] == pytest.approx(mean_loss(causal_model, samples), rel=1e-5)
    everything = mean_loss(causal_model, [(ids, ids) for ids, _ in samples])
    assert metrics["eval_loss"] != pytest.approx(everything, rel=1e-3)  # the prompts really were left out


def test_language_modeling_collator_evaluates_a_text_dataset(causal_model, causal_dir, tmp_path):
    """`DataCollatorForLanguageModeling` on a text eval set (it would fail on ragged `labels` lists): it
    runs through both the loss and transformers' prediction loop, and with pad = EOS its labels drop EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    tokenizer.pad_token = tokenizer.eos_token
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                                  eval_dataset=Dataset.from_dict({"text": TEXTS}),
                                  compute_metrics=lambda prediction: {"rows": len(prediction.label_ids)})

    metrics = trainer.evaluate()

    samples = [(ids, ids.masked_fill(ids == tokenizer.eos_token_id, IGNORE_INDEX))
               for ids in (text_ids(tokenizer, t) for t in TEXTS)]
    assert metrics["eval_loss"] == pytest.approx(mean_loss(causal_model, samples), rel=1e-5)
    assert metrics["eval_rows"] == len(TEXTS)


class DoubledDigits(IterativeSFTTrainer):
    """Digit labels weigh 2; the weighted token sum divided by `num_items_in_batch`."""

    digits: torch.Tensor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        targets = inputs["labels"][:, 1:]
        losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")
        weights = torch.where(torch.isin(targets, self.digits), 2.0, 1.0)
        return (losses * weights).sum() / num_items_in_batch


def test_eval_loss_follows_a_compute_loss_override(causal_model, tokenizer, tmp_path):
    """The override's weighted loss over the whole eval set (batches of 3 and 1): the eval set is one window."""
    trainer = DoubledDigits(causal_model, config(tmp_path), tokenizer=tokenizer,
                            eval_dataset=Dataset.from_dict({"text": TEXTS}))
    digits = torch.tensor([tokenizer(str(d), add_special_tokens=False)["input_ids"][0] for d in range(10)])
    trainer.digits = digits

    metrics = trainer.evaluate()

    samples = [(ids, ids) for ids in (text_ids(tokenizer, t) for t in TEXTS)]
    expected = mean_loss(causal_model, samples,
                         weights=lambda labels: torch.where(torch.isin(labels, digits), 2.0, 1.0))
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(mean_loss(causal_model, samples), rel=1e-3)
