"""Tests for `itersft.sampling.sampler`: ordering, per-sample reproducibility, EOS/stop handling, model state.

Tests that do not name a backend run the default (`auto`, which is `refill` for the causal toy model and
`generate` for the seq2seq one); tests of reproducibility and model state run each backend, and
`test_backends_draw_the_same_samples` checks that both draw the same samples.

The toy models (see `tests/conftest.py`) have random weights, so sampled completions are near-uniform
random bytes: two different draws of 8 tokens essentially never coincide, which makes "different seed
-> different samples" a test that can fail. Where EOS matters, a forward hook on the LM head raises the
EOS logit so that some rows finish early and others run to `max_new_tokens` in the same batch.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from itersft.distributed import Ranks
from itersft.sampling.generate_backend import _RowwiseSampler
from itersft.sampling.sampler import Sampler, SamplingConfig, sample_seed, warp_scores
from itersft.toy import build_causal_lm, build_tokenizer

PROMPTS = ["hello", "a much longer prompt than the others", "x", "medium prompt", "hi there"]
BACKENDS = ["refill", "generate"]


def _draw(model, tokenizer, prompts, round_index=0, **config):
    config.setdefault("num_samples", 3)
    config.setdefault("max_new_tokens", 8)
    config.setdefault("chat_template", False)  # the toy tokenizer has a chat template; these prompts are raw text
    return Sampler(model, tokenizer, SamplingConfig(**config)).sample(prompts, round_index)


def _key(samples):
    return [(s.prompt_index, s.sample_index, s.completion, s.completion_ids, s.finished) for s in samples]


@pytest.fixture
def eos_boost():
    """Returns a function that adds `bonus` to the EOS logit of a model's LM head (a forward hook)."""
    handles = []

    def boost(model, eos_id, bonus=3.0):
        def hook(module, inputs, output):
            output = output.clone()
            output[..., eos_id] += bonus
            return output

        handles.append(model.get_output_embeddings().register_forward_hook(hook))

    yield boost
    for handle in handles:
        handle.remove()


def test_counts_ordering_and_meta(causal_model, tokenizer):
    meta = [{"answer": i} for i in range(3)]
    sampler = Sampler(causal_model, tokenizer, SamplingConfig(num_samples=2, max_new_tokens=4, batch_size=2,
                                                                  chat_template=False))
    samples = sampler.sample(PROMPTS[:3], round_index=0, meta=meta, prompt_indices=[10, 11, 12])
    expected = [(p, j) for p in (10, 11, 12) for j in (0, 1)]
    assert [(s.prompt_index, s.sample_index) for s in samples] == expected
    assert [s.prompt for s in samples] == [p for p in PROMPTS[:3] for _ in range(2)]
    assert [s.meta for s in samples] == [m for m in meta for _ in range(2)]
    samples[0].meta["answer"] = "changed"
    assert samples[1].meta == {"answer": 0} and meta[0] == {"answer": 0}
    assert all(len(s.completion_ids) == 4 for s in samples)
    assert all(s.completion == tokenizer.decode(s.completion_ids) for s in samples)
    assert sampler.sample([], round_index=0) == []


def test_same_seed_and_round_reproduce_other_round_or_seed_differ(causal_model, tokenizer):
    first = _draw(causal_model, tokenizer, PROMPTS, round_index=1)
    again = _draw(causal_model, tokenizer, PROMPTS, round_index=1)
    assert _key(first) == _key(again)
    # Samples within a prompt differ from each other too: each has its own generator.
    assert len({s.completion for s in first}) == len(first)
    other_round = _draw(causal_model, tokenizer, PROMPTS, round_index=2)
    other_seed = _draw(causal_model, tokenizer, PROMPTS, round_index=1, seed=1)
    for other in (other_round, other_seed):
        assert all(a.completion_ids != b.completion_ids for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_do_not_depend_on_batching_order_or_company(causal_model, tokenizer, eos_boost, backend):
    eos_boost(causal_model, tokenizer.eos_token_id)
    reference = _draw(causal_model, tokenizer, PROMPTS, batch_size=8, backend=backend)
    assert any(s.finished for s in reference) and any(not s.finished for s in reference)
    assert _key(_draw(causal_model, tokenizer, PROMPTS, batch_size=1, backend=backend)) == _key(reference)
    assert _key(_draw(causal_model, tokenizer, PROMPTS, batch_size=2, backend=backend)) == _key(reference)
    sampler = Sampler(causal_model, tokenizer, SamplingConfig(num_samples=3, max_new_tokens=8, backend=backend,
                                                              chat_template=False))
    # Each prompt alone, at its index via `prompt_indices`, in reverse order: the same samples.
    alone = [s for i in reversed(range(len(PROMPTS)))
             for s in sampler.sample([PROMPTS[i]], 0, prompt_indices=[i])]
    assert sorted(_key(alone)) == _key(reference)
    # Two ranks, each sampling an interleaved share of the prompts at their indices: the same samples.
    split = (sampler.sample(PROMPTS[0::2], 0, prompt_indices=list(range(0, len(PROMPTS), 2)))
             + sampler.sample(PROMPTS[1::2], 0, prompt_indices=list(range(1, len(PROMPTS), 2))))
    assert sorted(_key(split)) == _key(reference)


@pytest.mark.parametrize("warps", [{}, {"temperature": 0.7, "top_k": 5, "top_p": 0.9}, {"temperature": 0.0}])
def test_backends_draw_the_same_samples(causal_model, tokenizer, eos_boost, warps):
    """`refill` and `generate` draw each sample from the same uniforms: the same completions, also when rows
    finish at different steps and waiting prompts join the running batch (batch_size 1 and 2)."""
    eos_boost(causal_model, tokenizer.eos_token_id)
    reference = _key(_draw(causal_model, tokenizer, PROMPTS, max_new_tokens=12, backend="generate", **warps))
    for batch_size in (1, 2, 8):
        refill = _draw(causal_model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=batch_size,
                       backend="refill", **warps)
        assert _key(refill) == reference


def test_eos_is_cut_and_marks_finished(causal_model, tokenizer, eos_boost):
    eos_boost(causal_model, tokenizer.eos_token_id)
    samples = _draw(causal_model, tokenizer, PROMPTS, max_new_tokens=12)
    for s in samples:
        assert tokenizer.eos_token_id not in s.completion_ids
        assert tokenizer.pad_token_id not in s.completion_ids or not s.finished
        assert s.finished == (len(s.completion_ids) < 12)
    assert any(s.finished for s in samples) and any(not s.finished for s in samples)


def test_immediate_eos_gives_empty_finished_completion(causal_model, tokenizer, eos_boost):
    eos_boost(causal_model, tokenizer.eos_token_id, bonus=1e4)
    samples = _draw(causal_model, tokenizer, PROMPTS[:2])
    assert all(s.completion == "" and s.completion_ids == [] and s.finished for s in samples)


def test_pad_token_choice_does_not_change_samples(causal_model, tokenizer, eos_boost):
    """Padding with EOS (pad == eos, or no pad token) only changes masked positions."""
    eos_boost(causal_model, tokenizer.eos_token_id)
    reference = _key(_draw(causal_model, tokenizer, PROMPTS))
    assert _key(_draw(causal_model, build_tokenizer(pad_is_eos=True), PROMPTS)) == reference
    no_pad = build_tokenizer()
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    assert _key(_draw(causal_model, no_pad, PROMPTS)) == reference
    assert no_pad.pad_token is None


def test_duplicate_prompts_are_distinct(causal_model, tokenizer):
    samples = _draw(causal_model, tokenizer, ["same", "same"], num_samples=2)
    assert [s.prompt_index for s in samples] == [0, 0, 1, 1]
    assert samples[0].completion_ids != samples[2].completion_ids
    assert samples[1].completion_ids != samples[3].completion_ids


def test_greedy_matches_generate_and_top_k_1(causal_model, tokenizer):
    prompt = "greedy prompt"
    samples = _draw(causal_model, tokenizer, [prompt], temperature=0.0, num_samples=2)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = causal_model.generate(**inputs, do_sample=False, max_new_tokens=8)
    expected = output[0, inputs.input_ids.shape[1]:]
    assert samples[0].completion_ids == samples[1].completion_ids == expected.tolist()
    # top_k=1 leaves one token to draw, whatever the temperature: the greedy one.
    for prompts in ([prompt], PROMPTS):
        greedy = _draw(causal_model, tokenizer, prompts, temperature=0.0)
        assert _key(_draw(causal_model, tokenizer, prompts, top_k=1, temperature=2.0)) == _key(greedy)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("was_training", [True, False])
def test_training_mode_restored(causal_model, tokenizer, was_training, backend):
    causal_model.train(was_training)
    causal_model.model.layers[0].eval()  # a submodule the caller froze in eval mode stays so
    seen = []
    real_forward = causal_model.forward

    def spy(*args, **kwargs):
        seen.append((causal_model.training, torch.is_grad_enabled()))
        return real_forward(*args, **kwargs)

    causal_model.forward = spy
    _draw(causal_model, tokenizer, PROMPTS[:2], backend=backend)
    assert seen and set(seen) == {(False, False)}
    assert causal_model.training is was_training and causal_model.model.layers[0].training is False
    assert causal_model.model.layers[1].training is was_training

    def boom(*args, **kwargs):
        raise RuntimeError("generation failed")

    causal_model.forward = boom
    with pytest.raises(RuntimeError, match="generation failed"):
        _draw(causal_model, tokenizer, PROMPTS[:2], backend=backend)
    assert causal_model.training is was_training and causal_model.model.layers[1].training is was_training


def test_tokenizer_not_mutated(causal_model, tokenizer):
    tokenizer.padding_side = "right"
    _draw(causal_model, tokenizer, PROMPTS)
    assert tokenizer.padding_side == "right"


def test_gradient_checkpointing_model_samples_the_same(causal_model, tokenizer):
    reference = _key(_draw(causal_model, tokenizer, PROMPTS))
    causal_model.gradient_checkpointing_enable()
    causal_model.train()
    assert _key(_draw(causal_model, tokenizer, PROMPTS)) == reference
    assert causal_model.training and causal_model.is_gradient_checkpointing


def test_model_generation_config_does_not_interfere(causal_model, tokenizer):
    reference = _key(_draw(causal_model, tokenizer, PROMPTS))
    gc = causal_model.generation_config
    gc.do_sample, gc.top_p, gc.top_k, gc.temperature = True, 0.5, 3, 0.1
    gc.repetition_penalty, gc.no_repeat_ngram_size = 1.5, 2
    assert _key(_draw(causal_model, tokenizer, PROMPTS)) == reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_peft_wrapped_model(causal_model, tokenizer, backend):
    peft = pytest.importorskip("peft")
    reference = _key(_draw(causal_model, tokenizer, PROMPTS[:3], backend=backend))
    wrapped = peft.get_peft_model(causal_model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    wrapped.train()
    # LoRA starts as the identity (B = 0), so the wrapped model draws the same samples.
    assert _key(_draw(wrapped, tokenizer, PROMPTS[:3], backend=backend)) == reference
    assert wrapped.training


def test_seq2seq(seq2seq_model, tokenizer):
    samples = _draw(seq2seq_model, tokenizer, PROMPTS, batch_size=8)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(p, j) for p in range(5) for j in range(3)]
    assert _key(_draw(seq2seq_model, tokenizer, PROMPTS, batch_size=1)) == _key(samples)
    assert len({s.completion for s in samples}) == len(samples)
    inputs = tokenizer(PROMPTS[0], return_tensors="pt")
    expected = seq2seq_model.generate(**inputs, do_sample=False, max_new_tokens=8)[0, 1:].tolist()
    greedy = _draw(seq2seq_model, tokenizer, PROMPTS[:1], temperature=0.0, num_samples=1)
    assert greedy[0].completion_ids == expected


def test_stop_strings_cut_the_completion(causal_model, tokenizer):
    reference = _draw(causal_model, tokenizer, PROMPTS, max_new_tokens=12)
    # A printable character some unfinished sample produces after its first few characters.
    source = next(s for s in reference if any(c.isalnum() for c in s.completion[2:]))
    stop = next(c for c in source.completion[2:] if c.isalnum())
    samples = _draw(causal_model, tokenizer, PROMPTS, max_new_tokens=12, stop_strings=[stop])
    for before, after in zip(reference, samples, strict=True):
        if stop in before.completion:
            assert after.finished and after.completion == before.completion[: before.completion.index(stop)]
            assert after.completion.startswith(tokenizer.decode(after.completion_ids))
            assert after.completion_ids == before.completion_ids[: len(after.completion_ids)]
        else:
            assert _key([after]) == _key([before])
    assert samples[reference.index(source)].finished


def test_config_validation_names_every_bad_field():
    with pytest.raises(ValueError) as error:
        SamplingConfig(num_samples=0, temperature=-1, top_p=0, top_k=-2, batch_size=1.5, stop_strings=[""],
                       backend="vllm")
    message = str(error.value)
    for field in ("num_samples", "temperature", "top_p", "top_k", "batch_size", "stop_strings", "backend"):
        assert f"`{field}`" in message


def test_backend_choice(causal_model, seq2seq_model, tokenizer):
    """`auto` is `refill` where it applies, else `generate`; an explicit `refill` that cannot apply is refused."""
    assert SamplingConfig().backend == "auto"
    assert Sampler(causal_model, tokenizer).backend == "refill"
    assert Sampler(causal_model, tokenizer, SamplingConfig(backend="generate")).backend == "generate"
    single_rank = Ranks(SimpleNamespace(process_index=0, num_processes=1))
    assert Sampler(causal_model, tokenizer, lockstep=single_rank).backend == "generate"
    assert Sampler(seq2seq_model, tokenizer).backend == "generate"
    sliding = build_causal_lm(tokenizer, sliding_window=4, layer_types=["sliding_attention"] * 2)
    assert Sampler(sliding, tokenizer).backend == "generate"
    causal_model.generation_config.suppress_tokens = [5]
    assert Sampler(causal_model, tokenizer).backend == "generate"
    causal_model.generation_config.suppress_tokens = None
    llama = type(causal_model)

    def own_preparation(self, *args, **kwargs):  # as multimodal or rope-switching models do
        return llama.prepare_inputs_for_generation(self, *args, **kwargs)

    causal_model.__class__ = type("OwnInputs", (llama,), {"prepare_inputs_for_generation": own_preparation})
    assert Sampler(causal_model, tokenizer).backend == "generate"
    causal_model.__class__ = llama
    refill = SamplingConfig(backend="refill")
    for model, lockstep, reason in [(causal_model, single_rank, "lockstep"), (seq2seq_model, None, "encoder-decoder"),
                                    (sliding, None, "DynamicSlidingWindowLayer")]:
        with pytest.raises(ValueError, match=f"`backend='refill'` cannot sample from this model: .*{reason}"):
            Sampler(model, tokenizer, refill, lockstep=lockstep)


def test_sample_argument_validation(causal_model, tokenizer):
    sampler = Sampler(causal_model, tokenizer, SamplingConfig(max_new_tokens=2, chat_template=False))
    with pytest.raises(ValueError, match="`meta` has 1 entries"):
        sampler.sample(["a", "b"], round_index=0, meta=[{}])
    with pytest.raises(ValueError, match="`round_index`"):
        sampler.sample(["a"], round_index=-1)
    with pytest.raises(ValueError, match="no tokens"):
        sampler.sample(["a", ""], round_index=0)


def test_sample_seed_is_stable():
    # Fixed value: the hash must not depend on the process (Python's hash() is salted).
    assert sample_seed(0, 0, 0, 0) == sample_seed(0, 0, 0, 0)
    assert len({sample_seed(0, r, p, j) for r in range(3) for p in range(3) for j in range(3)}) == 27
    assert sample_seed(1, 2, 3, 4) == 1734781934905423242


def test_warps_and_draws_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.isinf(warp_scores(logits, 1.0, 2, 1.0)[0, 2:]).all()
    # probs ~ [.64, .24, .09, .03]: top_p=0.8 keeps the first two (0.64 < 0.8 <= 0.88).
    kept = ~torch.isinf(warp_scores(logits, 1.0, 0, 0.8))
    assert kept.tolist() == [[True, True, False, False]]
    rows = 20000
    config = SamplingConfig(temperature=1.0)
    processor = _RowwiseSampler(list(range(rows)), steps=1, config=config, device=torch.device("cpu"))
    out = processor(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, -1))
    tokens = out.argmax(dim=-1)
    assert (out.isinf().sum(dim=-1) == 3).all()
    frequencies = torch.bincount(tokens, minlength=4).float() / rows
    assert torch.allclose(frequencies, logits.softmax(dim=-1)[0], atol=0.015)


def test_prompt_tuning_adapter_samples_through_generate(causal_model, tokenizer):
    """Prompt-learning adapters prepend virtual tokens inside `generate`; `auto` must not pick `refill`."""
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(causal_model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert Sampler(wrapped, tokenizer).backend == "generate"
    with pytest.raises(ValueError, match="learns prompt tokens"):
        Sampler(wrapped, tokenizer, SamplingConfig(backend="refill"))
    assert len(_draw(wrapped, tokenizer, PROMPTS[:2])) == 2 * 3
