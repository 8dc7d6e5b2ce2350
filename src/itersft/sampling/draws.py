"""How one sampled token is chosen, shared by every sampling backend: seeds, warping, inverse-CDF draws.

Sample `j` of prompt `i` in round `r` owns a stream of uniforms from a CPU `torch.Generator` seeded with
`sample_seed(seed, r, i, j)`; its t-th completion token is the t-th uniform pushed through the inverse CDF
of the warped next-token distribution. A draw therefore depends on the sample's coordinates and on its
logits only, never on which rows share a batch: this is what makes the `generate` and `refill` backends
draw the same samples, at any batch size, prompt order or split of the prompts over ranks.
"""

from __future__ import annotations

import hashlib

import torch

# Extra uniforms per sample beyond `max_new_tokens`: `generate` may run a step or two past the last token
# when it defers its stop check; what those steps draw is discarded.
SPARE_DRAWS = 4


def sample_seed(seed: int, round_index: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of one sample: a stable 63-bit hash of its coordinates (same on every process).

    Python's `hash()` is salted per process, so it would give each rank different samples.
    """
    key = f"itersft-sample:{seed}:{round_index}:{prompt_index}:{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def sample_uniforms(seeds: list[int], steps: int, device: torch.device) -> torch.Tensor:
    """(len(seeds), steps + SPARE_DRAWS) uniforms in [0, 1), row i from a CPU generator seeded with seeds[i].

    Drawn on the CPU, whatever `device` is, so a CPU test and a CUDA rank see the same numbers.
    """
    if not seeds:
        return torch.empty(0, steps + SPARE_DRAWS, device=device)
    rows = [torch.rand(steps + SPARE_DRAWS, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(rows).to(device)


def warp_scores(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p to (rows, vocab) logits; dropped tokens get -inf."""
    scores = scores / temperature
    vocab = scores.shape[-1]
    if 0 < top_k < vocab:
        kth_best = torch.topk(scores, top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        sorted_probs = sorted_scores.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold `top_p` of the mass; the first is kept.
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_scores = sorted_scores.masked_fill(mass_before >= top_p, float("-inf"))
        scores = torch.empty_like(scores).scatter_(-1, order, sorted_scores)
    return scores


def draw_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_k: int,
                top_p: float) -> torch.Tensor:
    """One token per row of (rows, vocab) `logits`, row r chosen by the uniform `uniforms[r]`.

    Inverse-CDF on the warped distribution: `torch.multinomial(probs, 1, generator=g)` in distribution,
    vectorised over rows (one kernel per step instead of one call per row). `temperature == 0` is greedy
    (argmax; the uniforms are not used).
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = warp_scores(logits.float(), temperature, top_k, top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    # Scale by the row's total so float error in the cumsum cannot push the target past the end.
    target = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=logits.shape[-1] - 1)[:, 0]
