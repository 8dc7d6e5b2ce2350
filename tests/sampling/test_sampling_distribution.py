"""Every sampling backend draws from the model's exact next-token distribution (a statistical test).

Model: the causal toy model (seed 0, see `itersft.toy`) with its attention output projections scaled by 4,
so that the next token depends on the whole prompt and not mostly on the last token (a cache row of the
wrong prompt then changes the distribution), and its LM-head output multiplied by 6 and the EOS logit
raised by 2 (a forward hook), so that after temperature 0.7, top-k 8 and top-p 0.9 each prompt has a few
likely tokens, EOS among them. Three prompts of different lengths are sampled 3000 times each, two
tokens per sample, with two prompts per batch (left padding, one shared prefill per prompt).

The reference is computed here, independently of `itersft.sampling.draws`: one plain forward pass without
a cache on the prompt (first token) and on the prompt plus the first token (second token, conditioned
on the first), then softmax at the temperature, top-k, and top-p on what top-k left, written out token
by token. The second token passes through the KV cache expanded from the prompt's single prefill.

Bound: for n draws from a distribution on m tokens, the empirical distribution is farther than
eps = sqrt((m ln 2 + ln(1/delta)) / (2n)) in total variation with probability at most delta
(Bretagnolle-Huber-Carol inequality); delta = 1e-6 per comparison. The seeds are fixed, so the test is
deterministic; the bound says a correct sampler passes for all but a negligible fraction of seeds.
It fails on a wrong distribution (tried once each on `refill`): without the temperature the first
token's distance is 0.07-0.11 against a bound of 0.056 (and tokens outside top-p are drawn); with the
prompt's cache repeated prompt-major instead of interleaved (rows decoding from another prompt's cache)
the second token's distance is 0.12-0.45 against bounds of 0.10-0.19.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from itersft.sampling.sampler import Sampler, SamplingConfig
from itersft.toy import build_causal_lm, build_tokenizer

PROMPTS = ["hello", "a much longer prompt", "x"]
DRAWS_PER_PROMPT = 3000
ATTENTION_SCALE, SCALE, EOS_BONUS = 4.0, 6.0, 2.0
TEMPERATURE, TOP_K, TOP_P = 0.7, 8, 0.9
DELTA = 1e-6
MIN_CONDITIONAL_DRAWS = 200


def tv_bound(draws: int, support: int) -> float:
    """Total variation the empirical distribution of `draws` exceeds with probability <= DELTA."""
    return math.sqrt((support * math.log(2) + math.log(1 / DELTA)) / (2 * draws))


@pytest.fixture(scope="module")
def sharpened():
    """The toy model with a sharper next-token distribution and a likely EOS, and its tokenizer."""
    tokenizer = build_tokenizer()
    model = build_causal_lm(tokenizer).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight *= ATTENTION_SCALE
    eos = tokenizer.eos_token_id

    def hook(module, inputs, output):
        output = output * SCALE
        output[..., eos] += EOS_BONUS
        return output

    model.get_output_embeddings().register_forward_hook(hook)
    return model, tokenizer


def exact_next_token(model, ids: list[int]) -> torch.Tensor:
    """The warped next-token distribution after `ids`, computed without a cache, in float64."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].double()
    probs = (logits / TEMPERATURE).softmax(dim=-1)
    ranked = probs.argsort(descending=True).tolist()[:TOP_K]
    top_k_mass = sum(probs[t].item() for t in ranked)
    # Top-p applies to the distribution top-k leaves (renormalised), as transformers' warpers chain them.
    kept, mass = [], 0.0
    for token in ranked:
        if mass >= TOP_P:
            break
        kept.append(token)
        mass += probs[token].item() / top_k_mass
    truncated = torch.zeros_like(probs)
    truncated[kept] = probs[kept]
    return truncated / truncated.sum()


def total_variation(draws: list[int], reference: torch.Tensor) -> float:
    counts = Counter(draws)
    tokens = set(counts) | set(reference.nonzero()[:, 0].tolist())
    return 0.5 * sum(abs(counts[t] / len(draws) - reference[t].item()) for t in tokens)


@pytest.mark.parametrize("backend", ["refill", "generate"])
def test_first_and_second_tokens_follow_the_exact_distribution(sharpened, backend):
    model, tokenizer = sharpened
    eos = tokenizer.eos_token_id
    config = SamplingConfig(num_samples=DRAWS_PER_PROMPT, max_new_tokens=2, temperature=TEMPERATURE, top_k=TOP_K,
                            top_p=TOP_P, batch_size=2, seed=0, backend=backend,
                            chat_template=False)  # raw prompts: the reference's ids are `tokenizer(prompt)`
    samples = Sampler(model, tokenizer, config).sample(PROMPTS, round_index=0)
    conditionals_checked = 0
    for index, prompt in enumerate(PROMPTS):
        # The drawn tokens: the completion, then EOS if it was drawn (no stop strings here).
        drawn = [s.completion_ids + [eos] * s.finished for s in samples if s.prompt_index == index]
        assert len(drawn) == DRAWS_PER_PROMPT and all(1 <= len(d) <= 2 for d in drawn)
        ids = tokenizer(prompt)["input_ids"]
        first = exact_next_token(model, ids)
        support = int((first > 0).sum())
        assert all(first[d[0]] > 0 for d in drawn), "a token outside top-k/top-p was drawn"
        assert total_variation([d[0] for d in drawn], first) < tv_bound(len(drawn), support)
        for token, count in Counter(d[0] for d in drawn).items():
            if token == eos or count < MIN_CONDITIONAL_DRAWS:
                continue
            second = exact_next_token(model, ids + [token])
            following = [d[1] for d in drawn if d[0] == token]
            assert all(second[t] > 0 for t in following), "a token outside top-k/top-p was drawn"
            distance = total_variation(following, second)
            assert distance < tv_bound(len(following), int((second > 0).sum())), (prompt, token, distance)
            conditionals_checked += 1
    assert conditionals_checked >= 4
