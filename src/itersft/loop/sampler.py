"""Draw k completions per prompt from the model being trained, reproducibly per sample.

Every random draw for sample `j` of prompt `i` in round `r` comes from its own uniform stream, seeded
from a stable hash of `(seed, r, i, j)` (`itersft.loop.draws`). Which prompts share a batch, the batch
size, the prompt order, and later which rank samples a prompt therefore do not change what is drawn.

Two backends draw these same samples (`SamplingConfig.backend`):

* `refill` (`itersft.loop.refill`): one prefill per prompt shared by its k samples, finished rows
  dropped at once and waiting prompts admitted into their slots. Decoder-only models with a plain
  full-attention KV cache, not in lockstep.
* `generate`: `model.generate` runs *greedy* decoding with one extra logits processor, `_RowwiseSampler`,
  last in the list, which draws each row's token from that row's stream and returns scores that are
  `-inf` except at the drawn token, so greedy's argmax takes exactly that token. Left-padded batching,
  KV cache, EOS handling, padding of finished rows and stop strings stay with `generate`; each sample is
  its own row, as with `num_return_sequences`. Works for every model `generate` supports, also sharded
  weights in lockstep (`synced_gpus`) and encoder-decoders.

`auto`, the default, is `refill` where it applies, else `generate` (logged). Prompts are sorted by token
length, longest first, so batched prompts pad little.

Deliberately left out: beam search, chat templating (prompts arrive formatted), prompt truncation.
Reproducibility is exact as far as the forward pass is batch-invariant: logits that differ in the last
bits between batch shapes (common in bf16 on GPU) can move a draw across a token boundary; for the same
reason the two backends agree sample for sample only up to such boundary cases.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StopStringCriteria

from itersft.distributed import Ranks
from itersft.loop.draws import draw_tokens, sample_seed, sample_uniforms, warp_scores
from itersft.loop.refill import RefillDecoder, left_pad, refill_unsupported_reason
from itersft.loop.samples import Sample

__all__ = ["BACKENDS", "Sampler", "SamplingConfig", "sample_seed", "warp_scores"]
logger = logging.getLogger(__name__)

BACKENDS = ("auto", "refill", "generate")

# Fields of the model's own `generation_config` that would reshape the distribution we sample from.
# `generate` fills every field we leave `None` from the model's config, so these are pinned to neutral
# values. Structural fields (decoder_start_token_id, forced_bos_token_id, suppress_tokens) are kept.
_NEUTRAL_GENERATION = {
    "do_sample": False,
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": 0,  # not `min_length`: setting both makes generate warn on every call
    "bad_words_ids": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "guidance_scale": None,
    "forced_eos_token_id": None,
    "renormalize_logits": False,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
}


@dataclass
class SamplingConfig:
    """How the sampler draws completions.

    Attributes:
        num_samples: completions drawn per prompt (k).
        max_new_tokens: the most tokens generated per completion.
        temperature: softmax temperature; 0 means greedy decoding (the k samples are then identical).
        top_p: nucleus sampling, keep the smallest set of tokens with this much probability; 1 = off.
        top_k: keep only the k most likely tokens; 0 = off.
        batch_size: prompts decoded at once, each with `num_samples` rows (one row when greedy): with
            `generate`, prompts per call; with `refill`, the batch holds at most this many prompts' rows.
        seed: base seed; with the round, prompt index and sample index it fixes every draw.
        stop_strings: optional strings that end a completion; the completion is cut before the first one.
        backend: `"auto"` (default): `"refill"` where it applies, else `"generate"`. `"refill"`: one
            prefill per prompt shared by its samples, finished rows replaced by waiting prompts; decoder-only
            models with a full-attention KV cache, not with sharded weights in lockstep (an error names
            what is missing). `"generate"`: `model.generate`, one row per sample. Both draw the same
            samples (see the module docstring).
    """

    num_samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    seed: int = 0
    stop_strings: list[str] | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        problems = []

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"`{name}` must be an integer >= 1, got {value!r}; set it to 1 or more.")

        for name in ("num_samples", "max_new_tokens", "batch_size"):
            positive_int(name)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            0.0 <= self.temperature < float("inf")
        ):
            problems.append(
                f"`temperature` must be a finite number >= 0, got {self.temperature!r}; use 0 for greedy "
                "decoding or e.g. 1.0 for plain sampling."
            )
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not (
            0.0 < self.top_p <= 1.0
        ):
            problems.append(
                f"`top_p` must be in (0, 1], got {self.top_p!r}; use 1.0 to turn nucleus sampling off."
            )
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"`top_k` must be an integer >= 0, got {self.top_k!r}; use 0 to turn top-k off.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            problems.append(f"`seed` must be an integer, got {self.seed!r}.")
        if self.stop_strings is not None and (
            not isinstance(self.stop_strings, (list, tuple))
            or not all(isinstance(s, str) and s for s in self.stop_strings)
        ):
            problems.append(
                f"`stop_strings` must be None or a list of non-empty strings, got {self.stop_strings!r}; "
                "e.g. ['\\n\\nQuestion:']."
            )
        if self.backend not in BACKENDS:
            problems.append(f"`backend` must be one of {', '.join(map(repr, BACKENDS))}, got {self.backend!r}.")
        if problems:
            raise ValueError("Invalid SamplingConfig:\n  - " + "\n  - ".join(problems))
        if self.stop_strings is not None:
            self.stop_strings = list(self.stop_strings)


class _RowwiseSampler(LogitsProcessor):
    """Draws each row's next token from that row's own uniform stream; greedy decoding then takes it.

    One uniform per decoding step, turned into a token by `draws.draw_tokens` (inverse CDF of the warped
    distribution).
    """

    def __init__(self, seeds: list[int], steps: int, config: SamplingConfig, device: torch.device):
        self.uniforms = sample_uniforms(seeds, steps, device)
        self.config = config
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Row r of `scores` is row r of the batch we built: `generate` never reorders rows without beams.
        assert scores.shape[0] == self.uniforms.shape[0], "generate changed the number of rows"
        column = min(self.step, self.uniforms.shape[1] - 1)
        self.step += 1
        cfg = self.config
        tokens = draw_tokens(scores, self.uniforms[:, column], cfg.temperature, cfg.top_k, cfg.top_p)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens[:, None], 0.0)


class Sampler:
    """Draws `config.num_samples` completions per prompt from `model` (causal or seq2seq, PEFT or not).

    The caller's tokenizer is only read (padding is done here, on the left); a tokenizer without a pad
    token pads with EOS. The model is put in eval mode for sampling and every module's previous mode
    is restored afterwards, also when generation raises. `backend` is the one `config.backend` resolved
    to for this model (`"refill"` or `"generate"`).

    `lockstep` is for a model whose parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3),
    where every forward pass is a collective that all ranks must join: pass the run's `Ranks`. Sampling
    then uses `generate` (`backend="refill"` is refused). Each `sample()` call runs as many `generate`
    calls as the busiest rank's (the others generate from a one-token dummy prompt and discard it), and
    `generate` keeps stepping until every rank's rows are done (`synced_gpus`). All ranks must make the
    same number of `sample()` calls.
    """

    def __init__(self, model, tokenizer, config: SamplingConfig | None = None, lockstep: Ranks | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.lockstep = lockstep
        self.config = config if config is not None else SamplingConfig()
        if not isinstance(self.config, SamplingConfig):
            raise TypeError(f"`config` must be a SamplingConfig, got {type(self.config).__name__}.")
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("The tokenizer has neither a pad token nor an EOS token; set `tokenizer.pad_token`.")
        self.pad_token_id = pad
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.backend = self._resolve_backend()

    def _resolve_backend(self) -> str:
        requested = self.config.backend
        if requested == "generate":
            return "generate"
        reason = refill_unsupported_reason(self.model, lockstep=self.lockstep is not None)
        if reason is not None and requested == "refill":
            raise ValueError(f"`backend='refill'` cannot sample from this model: {reason}. Use "
                             "`backend='generate'` (or `'auto'`, which picks it here).")
        if requested == "auto":
            logger.info("sampling backend 'auto' -> %s", f"'generate' ({reason})" if reason else "'refill'")
        return "generate" if reason else "refill"

    def sample(self, prompts: list[str], round_index: int, meta: list[dict] | None = None,
               prompt_offset: int = 0, progress: bool = False) -> list[Sample]:
        """Draw `num_samples` completions per prompt, returned ordered by (prompt_index, sample_index).

        `prompt_index` is `prompt_offset` + the prompt's position in `prompts` (so a shard of a round's
        prompts keeps the indices, and therefore the samples, it has in the whole list). `meta[i]` is
        shallow-copied into every sample of prompt i. `completion` is the decoded text up to (excluding)
        EOS or the first stop string; `completion_ids` are the generated ids *without* the EOS and
        without padding (with a stop string: the longest prefix whose decode is a prefix of
        `completion`); `finished` says EOS or a stop string was produced.
        """
        self._check_arguments(prompts, round_index, meta, prompt_offset)
        encoded = self.tokenizer(list(prompts), add_special_tokens=True)["input_ids"] if prompts else []
        empty = [i for i, ids in enumerate(encoded) if len(ids) == 0]
        if empty:
            raise ValueError(f"Prompts at positions {empty[:10]} tokenize to no tokens; remove or fill them.")
        # Longest first: a batch of similar lengths pads little, and an out-of-memory error shows up early.
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        with _eval_mode(self.model), torch.no_grad():
            if self.backend == "refill":
                rows = self._refill_rows(order, encoded, round_index, prompt_offset, progress)
            else:
                rows = self._generate_rows(order, encoded, round_index, prompt_offset, progress)
        samples = []
        for position, prompt in enumerate(prompts):
            prompt_meta = meta[position] if meta is not None else {}
            for j in range(self.config.num_samples):
                # Greedy draws the same completion k times: it was generated once.
                text, ids, finished = self._finish(rows[position][j % len(rows[position])])
                samples.append(Sample(prompt=prompt, completion=text, prompt_index=prompt_offset + position,
                                      sample_index=j, completion_ids=ids, finished=finished,
                                      meta=dict(prompt_meta)))
        return samples

    def _rows_per_prompt(self) -> int:
        return 1 if self.config.temperature == 0 else self.config.num_samples

    def _seeds(self, round_index: int, prompt_index: int) -> list[int]:
        return [sample_seed(self.config.seed, round_index, prompt_index, j) for j in range(self._rows_per_prompt())]

    def _refill_rows(self, order: list[int], encoded: list[list[int]], round_index: int, prompt_offset: int,
                     progress: bool) -> dict[int, list[list[int]]]:
        """Generated rows (ids, EOS included when drawn) of every prompt position, by the `refill` backend."""
        cfg = self.config
        stop = StopStringCriteria(self.tokenizer, cfg.stop_strings) if cfg.stop_strings else None
        decoder = RefillDecoder(self.model, rows_per_prompt=self._rows_per_prompt(),
                                capacity=cfg.batch_size * self._rows_per_prompt(), max_new_tokens=cfg.max_new_tokens,
                                temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id, stop_criteria=stop)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), desc=f"sampling round {round_index}", unit="prompt")
        try:
            seeds = [self._seeds(round_index, prompt_offset + i) for i in order]
            rows = decoder.run([encoded[i] for i in order], seeds,
                               on_prompt_done=None if bar is None else lambda _: bar.update(1))
        finally:
            if bar is not None:
                bar.close()
        return dict(zip(order, rows, strict=True))

    def _generate_rows(self, order: list[int], encoded: list[list[int]], round_index: int, prompt_offset: int,
                       progress: bool) -> dict[int, list[list[int]]]:
        """Generated rows (ids, then EOS and padding) of every prompt position, by the `generate` backend."""
        batches = [order[start : start + self.config.batch_size]
                   for start in range(0, len(order), self.config.batch_size)]
        device = _model_device(self.model)
        idle = 0 if self.lockstep is None else self.lockstep.max(len(batches), device) - len(batches)
        if progress and batches:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"sampling round {round_index}", unit="batch")
        rows: dict[int, list[list[int]]] = {}
        for batch in batches:
            rows.update(zip(batch, self._sample_batch(batch, encoded, round_index, prompt_offset), strict=True))
        for _ in range(idle):
            self._generate(torch.full((1, 1), self.pad_token_id, device=device), None)
        return rows

    def _sample_batch(self, batch: list[int], encoded: list[list[int]], round_index: int,
                      prompt_offset: int) -> list[list[list[int]]]:
        """One `generate` call for the prompts at positions `batch`: their rows, in `batch` order."""
        cfg = self.config
        rows_per_prompt = self._rows_per_prompt()
        device = _model_device(self.model)
        input_ids, attention_mask = left_pad([encoded[i] for i in batch], self.pad_token_id, device)
        input_ids = input_ids.repeat_interleave(rows_per_prompt, dim=0)
        attention_mask = attention_mask.repeat_interleave(rows_per_prompt, dim=0)

        processors = LogitsProcessorList()
        if cfg.temperature != 0:
            seeds = [s for position in batch for s in self._seeds(round_index, prompt_offset + position)]
            processors.append(_RowwiseSampler(seeds, cfg.max_new_tokens, cfg, device))
        output = self._generate(input_ids, processors, attention_mask)
        # Causal LMs return prompt + completion; seq2seq returns the decoder start token + completion.
        generated = output[:, 1:] if self.is_encoder_decoder else output[:, input_ids.shape[1]:]
        logger.debug("sampled %d rows x %d prompt tokens -> %d new tokens", *input_ids.shape,
                     generated.shape[1])
        generated = generated.tolist()
        return [generated[b * rows_per_prompt : (b + 1) * rows_per_prompt] for b in range(len(batch))]

    def _generate(self, input_ids: torch.Tensor, processors: LogitsProcessorList | None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`model.generate` with the loop's length, EOS, padding and stop strings, and nothing else."""
        cfg = self.config
        generation_config = GenerationConfig(
            **_NEUTRAL_GENERATION,
            max_new_tokens=cfg.max_new_tokens,
            use_cache=True,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids or None,
            stop_strings=cfg.stop_strings,
        )
        extra = {"tokenizer": self.tokenizer} if cfg.stop_strings else {}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                   generation_config=generation_config, logits_processor=processors,
                                   synced_gpus=self.lockstep is not None, **extra)

    def _finish(self, row: list[int]) -> tuple[str, list[int], bool]:
        """Cut one generated row at EOS (everything after it is padding) and at the first stop string."""
        eos = set(self.eos_token_ids)
        end = next((t for t, token in enumerate(row) if token in eos), None)
        finished = end is not None
        ids = row if end is None else row[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [text.find(s) for s in self.config.stop_strings or ()]
        hits = [h for h in hits if h >= 0]
        if not hits:
            return text, ids, finished
        text = text[: min(hits)]
        # A token may straddle the stop string; keep the ids whose text lies wholly inside the completion.
        n = len(ids)
        while n > 0 and not text.startswith(self.tokenizer.decode(ids[:n], skip_special_tokens=True)):
            n -= 1
        return text, ids[:n], True

    def _check_arguments(self, prompts, round_index, meta, prompt_offset) -> None:
        problems = []
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            problems.append("`prompts` must be a list of strings.")
        if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
            problems.append(f"`round_index` must be an integer >= 0, got {round_index!r}.")
        if isinstance(prompt_offset, bool) or not isinstance(prompt_offset, int) or prompt_offset < 0:
            problems.append(f"`prompt_offset` must be an integer >= 0, got {prompt_offset!r}.")
        if meta is not None:
            if not isinstance(meta, (list, tuple)) or not all(isinstance(m, dict) for m in meta):
                problems.append("`meta` must be None or a list of dicts, one per prompt.")
            elif isinstance(prompts, (list, tuple)) and len(meta) != len(prompts):
                problems.append(f"`meta` has {len(meta)} entries but there are {len(prompts)} prompts; "
                                "pass one dict per prompt.")
        if problems:
            raise ValueError("Invalid Sampler.sample arguments:\n  - " + "\n  - ".join(problems))


def _eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config names (chat models add end-of-turn)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(model_eos, int):
        model_eos = [model_eos]
    for token in model_eos or []:
        if token not in ids:
            ids.append(int(token))
    return ids


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Eval mode inside; afterwards every module's own previous train/eval flag is restored, even on error.

    Restoring per module (not `model.train(was_training)`) keeps submodules a caller froze in eval mode
    frozen. Gradients are turned off by the caller with `torch.no_grad()`, not `inference_mode`: buffers
    a model creates lazily during generation (e.g. rotary caches) must stay usable in training later.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
