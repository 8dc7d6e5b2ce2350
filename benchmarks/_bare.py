"""A bare PyTorch training loop on exactly the micro-batches `IterativeSFTTrainer.step()` forms.

The reference for the trainer's own overhead. The micro-batches are built before the clock starts,
with itersft's own data functions applied in `step()`'s order: tokenise the texts (EOS appended),
drop samples with nothing to learn, shuffle with (`seed`, updates so far), cut into accumulation
windows, regroup each window by length, pack or pad each micro-batch as `batching` decides, find the
label positions on the host. The timed loop then does only what any training loop must: move each
micro-batch to the device, the trainer's loss (`itersft.trainer.loss.SummedLoss`: decoder, label
positions, chunked head; packed rows attended per sample) divided by the window's label tokens,
backward, gradient clipping, one fused-AdamW update per window. No input checks, callbacks,
statistics, logging or host syncs.

`BareLoop.step` returns the token-weighted mean loss of its updates, which must equal the `loss` that
`step()` returns from the same weights and texts: `bench_training.py` checks it, so a drift between
this replica and the trainer shows as an error, not as a wrong ratio.
"""

from __future__ import annotations

import contextlib

import torch

from itersft.data.batching import accumulation_windows, lay_out_window, shuffled
from itersft.data.collate import collate
from itersft.data.encode import ExampleEncoder
from itersft.data.validate import validate_step_input
from itersft.trainer.loss import SummedLoss, label_positions
from itersft.trainer.model_facts import inspect_model
from itersft.trainer.setup import choose_pad_token_id, text_tokenizer

STEP_INPUTS = ("input_ids", "attention_mask", "labels", "texts", "texts_labels", "prompts", "completions", "messages")


class BareLoop:
    """Plain training of a causal LM on `step()`'s micro-batches (see the module docstring).

    `autocast_dtype` (e.g. `torch.bfloat16`) runs forward and loss under `torch.autocast`, as the
    trainer's `bf16=True` does; the weights and the optimizer stay in float32.
    """

    def __init__(self, model, tokenizer, batch_size: int, accumulation: int, batching: str, learning_rate: float,
                 seed: int = 42, max_grad_norm: float = 1.0, device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None):
        self.model = model.to(device).train()
        self.encoder = ExampleEncoder(text_tokenizer(tokenizer), False, True)
        self.pad_token_id = choose_pad_token_id(text_tokenizer(tokenizer), model)
        self.facts = inspect_model(model)
        self.loss = SummedLoss(self.model, self.facts, self._autocast)
        self.batch_size, self.accumulation, self.batching = batch_size, accumulation, batching
        self.seed, self.max_grad_norm, self.device = seed, max_grad_norm, torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0,
                                           fused=self.device.type in ("cpu", "cuda"))

    def micro_batches(self, texts: list[str], updates_before: int) -> list[tuple[list[dict], int]]:
        """The windows of `step(texts=texts)` called after `updates_before` updates: each is a list of host
        micro-batches and the window's label-token count."""
        form, lists = validate_step_input(dict.fromkeys(STEP_INPUTS) | {"texts": texts}, False,
                                          self.facts.vocab_size)
        examples = [e for e in self.encoder.encode_input(form, lists) if e.num_loss_tokens(True) > 0]
        examples = shuffled(examples, self.seed, updates_before)
        windows = []
        per_sample = self.loss.attends_per_sample(self.model)
        for window in accumulation_windows(examples, self.batch_size, self.accumulation):
            batches = []
            for examples_of_batch, packed in lay_out_window(window, self.batching, self.facts.packs,
                                                            self.facts.hidden_size, per_sample):
                batch = collate(examples_of_batch, self.pad_token_id, False, packed)
                batch["loss_positions"], batch["loss_targets"] = label_positions(batch["labels"])
                if packed:
                    batch["packed_lengths"] = tuple(len(e.input_ids) for e in examples_of_batch)
                batches.append(batch)
            windows.append((batches, sum(e.num_loss_tokens(True) for b in window for e in b)))
        return windows

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def step(self, windows: list[tuple[list[dict], int]]) -> torch.Tensor:
        """Train on `micro_batches(...)`'s windows; returns the mean token loss as a 0-d tensor (no sync)."""
        loss_sum, tokens = torch.zeros((), device=self.device), 0
        for batches, window_tokens in windows:
            for host in batches:
                batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                         for k, v in host.items()}
                loss = self.loss(self.model, batch)
                (loss / window_tokens).backward()
                loss_sum += loss.detach()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            tokens += window_tokens
        return loss_sum / tokens

    @staticmethod
    def computed_tokens(windows: list[tuple[list[dict], int]]) -> int:
        """Tokens the forward passes compute, padding included."""
        return sum(batch["input_ids"].numel() for batches, _ in windows for batch in batches)

    @staticmethod
    def real_tokens(windows: list[tuple[list[dict], int]]) -> int:
        """Tokens of the samples themselves (a packed row has no padding; a padded one is masked)."""
        return sum(int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                   for batches, _ in windows for batch in batches)
