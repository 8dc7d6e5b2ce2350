"""Tests for `itersft.sampling.refill`: what makes the backend fast (one prefill per prompt, finished rows not
computed, a batch no larger than asked) and its cache layer. That it draws the right samples is tested
in `test_sampler.py` (the same samples as `generate`) and `test_sampling_distribution.py`."""

from __future__ import annotations

import torch

from itersft.sampling.refill_slots import RowSlots
from itersft.sampling.sampler import Sampler, SamplingConfig

PROMPTS = ["hello", "a much longer prompt than the others", "xy", "medium prompt", "hi there"]  # 2+ tokens each


def _record_forward_shapes(model) -> list[tuple[int, int]]:
    """Replaces `model.forward` with a spy; returns the list it fills with each call's (rows, input tokens)."""
    shapes, real_forward = [], model.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return real_forward(*args, **kwargs)

    model.forward = spy
    return shapes


def test_each_prompt_is_prefilled_once_and_finished_rows_leave(causal_model, tokenizer):
    eos = tokenizer.eos_token_id

    def hook(module, inputs, output):  # EOS likely: rows finish at different steps
        output = output.clone()
        output[..., eos] += 4.0
        return output

    causal_model.get_output_embeddings().register_forward_hook(hook)
    shapes = _record_forward_shapes(causal_model)
    config = SamplingConfig(num_samples=3, max_new_tokens=12, batch_size=2, backend="refill", chat_template=False)
    samples = Sampler(causal_model, tokenizer, config).sample(PROMPTS, round_index=0)
    prefills = [rows for rows, length in shapes if length > 1]
    decodes = [rows for rows, length in shapes if length == 1]
    # One row per prompt in the prefills (not one per sample), at most `batch_size` prompts at a time.
    assert sum(prefills) == len(PROMPTS) and max(prefills) <= 2
    assert max(decodes) <= 2 * 3
    # A finished row leaves at once: every decode row computed draws a token that is kept, so the rows
    # computed are exactly the tokens drawn after each sample's first (fewer than static batches' rows x steps).
    drawn_after_first = sum(len(s.completion_ids) + s.finished - 1 for s in samples)
    assert sum(decodes) == drawn_after_first < 2 * 3 * 11 * 3
    assert any(s.finished and len(s.completion_ids) < 6 for s in samples)


def test_row_slots_keep_each_rows_tokens_through_admissions_retirements_trims_and_growth():
    """A reference keeps each row's key sequence as a Python list; after every operation the live rows'
    unmasked cache columns must hold exactly that sequence, right-aligned, and the masked ones nothing."""
    generator = torch.Generator().manual_seed(0)
    slots = RowSlots(capacity=6, max_new_tokens=3, uniforms_width=7, window_width=None, device=torch.device("cpu"))
    expected: dict[int, list[float]] = {}  # owner -> the row's keys (one number per token)
    next_owner = 0

    def admit(lengths: list[int]) -> None:
        nonlocal next_owner
        width = max(lengths)
        keys = torch.randn(len(lengths), 1, width, 1, generator=generator)
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        owners = []
        for p, length in enumerate(lengths):
            mask[p, width - length:] = 1
            for _ in range(2):  # two copies (samples) per prompt
                expected[next_owner] = keys[p, 0, width - length:, 0].tolist()
                owners.append(next_owner)
                next_owner += 1
        positions = torch.tensor(lengths).repeat_interleave(2)
        slots.admit([(keys, -keys)], mask, 2, owners, positions=positions)

    def step() -> None:
        slots.open_column()
        new = torch.randn(slots.n, 1, 1, 1, generator=generator)
        slots.cache.layers[0].update(new, -new)
        slots.close_column()
        slots.positions[: slots.n] += 1
        for row in range(slots.n):
            expected[slots.owner[row]].append(new[row, 0, 0, 0].item())

    def check() -> None:
        layer = slots.cache.layers[0]
        assert layer.keys.shape[0] == slots.n and layer.get_seq_length() == slots.t
        for row in range(slots.n):
            sequence = expected[slots.owner[row]]
            mask = slots.mask[row, : slots.t]
            assert mask.tolist() == [0] * (slots.t - len(sequence)) + [1] * len(sequence)
            assert layer.keys[row, 0, mask.bool(), 0].tolist() == sequence
            assert layer.values[row, 0, mask.bool(), 0].tolist() == [-v for v in sequence]

    admit([3, 2])
    check()
    for _ in range(5):  # past the 4 spare columns: the buffer grows
        step()
        check()
    slots.retire(torch.tensor([True, False, False, True]))  # row 3 moves into row 0's slot
    check()
    admit([24])  # longer than the columns in use: the buffer widens, the old rows shift right
    check()
    slots.retire(torch.tensor([True, True, False, False]))
    check()
    admit([2])
    slots.retire(torch.tensor([True, True, False, False]))  # only the 2-token rows are left: 22 unused columns
    check()
    step()  # the unused leading columns are cut before the step
    check()
    assert slots.t == 3 and slots.n == 2
