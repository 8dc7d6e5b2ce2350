"""The running rows of the `refill` decoder, kept in preallocated buffers so that no step copies the cache.

Layout: every per-row tensor has `capacity` rows, of which rows [0, n) are live; the KV buffers of each
layer are (capacity, kv_heads, columns, head_dim), of which columns [0, t) are in use. A row's tokens
(prompt, then completion) fill the rightmost `positions[row]` of those columns; the columns left of them
are masked (`mask` 0). So all rows are left-padded to the same width, which is what a left-padded batch
in `generate` looks like too, and a decode step writes column t of every live row, in place.

* Admitting a prompt writes its prefilled keys/values into k free rows, right-aligned at column t
  (the buffers are widened first if the prompt is longer than t).
* Retiring rows moves the last live rows into the holes they leave (only the moved rows are copied), so
  rows [0, n) stay live and a step computes no finished row.
* When the columns no live row uses make up a quarter of the width, they are cut off (one copy), so the
  attention does not keep reading masked columns; when the buffer is full it doubles.

Masked columns hold zeros or stale keys/values of earlier rows, finite either way: the attention gives
them weight exactly 0, which a NaN or infinity would turn into NaN.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Trim the unused leading columns once they are this many, and at least this fraction of the width.
_TRIM_MIN_COLUMNS, _TRIM_FRACTION = 16, 1 / 4


class _SlotLayer(DynamicLayer):
    """One layer's view of the slot buffers, readable as a `DynamicLayer` (keys/values are the live rows'
    used columns); `update` writes the new token's keys/values into column t instead of concatenating."""

    def __init__(self, slots: RowSlots, index: int):
        super().__init__()
        self.slots, self.index = slots, index
        self.is_initialized, self.device = True, slots.device
        self.refresh()

    def refresh(self) -> None:
        keys, values = self.slots.kv[self.index]
        self.keys, self.values = keys[: self.slots.n, :, : self.slots.t], values[: self.slots.n, :, : self.slots.t]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if key_states.shape[-2] != 1:
            raise RuntimeError("The refill decoder's cache takes one new token per row per step.")
        keys, values = self.slots.kv[self.index]
        n, t = self.slots.n, self.slots.t
        keys[:n, :, t] = key_states[:, :, 0]
        values[:n, :, t] = value_states[:, :, 0]
        self.keys, self.values = keys[:n, :, : t + 1], values[:n, :, : t + 1]
        return self.keys, self.values


class RowSlots:
    """Buffers for up to `capacity` rows; see the module docstring. Attributes are read by the decoder."""

    def __init__(self, capacity: int, max_new_tokens: int, uniforms_width: int, window_width: int | None,
                 device: torch.device):
        self.capacity, self.device, self.n, self.t = capacity, device, 0, 0
        self.kv: list[list[torch.Tensor]] = []
        self.cache = DynamicCache()
        self.mask = torch.zeros((capacity, 0), dtype=torch.long, device=device)
        long = {"dtype": torch.long, "device": device}
        self.positions, self.last, self.count = (torch.zeros(capacity, **long) for _ in range(3))
        self.tokens = torch.zeros((capacity, max_new_tokens), **long)
        self.uniforms = torch.zeros((capacity, uniforms_width), device=device)
        self.window = None if window_width is None else torch.zeros((capacity, window_width), **long)
        self.owner = [-1] * capacity
        self.room = max_new_tokens + 1

    def _per_row(self) -> list[torch.Tensor]:
        rows = [self.positions, self.last, self.count, self.tokens, self.uniforms, self.mask]
        return rows + ([] if self.window is None else [self.window])

    def _reallocate(self, columns: int, shift: int) -> None:
        """New buffers `columns` wide; the live rows' used columns move `shift` columns right (negative: left)."""
        keep = slice(max(0, -shift), self.t)
        target = slice(keep.start + shift, self.t + shift)
        for pair in self.kv:
            for i, old in enumerate(pair):
                pair[i] = old.new_zeros((*old.shape[:2], columns, old.shape[3]))
                pair[i][: self.n, :, target] = old[: self.n, :, keep]
        mask = self.mask.new_zeros((self.capacity, columns))
        mask[: self.n, target] = self.mask[: self.n, keep]
        self.mask, self.t = mask, self.t + shift

    def admit(self, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor, copies: int, owners: list[int],
              **rows: torch.Tensor) -> None:
        """Add the rows of prompts prefilled together: `kv` (per layer, keys and values of shape
        (prompts, heads, width, dim)) and `mask` (prompts, width) once per prompt, each used by `copies`
        consecutive new rows; `rows` are the new rows' per-row tensors (positions, last, count, tokens,
        uniforms, window)."""
        prompts, width = mask.shape
        start, end = self.n, self.n + prompts * copies
        if not self.kv:
            self.kv = [[t.new_zeros((self.capacity, t.shape[1], width + self.room, t.shape[3])) for t in pair]
                       for pair in kv]
            self.mask = mask.new_zeros((self.capacity, width + self.room))
            self.t = width
            self.cache.layers = [_SlotLayer(self, i) for i in range(len(kv))]
        elif width > self.t:
            self._reallocate(self.mask.shape[1] + width - self.t, shift=width - self.t)
        columns = slice(self.t - width, self.t)
        for pair, new in zip(self.kv, kv, strict=True):
            for buffer, part in zip(pair, new, strict=True):
                # Row start + p * copies + j gets prompt p's keys: written through a (prompts, copies) view.
                grouped = buffer[start:end].view(prompts, copies, *buffer.shape[1:])
                grouped[:, :, :, columns] = part[:, None]
        self.mask[start:end] = 0
        self.mask[start:end, columns] = mask.repeat_interleave(copies, dim=0)
        for name, values in rows.items():
            getattr(self, name)[start:end] = values
        self.owner[start:end] = owners
        self.n = end
        self._refresh()

    def retire(self, done: torch.Tensor) -> None:
        """Drop the live rows where `done` (n,) is True: the last live rows move into the holes."""
        kept = self.n - int(done.sum())
        holes = done[:kept].nonzero()[:, 0]
        movers = (~done[kept: self.n]).nonzero()[:, 0] + kept
        if len(holes):
            for pair in self.kv:
                for buffer in pair:
                    buffer[holes, :, : self.t] = buffer[movers, :, : self.t]
            for tensor in self._per_row():
                tensor[holes] = tensor[movers]
            for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
                self.owner[hole] = self.owner[mover]
        self.n = kept
        self._refresh()

    def open_column(self) -> None:
        """Make column t ready for the next token: trim unused leading columns or grow, then unmask it."""
        unused = self.t - int(self.positions[: self.n].max())
        if unused >= max(_TRIM_MIN_COLUMNS, self.t * _TRIM_FRACTION):
            self._reallocate(self.mask.shape[1], shift=-unused)
        elif self.t == self.mask.shape[1]:
            self._reallocate(2 * self.t, shift=0)
        self.mask[: self.n, self.t] = 1
        self._refresh()

    def close_column(self) -> None:
        """Column t now holds every live row's newest token."""
        self.t += 1
        self._refresh()

    def _refresh(self) -> None:
        for layer in self.cache.layers:
            layer.refresh()
