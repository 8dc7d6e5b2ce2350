"""The exported datasets train with TRL's own trainers, unchanged (TRL 1.16, the test extra): one step of
`SFTTrainer`, `DPOTrainer` and `KTOTrainer` on each format, from a loop run whose string prompts went in as
raw text (standard rows) and from one whose chat prompts went through the template (conversational rows).

Besides "it trained" (one optimizer step, weights moved), each test checks that TRL read the rows as
the loop drew them: conversational rows are detected as such, and the prompt TRL tokenized is the text
the model was sampled from (the chat template's rendering with the system prompt, or the raw prompt).
"""

from __future__ import annotations

import pytest
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer
from trl.data_utils import is_conversational

from itersft.export import ExportConfig, export_run

TRAINERS = {"sft": (SFTTrainer, SFTConfig), "dpo": (DPOTrainer, DPOConfig), "kto": (KTOTrainer, KTOConfig)}
MODELS = {"standard": "answering_dir", "chat": "chat_answering_dir"}


@pytest.mark.parametrize("kind", ["standard", "chat"])
@pytest.mark.parametrize("fmt", ["sft", "dpo", "kto"])
def test_an_exported_run_trains_one_step_with_trl(request, tmp_path, fmt, kind):
    run_dir = request.getfixturevalue(f"{kind}_run")
    model_dir = request.getfixturevalue(MODELS[kind])
    out = tmp_path / f"{fmt}.jsonl"
    summary = export_run(run_dir, out, ExportConfig(fmt))
    dataset = load_dataset("json", data_files=str(out), split="train")
    assert len(dataset) == summary.rows > 0
    assert is_conversational(dataset[0]) is (kind == "chat")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer_class, config_class = TRAINERS[fmt]
    args = config_class(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2,
                        learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True, logging_steps=1)
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)

    first = dataset[0]
    sampled_from = (tokenizer.apply_chat_template(first["prompt"], add_generation_prompt=True, tokenize=False)
                    if kind == "chat" else first["prompt"])
    prepared = trainer.train_dataset[0]
    if fmt == "sft":  # the loss is on the completion and its end of turn (EOS in the toy template) only
        prompt_ids = [t for t, label in zip(prepared["input_ids"], prepared["labels"]) if label == -100]
        completion = first["completion"][0]["content"] if kind == "chat" else first["completion"]
        assert tokenizer.decode([t for t in prepared["labels"] if t != -100]) == completion + tokenizer.eos_token
    else:
        prompt_ids = prepared["prompt_ids"]
    assert tokenizer.decode(prompt_ids) == sampled_from
    if kind == "chat":
        assert sampled_from.startswith("<|system|>Answer with one letter.</s><|user|>")

    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())
