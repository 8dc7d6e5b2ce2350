"""`data_collator=` builds every micro-batch of `step()`, and the loss follows the labels it returns.

The contract these tests pin down (TRL's):

* the collator is called once per micro-batch, on a list of per-sample feature dicts holding
  `input_ids` and `attention_mask` as 1-D `torch.long` tensors, plus `labels` when the samples carry
  labels of their own (given `labels`, `prompts`/`completions`, `messages`, seq2seq targets); where
  `step()` was given `torch.long` CPU tensors and truncation left a sample whole, they are the caller's
  very tensors. Plain causal `input_ids` or `texts` carry no labels, so collators that make labels
  (language modelling, completion-only) get what a dataset of texts would hand them;
* transformers' collators, a completion-only collator and collators built on tensor operations
  (`size`, `torch.stack`, a left-padding `pad` helper, TRL's own included) all work;
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
import torch.nn.functional as F
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

    What TRL users wrote (or took from TRL 0.x's `DataCollatorForCompletionOnlyLM`) to train on answers,
    on the tensors TRL handed it.
    """

    def __init__(self, tokenizer, marker: str):
        self.pad_token_id = tokenizer.pad_token_id
        self.marker = torch.tensor(tokenizer(marker, add_special_tokens=False)["input_ids"])
        self.calls: list[list[dict]] = []

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        self.calls.append(features)
        width = max(f["input_ids"].size(0) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX)
        for row, feature in enumerate(features):
            ids = feature["input_ids"]
            input_ids[row, : ids.size(0)] = ids
            attention_mask[row, : ids.size(0)] = feature["attention_mask"]
            found = (ids.unfold(0, self.marker.size(0), 1) == self.marker).all(dim=1).nonzero()
            if len(found):
                answer = int(found[0]) + self.marker.size(0)
                labels[row, answer : ids.size(0)] = ids[answer:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def left_pad(tensors: list[torch.Tensor], value: int) -> torch.Tensor:
    """A left-padding helper of the kind TRL-era collators carry: rows aligned on the right."""
    width = max(t.size(0) for t in tensors)
    return torch.stack([torch.cat([t.new_full((width - t.size(0),), value), t]) for t in tensors])


def text_ids(tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])


def assert_features_are_long_tensors(calls: list[list[dict]], keys: set[str]) -> None:
    """Each call got per-sample dicts with exactly `keys`, each value a 1-D `torch.long` tensor on the CPU."""
    for features in calls:
        for feature in features:
            assert set(feature) == keys
            for value in feature.values():
                assert isinstance(value, torch.Tensor), type(value)
                assert value.dim() == 1 and value.dtype == torch.long and value.device.type == "cpu", value


def seen_samples(calls: list[list[dict]]) -> list[list[int]]:
    return sorted(feature["input_ids"].tolist() for features in calls for feature in features)


def qa_samples(tokenizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`step(prompts=..., completions=...)`'s samples for `QA`, by hand: ids, and labels with the prompt masked."""
    ids, labels = [], []
    for prompt, completion in QA:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(torch.tensor(prompt_ids + completion_ids))
        labels.append(torch.tensor([IGNORE_INDEX] * len(prompt_ids) + completion_ids))
    return ids, labels


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
    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask"})
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
    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask"})
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

    ids, labels = qa_samples(tokenizer)
    assert [len(features) for features in collator.calls] == [2, 2]
    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask", "labels"})
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
    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask", "labels"})
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
    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask"})
    assert stats["trained_tokens"] == causal_label_count(input_ids)
    loss, grads = causal_reference(causal_model, recorder.params[0], input_ids, input_ids)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_plain_function_collator(causal_model, tokenizer, tmp_path):
    """A plain function as `data_collator` (a pipeline's own `collate_fn`, on tensors: `size`, `F.pad`,
    `torch.stack`): it pads and keeps no loss on spaces. Its labels are the ones learned."""
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    calls = []

    def collate_without_spaces(features):
        calls.append(features)
        width = max(f["input_ids"].size(0) for f in features)
        pad = tokenizer.pad_token_id
        input_ids = torch.stack([F.pad(f["input_ids"], (0, width - f["input_ids"].size(0)), value=pad)
                                 for f in features])
        attention_mask = torch.stack([F.pad(f["attention_mask"], (0, width - f["attention_mask"].size(0)))
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
    assert_features_are_long_tensors(calls, {"input_ids", "attention_mask"})
    assert stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(causal_model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


# ---- TRL's contract: the caller's own tensors, and collators built on tensor operations -----------


def test_collator_gets_the_callers_own_tensors(causal_model, tokenizer, tmp_path):
    """Given `torch.long` CPU tensors, the collator gets the very tensor objects of every sample that
    truncation left whole; a truncated sample, labels under attention mask 0 and a narrower dtype arrive
    as tensors equal to what `step()` trains on, and the caller's own tensors are left as they were."""
    collator = Recording(DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX))
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, max_length=6, per_device_train_batch_size=4,
                                                       gradient_accumulation_steps=1, batching="padded",
                                                       shuffle_samples=False),
                                  tokenizer=tokenizer, data_collator=collator)
    ids = [torch.tensor([10, 11, 12]), torch.arange(20, 28), torch.tensor([30, 31, 32, 33]),
           torch.tensor([40, 41], dtype=torch.int32)]
    masks = [torch.ones(3, dtype=torch.long), torch.ones(8, dtype=torch.long), torch.tensor([1, 1, 1, 0]),
             torch.ones(2, dtype=torch.long)]
    labels = [torch.tensor([IGNORE_INDEX, 11, 12]), torch.arange(20, 28), torch.tensor([30, 31, 32, 33]),
              torch.tensor([40, 41])]

    trainer.step(input_ids=ids, attention_mask=masks, labels=labels)

    assert_features_are_long_tensors(collator.calls, {"input_ids", "attention_mask", "labels"})
    whole, cut, with_padding, narrow = collator.calls[0]
    assert whole["input_ids"] is ids[0] and whole["attention_mask"] is masks[0] and whole["labels"] is labels[0]
    assert torch.equal(cut["input_ids"], ids[1][-6:]) and torch.equal(cut["labels"], labels[1][-6:])  # keep_end
    assert with_padding["input_ids"] is ids[2] and with_padding["attention_mask"] is masks[2]
    assert torch.equal(with_padding["labels"], torch.tensor([30, 31, 32, IGNORE_INDEX]))
    assert torch.equal(labels[2], torch.tensor([30, 31, 32, 33]))  # the caller's labels are untouched
    assert torch.equal(narrow["input_ids"], ids[3].long()) and narrow["labels"] is labels[3]


def step_matches_reference(trainer, recorder, model, reference: tuple[list, list], **step_inputs) -> None:
    """One `step()` makes one update whose loss and gradient are the token mean over the `reference`
    samples' `(ids, labels)`."""
    ids, labels = reference
    stats = trainer.step(**step_inputs)
    assert stats["updates"] == 1 and stats["trained_tokens"] == causal_label_count(labels)
    loss, grads = causal_reference(model, recorder.params[0], ids, labels)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5)
    assert_same_gradients(recorder.grads[0], grads)


def test_collator_on_tensor_operations_with_left_padding(causal_model, tokenizer, tmp_path):
    """A TRL-era collator on the features' tensors (`size`, `torch.stack`, a left-padding helper): rows are
    aligned on the right, and the update is still the token mean of the window (rotary positions shift
    with the padding, by the same amount for every token of a row, which attention does not see)."""
    calls = []

    def collate_left_padded(features):
        calls.append(features)
        return {"input_ids": left_pad([f["input_ids"] for f in features], tokenizer.pad_token_id),
                "attention_mask": left_pad([f["attention_mask"] for f in features], 0),
                "labels": left_pad([f["labels"] for f in features], IGNORE_INDEX)}

    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=collate_left_padded, callbacks=[recorder])
    ids, labels = qa_samples(tokenizer)

    step_matches_reference(trainer, recorder, causal_model, (ids, labels),
                           prompts=[q for q, _ in QA], completions=[a for _, a in QA])
    assert [len(features) for features in calls] == [2, 2]


def test_trl_pad_helper_in_a_collator(causal_model, tokenizer, tmp_path):
    """TRL's own `pad` helper (`trl.trainer.utils.pad`, as installed), left padding, on `step(input_ids=...,
    labels=...)` with masked prompts: the collator stacks the caller's tensors and the update is exact."""
    from trl.trainer.utils import pad

    def collate_with_trl_pad(features):
        return {key: pad([f[key] for f in features], value, padding_side="left")
                for key, value in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0),
                                   ("labels", IGNORE_INDEX))}

    recorder = UpdateRecorder()
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path), tokenizer=tokenizer,
                                  data_collator=collate_with_trl_pad, callbacks=[recorder])
    generator = torch.Generator().manual_seed(4)
    ids = [torch.randint(4, len(tokenizer), (n,), generator=generator) for n in (5, 12, 3, 9)]
    # Every sample starts with a masked prompt: left-padded, a sample's first label would be predicted from
    # the padding before it (as with any left-padding collator), which a sample alone never does.
    labels = [torch.where(torch.arange(len(x)) < prompt, IGNORE_INDEX, x) for x, prompt in zip(ids, (2, 6, 1, 4))]

    step_matches_reference(trainer, recorder, causal_model, (ids, labels), input_ids=ids, labels=labels)


# ---- order: sorting within a window, none when asked ---------------------------------------------


def test_collator_sees_the_given_order_when_unsorted_and_unshuffled(causal_model, tokenizer, tmp_path):
    """`batching="padded"` and `shuffle_samples=False`: micro-batches are the samples in the given order,
    cut by `per_device_train_batch_size`, each sample exactly once."""
    collator = Recording(DataCollatorWithPadding(tokenizer))
    trainer = IterativeSFTTrainer(causal_model, config(tmp_path, batching="padded", shuffle_samples=False),
                                  tokenizer=tokenizer, data_collator=collator)
    input_ids = [torch.tensor([10 + k] * n) for k, n in enumerate((3, 8, 2, 6, 5))]

    stats = trainer.step(input_ids=input_ids)

    order = [[f["input_ids"] for f in call] for call in collator.calls]
    assert [[len(t) for t in call] for call in order] == [[3, 8], [2, 6], [5]]
    assert all(t is input_ids[k] for k, t in enumerate(t for call in order for t in call))  # the caller's own
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
