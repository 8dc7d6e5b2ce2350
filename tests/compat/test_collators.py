"""`data_collator=` builds every micro-batch of `step()`, and the loss follows the labels it returns.

The contract these tests pin down:

* the collator is called once per micro-batch, on a list of per-sample feature dicts holding
  `input_ids` and `attention_mask` as lists of ints, plus `labels` when the samples carry labels of
  their own (given `labels`, `prompts`/`completions`, `messages`, seq2seq targets); plain causal
  `input_ids` or `texts` carry none, so collators that make labels (language modelling,
  completion-only) get what a dataset of texts would hand them;
* the loss is over the labels the collator returned (-100 = no loss) and is the mean over every label
  token of the accumulation window, counted on the collator's output;
* a collator that returns no `labels` for samples that carry none (`DataCollatorWithPadding`) gets the
  rule of `step()` without labels: every real token (attention mask 1) is learned.

Each test checks the collator's calls and the update's gradient against a hand-written reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
)

from itersft import IterativeSFTConfig, IterativeSFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gradient_reference import (  # noqa: E402
    IGNORE_INDEX,
    UpdateRecorder,
    assert_same_gradients,
    causal_label_count,
    causal_loss_sum,
    expected_update,
    seq2seq_loss_sum,
)

MARKER = "### Answer:"
QA = [("Q: 12+34=\n", " 46"), ("Q: 7*8=\n", " 56"), ("Q: what is 100 - 1?\n", " 99, it is 99"), ("Q: 2+2=\n", " 4")]


def config(tmp_path, **overrides) -> IterativeSFTConfig:
    values = dict(output_dir=str(tmp_path), report_to="none", learning_rate=1e-2, max_grad_norm=0.0,
                  per_device_train_batch_size=2, gradient_accumulation_steps=2)
    values.update(overrides)
    return IterativeSFTConfig(**values)


class Recording:
    """Wraps a collator and keeps the features of every call."""

    def __init__(self, collator):
        self.collator = collator
        self.calls: list[list[dict]] = []

    def __call__(self, features):
        self.calls.append(features)
        return self.collator(features)


class CompletionOnlyCollator:
    """Right-pads a micro-batch; loss only on the tokens after the response marker (prompt set to -100).

    What TRL users wrote (or took from TRL 0.x's `DataCollatorForCompletionOnlyLM`) to train on answers.
    """

    def __init__(self, tokenizer, marker: str):
        self.pad_token_id = tokenizer.pad_token_id
        self.marker = tokenizer(marker, add_special_tokens=False)["input_ids"]
        self.calls: list[list[dict]] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        self.calls.append(features)
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX)
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            for start in range(len(ids) - len(self.marker) + 1):
                if ids[start : start + len(self.marker)] == self.marker:
                    answer = start + len(self.marker)
                    labels[row, answer : len(ids)] = torch.tensor(ids[answer:])
                    break
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def text_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])


def assert_features_are_lists_of_ints(calls: list[list[dict]], keys: set[str]) -> None:
    """Each call got per-sample dicts with exactly `keys`, each value a list of Python ints."""
    for features in calls:
        for feature in features:
            assert set(feature) == keys
            for value in feature.values():
                assert isinstance(value, list) and all(type(token) is int for token in value), value


def seen_samples(calls: list[list[dict]]) -> list[list[int]]:
    return sorted(feature["input_ids"] for features in calls for feature in features)


def causal_reference(model, params, input_ids, labels):
    losses = [lambda m, i=i, lab=lab: causal_loss_sum(m, i, lab) for i, lab in zip(input_ids, labels)]
    return expected_update(model, params, losses, causal_label_count(labels))


# ---- a completion-only collator -----------------------------------------------------------------


@pytest.mark.parametrize("adapter", [False, True], ids=["full", "lora"])
def test_completion_only_collator_trains_on_answers_only(adapter, causal_model, tokenizer, tmp_path):
    """Four texts with a response marker, batch 2, accumulation 2 (one window): the gradient is the mean
    over the answer tokens of all four (prompt and marker masked by the collator), also on a LoRA adapter
    (a critic trained on answers, as published scripts do)."""
    model = causal_model
    if adapter:
        model = get_peft_model(causal_model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                        init_lora_weights=False))
    collator = CompletionOnlyCollator(tokenizer, MARKER)
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(model, config(tmp_path), tokenizer=tokenizer, data_collator=collator,
                                  callbacks=[recorder])
    texts = [question + MARKER + answer for question, answer in QA]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, text) for text in texts]
    labels = []
    for sample, (question, _) in zip(ids, QA):
        prompt = len(tokenizer(question + MARKER)["input_ids"])
        labels.append(torch.cat([torch.full((prompt,), IGNORE_INDEX), sample[prompt:]]))
    assert [len(features) for features in collator.calls] == [2, 2]
    assert_features_are_lists_of_ints(collator.calls, {"input_ids", "attention_mask"})
    assert seen_samples(collator.calls) == sorted(i.tolist() for i in ids)
    assert stats["updates"] == 1
    assert stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


# ---- transformers' collators --------------------------------------------------------------------


def test_language_modeling_collator_labels_are_followed(causal_model, causal_dir, tmp_path):
    """`DataCollatorForLanguageModeling(mlm=False)` with pad = EOS sets every EOS label to -100: the user
    chose that collator, so the EOS tokens are not learned (the loss follows the collator's labels)."""
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    tokenizer.pad_token = tokenizer.eos_token
    collator = Recording(DataCollatorForLanguageModeling(tokenizer, mlm=False))
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, per_device_train_batch_size=3),
                                  tokenizer=tokenizer, data_collator=collator, callbacks=[recorder])
    texts = ["hello there", "a b c d e f g", "xyz"]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, text) for text in texts]
    labels = [i.masked_fill(i == tokenizer.eos_token_id, IGNORE_INDEX) for i in ids]
    assert [len(features) for features in collator.calls] == [3]
    assert_features_are_lists_of_ints(collator.calls, {"input_ids", "attention_mask"})
    assert stats["updates"] == 1 and stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(causal_model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_seq2seq_collator_on_causal_prompts_and_completions(causal_model, tokenizer, tmp_path):
    """`DataCollatorForSeq2Seq` (pads labels with -100) on prompt/completion pairs: the samples carry their
    masked-prompt labels, the collator pads them, and only completion tokens are learned."""
    collator = Recording(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX))
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, data_collator=collator,
                                  callbacks=[recorder])
    prompts, completions = [q for q, _ in QA], [a for _, a in QA]

    stats = trainer.step(prompts=prompts, completions=completions)

    ids, labels = [], []
    for prompt, completion in QA:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(torch.tensor(prompt_ids + completion_ids))
        labels.append(torch.tensor([IGNORE_INDEX] * len(prompt_ids) + completion_ids))
    assert [len(features) for features in collator.calls] == [2, 2]
    assert_features_are_lists_of_ints(collator.calls, {"input_ids", "attention_mask", "labels"})
    assert stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(causal_model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_seq2seq_collator_with_model_on_seq2seq_texts(seq2seq_model, seq2seq_dir, tmp_path):
    """`DataCollatorForSeq2Seq(tokenizer, model=...)` for T5: it returns `decoder_input_ids` too; the
    gradient is the mean over every target token of the window."""
    tokenizer = AutoTokenizer.from_pretrained(seq2seq_dir)
    collator = Recording(DataCollatorForSeq2Seq(tokenizer, model=seq2seq_model, label_pad_token_id=IGNORE_INDEX))
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(seq2seq_model, config(tmp_path), tokenizer=tokenizer, data_collator=collator,
                                  callbacks=[recorder])
    sources = ["translate: cat", "translate: the big dog", "translate: a", "translate: two birds"]
    targets = ["chat", "le grand chien", "un", "deux oiseaux"]

    stats = trainer.step(texts=sources, texts_labels=targets)

    source_ids = [torch.tensor(tokenizer(s)["input_ids"]) for s in sources]  # sources get no EOS appended
    target_ids = [torch.tensor(tokenizer(text_target=t)["input_ids"] + [tokenizer.eos_token_id]) for t in targets]
    assert [len(features) for features in collator.calls] == [2, 2]
    assert_features_are_lists_of_ints(collator.calls, {"input_ids", "attention_mask", "labels"})
    assert stats["trained_tokens"] == sum(len(t) for t in target_ids)
    losses = [lambda m, s=s, t=t: seq2seq_loss_sum(m, s, t) for s, t in zip(source_ids, target_ids)]
    loss, grads = expected_update(seq2seq_model, recorder.params[0], losses, sum(len(t) for t in target_ids))
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_padding_collator_without_labels_learns_every_real_token(causal_model, tokenizer, tmp_path):
    """`DataCollatorWithPadding` returns no labels; the samples carried none either, so every real token
    (attention mask 1) is learned, as `step()` does without labels."""
    collator = Recording(DataCollatorWithPadding(tokenizer))
    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer, data_collator=collator,
                                  callbacks=[recorder])
    input_ids = [torch.tensor([10, 11, 12]), torch.tensor([20, 21, 22, 23, 24, 25, 26]), torch.tensor([30, 31]),
                 torch.tensor([40, 41, 42, 43])]

    stats = trainer.step(input_ids=input_ids, attention_mask=[torch.ones_like(i) for i in input_ids])

    assert [len(features) for features in collator.calls] == [2, 2]
    assert_features_are_lists_of_ints(collator.calls, {"input_ids", "attention_mask"})
    assert stats["trained_tokens"] == causal_label_count(input_ids)
    loss, grads = causal_reference(causal_model, recorder.params[0], input_ids, input_ids)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_plain_function_collator(causal_model, tokenizer, tmp_path):
    """A plain function as `data_collator` (a pipeline's own `collate_fn`): it pads and keeps no loss on
    spaces. Its labels are the ones learned."""
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    calls = []

    def collate_without_spaces(features):
        calls.append(features)
        width = max(len(f["input_ids"]) for f in features)
        rows = [f["input_ids"] + [tokenizer.pad_token_id] * (width - len(f["input_ids"])) for f in features]
        input_ids = torch.tensor(rows)
        attention_mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                       for f in features])
        labels = input_ids.masked_fill((attention_mask == 0) | (input_ids == space), IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=collate_without_spaces, callbacks=[recorder])
    texts = ["a b c", "the cat sat on the mat", "no-spaces", "x y"]

    stats = trainer.step(texts=texts)

    ids = [text_ids(tokenizer, text) for text in texts]
    labels = [i.masked_fill(i == space, IGNORE_INDEX) for i in ids]
    assert [len(features) for features in calls] == [2, 2]
    assert_features_are_lists_of_ints(calls, {"input_ids", "attention_mask"})
    assert stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(causal_model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


# ---- order: sorting within a window, none when asked ---------------------------------------------


def test_collator_sees_the_given_order_when_unsorted_and_unshuffled(causal_model, tokenizer, tmp_path):
    """`batching="padded"` and `shuffle_samples=False`: micro-batches are the samples in the given order,
    cut by `per_device_train_batch_size`, each sample exactly once."""
    collator = Recording(DataCollatorWithPadding(tokenizer))
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, batching="padded", shuffle_samples=False),
                                  tokenizer=tokenizer, data_collator=collator)
    input_ids = [torch.tensor([10 + k] * n) for k, n in enumerate((3, 8, 2, 6, 5))]

    stats = trainer.step(input_ids=input_ids)

    assert [[f["input_ids"] for f in call] for call in collator.calls] == [
        [input_ids[0].tolist(), input_ids[1].tolist()], [input_ids[2].tolist(), input_ids[3].tolist()],
        [input_ids[4].tolist()]]
    assert stats["updates"] == 2  # windows of two micro-batches, then one


def test_collator_with_sorting_keeps_each_window_and_its_samples(causal_model, tokenizer, tmp_path):
    """Default batching sorts by length within a window only: with `shuffle_samples=False` the first
    window holds the first four samples (longest first) and the second the fifth."""
    collator = Recording(DataCollatorWithPadding(tokenizer))
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, shuffle_samples=False), tokenizer=tokenizer,
                                  data_collator=collator)
    input_ids = [torch.tensor([10 + k] * n) for k, n in enumerate((3, 8, 2, 6, 5))]

    trainer.step(input_ids=input_ids)

    lengths = [[len(f["input_ids"]) for f in call] for call in collator.calls]
    assert lengths == [[8, 6], [3, 2], [5]]
