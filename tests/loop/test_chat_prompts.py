"""Chat prompts in the loop, on the toy model (see `tests/conftest.py`).

Two templates: the toy tokenizer's own (`itersft.toy.CHAT_TEMPLATE`, turns closed by EOS), and a
ChatML-like one written here whose turns close with a special token other than EOS (`<unk>`, the toy
vocabulary's spare special token) followed by a newline, as ChatML's `<|im_end|>\\n`: with it, "stops
at the end of turn" and "the newline after it is not learned" are behaviours a test can catch.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.cli import run as run_command
from itersft.cli import run_config
from itersft.data.chat import end_of_turn_token_id
from itersft.filters import Threshold
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.prompts import PromptRenderer
from itersft.sampling.sampler import Sampler, SamplingConfig
from itersft.sampling.samples import Sample
from itersft.toy import build_tokenizer

CHATML_LIKE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<unk>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
END_OF_TURN = 3  # <unk> in the toy vocabulary
EOS = 2


def _chatml_tokenizer():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHATML_LIKE
    return tokenizer


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _always_one(prompts, completions, **_):
    return [1.0] * len(completions)


@pytest.fixture
def end_of_turn_later(causal_model):
    """While the model is in eval mode (sampling), its 3rd and later forward passes put nearly all
    probability on the end-of-turn token: every completion then ends after at most 2 tokens."""
    calls = {"eval": 0}

    def hook(module, inputs, output):
        if module.training:
            return output
        calls["eval"] += 1
        if calls["eval"] < 3:
            return output
        output = output.clone()
        output[..., END_OF_TURN] += 1e4
        return output

    handle = causal_model.get_output_embeddings().register_forward_hook(hook)
    yield calls
    handle.remove()


# ---- the template's end of turn, and the "auto" rule ----------------------------------------------


def test_end_of_turn_token_is_read_from_the_template():
    assert end_of_turn_token_id(build_tokenizer()) == EOS
    assert end_of_turn_token_id(_chatml_tokenizer()) == END_OF_TURN
    plain = build_tokenizer()
    plain.chat_template = None
    assert end_of_turn_token_id(plain) is None


def test_auto_applies_the_template_when_the_model_stops_at_its_end_of_turn(causal_model):
    # The toy template closes turns with EOS, which the model stops at: read as a chat model.
    toy = PromptRenderer(build_tokenizer(), causal_model, "auto")
    assert toy.strings_as_chat and toy.stop_token_ids == [EOS]
    # ChatML-like template closing on <unk>, which the model does not stop at: read as a base model.
    base_like = PromptRenderer(_chatml_tokenizer(), causal_model, "auto")
    assert not base_like.strings_as_chat and "not among the model's EOS ids" in base_like.reason
    assert base_like.stop_token_ids == [EOS, END_OF_TURN]  # a chat-message prompt still ends its turn there
    forced = PromptRenderer(_chatml_tokenizer(), causal_model, True)
    assert forced.strings_as_chat and forced.stop_token_ids == [EOS, END_OF_TURN]
    assert PromptRenderer(_chatml_tokenizer(), causal_model, False).stop_token_ids == [EOS]
    plain = build_tokenizer()
    plain.chat_template = None
    assert not PromptRenderer(plain, causal_model, "auto").strings_as_chat
    assert PromptRenderer(build_tokenizer(), causal_model, False).conversation("2+3?") is None


def test_encoder_decoder_models_never_get_the_template(seq2seq_model):
    renderer = PromptRenderer(build_tokenizer(), seq2seq_model, "auto")
    assert not renderer.strings_as_chat and renderer.reason == "auto: an encoder-decoder model"
    with pytest.raises(ValueError, match="the model is an encoder-decoder"):
        PromptRenderer(build_tokenizer(), seq2seq_model, True)
    with pytest.raises(ValueError, match="the model is an encoder-decoder"):
        renderer.encode([[{"role": "user", "content": "q"}]])


def test_prompts_are_rendered_with_the_generation_prompt_and_the_system_prompt(causal_model):
    renderer = PromptRenderer(_chatml_tokenizer(), causal_model, True, system_prompt="Be brief.")
    tokenizer = renderer.tokenizer
    own_system = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "4+4?"}]
    encoded = renderer.encode(["2+3?", [{"role": "user", "content": "4+4?"}], own_system])
    assert [tokenizer.decode(ids) for ids in encoded] == [
        "<|system|>\nBe brief.<unk>\n<|user|>\n2+3?<unk>\n<|assistant|>\n",
        "<|system|>\nBe brief.<unk>\n<|user|>\n4+4?<unk>\n<|assistant|>\n",
        "<|system|>\nMine.<unk>\n<|user|>\n4+4?<unk>\n<|assistant|>\n",  # a prompt's own system turn wins
    ]
    assert encoded[0] == _ids(tokenizer, "<|system|>\nBe brief.<unk>\n<|user|>\n2+3?<unk>\n<|assistant|>\n")
    assert renderer.conversation("2+3?") == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "2+3?"}]


# ---- sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["refill", "generate"])
def test_sampler_stops_at_the_end_of_turn_and_returns_the_assistant_content(causal_model, end_of_turn_later,
                                                                            backend):
    tokenizer = _chatml_tokenizer()
    config = SamplingConfig(num_samples=1, max_new_tokens=8, temperature=0.0, chat_template=True, backend=backend)
    (sample,) = Sampler(causal_model, tokenizer, config).sample(["2+3?"], round_index=0)

    prompt_ids = _ids(tokenizer, "<|user|>\n2+3?<unk>\n<|assistant|>\n")
    end_of_turn_later["eval"] = 0
    causal_model.eval()
    with torch.no_grad():
        reference = causal_model.generate(input_ids=torch.tensor([prompt_ids]), max_new_tokens=8, do_sample=False,
                                          eos_token_id=[EOS, END_OF_TURN], pad_token_id=0)[0, len(prompt_ids):]
    reference = reference.tolist()
    assert reference[-1] == END_OF_TURN and len(reference) <= 3
    assert sample.completion_ids == reference[:-1]
    assert sample.finished
    assert sample.completion == tokenizer.decode(reference[:-1])
    assert sample.prompt == "2+3?"
    assert sample.messages == [{"role": "user", "content": "2+3?"}]


@pytest.mark.parametrize("warps", [{}, {"temperature": 0.9, "top_p": 0.95}])
def test_both_backends_draw_the_same_chat_samples(causal_model, warps):
    """`refill` samples from the same rendered prompt ids as `generate` and stops at the same ids. EOS is
    made impossible and the end-of-turn token likely, so every finished sample ended at the end of turn;
    3 prompts in batches of 2 make `refill` admit a waiting prompt into a running batch. That `refill`
    stops there (rather than the completion being cut afterwards) shows in its decode rows: exactly one
    per token drawn after a sample's first."""
    tokenizer = _chatml_tokenizer()
    decode_rows, real_forward = [], causal_model.forward

    def counting_forward(*args, **kwargs):
        if kwargs["input_ids"].shape[1] == 1:
            decode_rows.append(kwargs["input_ids"].shape[0])
        return real_forward(*args, **kwargs)

    def hook(module, inputs, output):
        output = output.clone()
        output[..., END_OF_TURN] += 3.0
        output[..., EOS] -= 1e4
        return output

    prompts = ["2+3?", [{"role": "user", "content": "4+4?"}],
               [{"role": "system", "content": "Mine."}, {"role": "user", "content": "and a longer one, 10+20?"}]]
    drawn = {}
    handle = causal_model.get_output_embeddings().register_forward_hook(hook)
    try:
        for backend in ("generate", "refill"):
            config = SamplingConfig(num_samples=4, max_new_tokens=10, batch_size=2, chat_template=True,
                                    system_prompt="Be brief.", backend=backend, **warps)
            sampler = Sampler(causal_model, tokenizer, config)
            assert sampler.backend == backend and sampler.eos_token_ids == [EOS, END_OF_TURN]
            causal_model.forward = counting_forward if backend == "refill" else real_forward
            drawn[backend] = [(s.prompt_index, s.sample_index, s.completion, s.completion_ids, s.finished, s.messages)
                              for s in sampler.sample(prompts, round_index=0, prompt_indices=[7, 3, 5])]
    finally:
        handle.remove()
        del causal_model.forward  # the class's forward again
    assert drawn["refill"] == drawn["generate"]
    finished = [ids for _, _, _, ids, done, _ in drawn["refill"] if done]
    assert finished and all(len(ids) < 10 and END_OF_TURN not in ids for ids in finished)
    assert any(not done and len(ids) == 10 for _, _, _, ids, done, _ in drawn["refill"])
    assert sum(decode_rows) == sum(len(ids) + done - 1 for _, _, _, ids, done, _ in drawn["refill"])
    assert [m for *_, m in drawn["refill"][::4]] == [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "4+4?"}],
        prompts[2]]


# ---- training through the loop: loss on the assistant turn only -----------------------------------


class _GradientsBeforeUpdate(TrainerCallback):
    """Copies every parameter's gradient just before each optimizer update."""

    def __init__(self):
        self.updates = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.updates.append({name: p.grad.detach().clone() for name, p in model.named_parameters()})


def test_loop_learns_exactly_the_assistant_turn_and_its_end_of_turn_token(tmp_path, causal_dir, causal_model,
                                                                          end_of_turn_later):
    """One round, one optimizer update: its gradient equals a hand-written masked cross-entropy's."""
    tokenizer = _chatml_tokenizer()
    gradients = _GradientsBeforeUpdate()
    args = IterativeSFTConfig(output_dir=str(tmp_path / "trainer"), report_to="none", save_strategy="no",
                              per_device_train_batch_size=16, learning_rate=1e-3, max_grad_norm=0)  # no clipping
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer=tokenizer, callbacks=[gradients])
    sampling = SamplingConfig(num_samples=2, max_new_tokens=6, temperature=1.0, seed=0, chat_template=True,
                              system_prompt="Be brief.")
    labelled = [Sample(prompt="1+1?", completion="2", prompt_index=0, sample_index=0)]
    loop = ExpertIteration(trainer, sampling, _always_one, Threshold(1.0),
                           LoopConfig(output_dir=str(tmp_path / "run"), rounds=1, step_size=64, labelled_ratio=0.2),
                           labelled=labelled)
    history = loop.run(["2+3?", [{"role": "user", "content": "4+4?"}]])

    accepted = [json.loads(line) for line in (tmp_path / "run" / "accepted" / "round-0000.jsonl").read_text()
                .splitlines()]
    assert len(accepted) == 4 and all(a["finished"] for a in accepted)
    questions = ["2+3?", "2+3?", "4+4?", "4+4?"]
    assert [a["messages"] for a in accepted] == [[{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": q}] for q in questions]
    assert history[0]["train_samples"] == 5 and history[0]["train_updates"] == 1  # 4 sampled + 1 labelled
    assert len(gradients.updates) == 1

    # The reference: each conversation written out by hand; labels on the completion's tokens and the
    # end-of-turn token, not on the prompt nor on the newline the template writes after the turn.
    reference = AutoModelForCausalLM.from_pretrained(causal_dir)
    loss_sum, label_tokens = torch.zeros(()), 0
    for question, completion in [(q, a["completion"]) for q, a in zip(questions, accepted)] + [("1+1?", "2")]:
        prompt = _ids(tokenizer, f"<|system|>\nBe brief.<unk>\n<|user|>\n{question}<unk>\n<|assistant|>\n")
        answer = _ids(tokenizer, completion) + [END_OF_TURN]
        after = _ids(tokenizer, "\n")
        ids = torch.tensor([prompt + answer + after])
        labels = torch.tensor([[-100] * len(prompt) + answer + [-100] * len(after)])
        logits = reference(input_ids=ids).logits
        loss_sum = loss_sum + torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                                reduction="sum")
        label_tokens += len(answer)
    (loss_sum / label_tokens).backward()
    captured = gradients.updates[0]
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(captured[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---- the run config -------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_run_config_reads_a_messages_column_and_a_prompt_column(tmp_path):
    turns = [{"role": "user", "content": "2+3?"}]
    messages = _jsonl(tmp_path / "messages.jsonl", [{"messages": turns, "answer": "5"}])
    prompt = _jsonl(tmp_path / "prompt.jsonl", [{"prompt": "2+3?", "answer": "5"}, {"prompt": turns, "answer": "5"}])
    assert run_config.read_prompts("prompts", {"path": str(messages)}) == ([turns], [{"answer": "5"}])
    assert run_config.read_prompts("prompts", {"path": str(prompt)}) == (["2+3?", turns], [{"answer": "5"}] * 2)
    custom = _jsonl(tmp_path / "custom.jsonl", [{"question": "2+3?", "messages": turns}])
    assert run_config.read_prompts("prompts", {"path": str(custom), "prompt_field": "question"})[0] == ["2+3?"]
    labelled = _jsonl(tmp_path / "labelled.jsonl", [{"messages": turns, "completion": "5"}])
    (sample,) = run_config.read_labelled({"path": str(labelled)})
    assert (sample.prompt, sample.completion, sample.messages) == (turns, "5", None)
    sampling = run_config.build_sampling({"sampling": {"chat_template": True, "system_prompt": "Be brief."}})
    assert (sampling.chat_template, sampling.system_prompt) == (True, "Be brief.")


@pytest.fixture(scope="module")
def chat_answering_dir(fine_tuned_copy):
    """The toy model after 20 updates on chat turns (system "Be brief.", user "q<i>") answered "x" (toy
    template: turns closed by EOS), so that chat-formatted samples finish, mostly right."""
    conversations = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                      {"role": "assistant", "content": "x"}] for i in range(8)]
    return fine_tuned_copy("chat_answering", 5e-2, 20, messages=conversations)


def test_itersft_run_samples_and_trains_chat_prompts(tmp_path, chat_answering_dir):
    """`itersft run` with a messages column, a prompt column, `chat_template: true` and a system prompt."""
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"}], "answer": "x"}
                                                  for i in range(8)])
    eval_prompts = _jsonl(tmp_path / "eval.jsonl", [{"prompt": f"q{i}", "answer": "x"} for i in range(4)])
    config = {"model": str(chat_answering_dir), "output_dir": str(tmp_path / "run"), "prompts": {"path": str(prompts)},
              "eval_prompts": {"path": str(eval_prompts)}, "scorer": "exact_match",
              "sampling": {"num_samples": 2, "max_new_tokens": 4, "chat_template": True, "system_prompt": "Be brief."},
              "loop": {"rounds": 1}, "training": {"learning_rate": 1e-3}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=None, model=None)) == 0
    accepted = [json.loads(line) for line in (tmp_path / "run" / "accepted" / "round-0000.jsonl").read_text()
                .splitlines()]
    assert accepted, "the chat-trained model should answer some prompts right"
    for sample in accepted:
        question = sample["prompt"][0]["content"]
        assert sample["messages"] == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": question}]
        assert sample["completion"] == "x"
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["eval_accuracy"] == 1.0 and metrics["train_samples"] == len(accepted)
    assert metrics["samples_kept"] > 0 and metrics["train_updates"] > 0


# ---- bad input: one clear error, before any model loads -------------------------------------------


def _run_without_a_model(tmp_path, rows, sampling=None, tokenizer_dir=None):
    """`itersft run` whose `model` is a folder with a config but no weights: it passes the check on the model's
    path, which comes first, but an error about loading it would mean a model load was tried."""
    rows = [{**row, "answer": "a"} for row in rows]  # exact_match's reference: the scorer's check passes
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text("{}")
    config = {"model": str(tmp_path / "no-weights"), "output_dir": str(tmp_path / "run"),
              "prompts": {"path": str(_jsonl(tmp_path / "prompts.jsonl", rows))}, "scorer": "exact_match",
              "sampling": sampling or {}}
    if tokenizer_dir is not None:
        config["tokenizer"] = str(tokenizer_dir)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=None, model=None))


def test_run_refuses_an_unknown_role_and_a_prompt_without_user_turn(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "fine"}]},
            {"messages": [{"role": "bot", "content": "hi"}, {"role": "user", "content": "q"}]},
            {"messages": [{"role": "system", "content": "Be brief."}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(ValueError) as error:
        _run_without_a_model(tmp_path, rows)
    message = str(error.value)
    assert "`prompts[1]`: turn 0 has unknown role 'bot'" in message
    assert "`prompts[2]` has no user turn" in message
    assert "`prompts[3]` ends with a turn of role 'assistant'" in message
    assert "prompts[0]" not in message


@pytest.fixture
def templateless_tokenizer_dir(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


@pytest.mark.parametrize("rows,sampling,expected", [
    ([{"prompt": "q"}], {"chat_template": True}, "`chat_template` is true, but the tokenizer has no chat template"),
    ([{"messages": [{"role": "user", "content": "q"}]}], {}, "1 prompt(s) are chat messages, but the tokenizer"),
    ([{"prompt": "q"}], {"system_prompt": "Be brief."}, "`system_prompt` is set, but the tokenizer has no chat"),
])
def test_run_refuses_a_chat_format_the_tokenizer_lacks(tmp_path, templateless_tokenizer_dir, rows, sampling, expected):
    with pytest.raises(ValueError, match="Invalid prompt format") as error:
        _run_without_a_model(tmp_path, rows, sampling, tokenizer_dir=templateless_tokenizer_dir)
    assert expected in str(error.value)


def test_run_refuses_messages_with_the_template_turned_off(tmp_path, causal_dir):
    rows = [{"messages": [{"role": "user", "content": "q"}]}]
    with pytest.raises(ValueError, match="chat messages but `chat_template` is false"):
        _run_without_a_model(tmp_path, rows, {"chat_template": False}, tokenizer_dir=causal_dir)


def test_python_api_refuses_bad_settings_and_prompts_before_sampling(tmp_path, causal_model, tokenizer):
    with pytest.raises(ValueError, match="`chat_template` must be true, false or 'auto', got 'yes'"):
        SamplingConfig(chat_template="yes")
    with pytest.raises(ValueError, match="`chat_template` must be true, false or 'auto', got 1"):
        SamplingConfig(chat_template=1)
    with pytest.raises(ValueError, match="`system_prompt` must be None or a non-empty string"):
        SamplingConfig(system_prompt="")
    with pytest.raises(ValueError, match="`system_prompt` is set but plain string prompts go in as raw text"):
        Sampler(causal_model, tokenizer, SamplingConfig(chat_template=False, system_prompt="Be brief."))
    args = IterativeSFTConfig(output_dir=str(tmp_path / "trainer"), report_to="none", save_strategy="no")
    trainer = IterativeSFTTrainer(causal_model, args, tokenizer=tokenizer)
    loop = ExpertIteration(trainer, SamplingConfig(), _always_one, Threshold(1.0),
                           LoopConfig(output_dir=str(tmp_path / "run"), rounds=1))
    with pytest.raises(ValueError, match=r"`eval_prompts\[0\]` has no user turn"):
        loop.run(["fine"], eval_prompts=[[{"role": "system", "content": "s"}]])
    assert not list((tmp_path / "run" / "rounds").iterdir())
