"""Draw k completions per prompt from the model being trained, reproducibly per sample.

Every random draw for sample `j` of prompt `i` in round `r` comes from its own `torch.Generator`, seeded
from a stable hash of `(seed, r, i, j)`. Prompts are sorted by token length before batching (a batch then
pads little), so which prompts share a batch, the batch size, the prompt order, and later which rank
samples a prompt must not change what is drawn; a per-row generator makes that true by construction.

How: `model.generate` runs *greedy* decoding with one extra logits processor, `_RowwiseSampler`, last in
the list. For each row it applies temperature, top-k and top-p, draws one token by inverse-CDF from a
uniform out of that row's generator, and returns scores that are `-inf` except at the drawn token, so
greedy's argmax takes exactly that token. Everything else (left-padded batching, KV cache, EOS handling,
padding of finished rows, stop strings) stays with `generate`.

Prompts are strings or chat messages; `itersft.loop.prompts` decides which get the chat template
(`SamplingConfig.chat_template`), renders them with the generation prompt, and adds the template's
end-of-turn token to the ids that stop generation; the completion is then the assistant turn's content.

Deliberately left out: beam search, prompt truncation, and sharing one prefill between the k samples of
a prompt (each is its own row, as `num_return_sequences` does). Reproducibility is exact as far as the
forward pass is batch-invariant: logits that differ in the last bits between batch shapes (common in
bf16 on GPU) can move a draw across a token boundary.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from itersft.checks import Problems, is_integer
from itersft.distributed import Ranks
from itersft.loop.prompts import Prompt, PromptRenderer, add_prompt_problems, is_chat_template_choice
from itersft.loop.samples import Sample

logger = logging.getLogger(__name__)

# Extra uniforms per row beyond `max_new_tokens`: `generate` may run a step or two past the last token
# when it defers its stop check; what those steps draw is discarded.
_SPARE_DRAWS = 4

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
        batch_size: prompts per `generate` call (each contributes `num_samples` rows).
        seed: base seed; with the round, prompt index and sample index it fixes every draw.
        stop_strings: optional strings that end a completion; the completion is cut before the first one.
        chat_template: whether plain string prompts go through the tokenizer's chat template as the user
            turn: True, False, or "auto" (the default: when the tokenizer has a template whose end-of-turn
            token the model stops at; see `itersft.loop.prompts`). Chat-message prompts always do. The
            loop trains in the format it sampled in.
        system_prompt: a system turn put first in every chat prompt that has none; needs the template.
    """

    num_samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16
    seed: int = 0
    stop_strings: list[str] | None = None
    chat_template: bool | str = "auto"
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        problems = Problems("SamplingConfig")
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            problems.integer(name, getattr(self, name), minimum=1)
        problems.number("temperature", self.temperature, minimum=0)  # 0: greedy decoding
        problems.number("top_p", self.top_p, minimum=0, maximum=1, exclusive_minimum=True)  # 1: off
        problems.integer("top_k", self.top_k, minimum=0)  # 0: off
        problems.integer("seed", self.seed)
        if self.stop_strings is not None and (
            not isinstance(self.stop_strings, (list, tuple))
            or not all(isinstance(s, str) and s for s in self.stop_strings)
        ):
            problems.add(f"`stop_strings` must be None or a list of non-empty strings, got {self.stop_strings!r}; "
                         "e.g. ['\\n\\nQuestion:'].")
        if not is_chat_template_choice(self.chat_template):
            problems.add(f"`chat_template` must be true, false or 'auto', got {self.chat_template!r}.")
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str) or not self.system_prompt):
            problems.add(f"`system_prompt` must be None or a non-empty string, got {self.system_prompt!r}.")
        problems.raise_if_any()
        if self.stop_strings is not None:
            self.stop_strings = list(self.stop_strings)


def sample_seed(seed: int, round_index: int, prompt_index: int, sample_index: int) -> int:
    """The generator seed of one sample: a stable 63-bit hash of its coordinates (same on every process).

    Python's `hash()` is salted per process, so it would give each rank different samples.
    """
    key = f"itersft-sample:{seed}:{round_index}:{prompt_index}:{sample_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


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


class _RowwiseSampler(LogitsProcessor):
    """Draws each row's next token from that row's own generator; greedy decoding then takes it.

    Each row gets a stream of uniforms from a CPU `torch.Generator` (so a CPU test and a CUDA rank draw
    the same numbers), one per decoding step, turned into a token by inverse-CDF on the warped
    distribution. This is `torch.multinomial(probs, 1, generator=g)` in distribution, but vectorised over
    rows: one kernel per step instead of one `multinomial` call per row.
    """

    def __init__(self, seeds: list[int], steps: int, config: SamplingConfig, device: torch.device):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        uniforms = torch.stack([torch.rand(steps + _SPARE_DRAWS, generator=g) for g in generators])
        self.uniforms = uniforms.to(device)
        self.config = config
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Row r of `scores` is row r of the batch we built: `generate` never reorders rows without beams.
        assert scores.shape[0] == self.uniforms.shape[0], "generate changed the number of rows"
        column = min(self.step, self.uniforms.shape[1] - 1)
        self.step += 1
        cfg = self.config
        probs = warp_scores(scores.float(), cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)
        cdf = probs.cumsum(dim=-1)
        # Scale by the row's total so float error in the cumsum cannot push the target past the end.
        target = self.uniforms[:, column : column + 1].to(cdf.dtype) * cdf[:, -1:]
        tokens = torch.searchsorted(cdf, target, right=True).clamp_(max=scores.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, tokens, 0.0)


class Sampler:
    """Draws `config.num_samples` completions per prompt from `model` (causal or seq2seq, PEFT or not).

    The caller's tokenizer is only read (padding is done here, on the left); a tokenizer without a pad
    token pads with EOS. How prompts are rendered, and which ids end a completion, is `self.renderer`'s
    (`itersft.loop.prompts.PromptRenderer`, built from the config's `chat_template` and `system_prompt`).
    The model is put in eval mode for sampling and every module's previous mode is restored afterwards,
    also when generation raises.

    `lockstep` is for a model whose parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3),
    where every forward pass is a collective that all ranks must join: pass the run's `Ranks`. Each
    `sample()` call then runs as many `generate` calls as the busiest rank's (the others generate from a
    one-token dummy prompt and discard it), and `generate` keeps stepping until every rank's rows are
    done (`synced_gpus`). Each rank makes one `sample()` call per phase (a round's draw, an evaluation)
    with its own share of the prompts, which may be empty.
    """

    def __init__(self, model, tokenizer, config: SamplingConfig | None = None, lockstep: Ranks | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.lockstep = lockstep
        self.config = config if config is not None else SamplingConfig()
        if not isinstance(self.config, SamplingConfig):
            raise TypeError(f"`config` must be a SamplingConfig, got {type(self.config).__name__}.")
        self.renderer = PromptRenderer(tokenizer, model, self.config.chat_template, self.config.system_prompt)
        self.eos_token_ids = self.renderer.stop_token_ids
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an EOS token; set `tokenizer.pad_token`."
            )
        self.pad_token_id = pad
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))

    def sample(self, prompts: list[Prompt], round_index: int, meta: list[dict] | None = None,
               prompt_indices: list[int] | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[Sample]:
        """Draw `num_samples` completions per prompt, returned in the prompts' order, then by sample_index.

        `prompt_indices[i]` is prompt i's index in the caller's whole prompt list (default: its position
        in `prompts`); it is the sample's `prompt_index` and, with the round and the sample index, fixes
        the draw, so a shard of the prompts gets the samples it would get in the whole list. `meta[i]` is
        shallow-copied into every sample of prompt i; `messages` is the conversation the prompt was
        rendered as (None for raw text). `completion` is the decoded text up to (excluding) EOS, the
        end-of-turn token or the first stop string; `completion_ids` are the generated ids *without*
        that token and without padding (with a stop string: the longest prefix whose decode is a prefix
        of `completion`); `finished` says a stop token or a stop string was produced. `progress(done,
        total)` is called after each batch of prompts with the prompts sampled so far.
        """
        self._check_arguments(prompts, round_index, meta, prompt_indices)
        if prompt_indices is None:
            prompt_indices = list(range(len(prompts)))
        encoded = self.renderer.encode(list(prompts))
        empty = [i for i, ids in enumerate(encoded) if len(ids) == 0]
        if empty:
            raise ValueError(f"Prompts at positions {empty[:10]} tokenize to no tokens; remove or fill them.")
        # Longest first: a batch of similar lengths pads little, and an out-of-memory error shows up early.
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
        batches = [order[start : start + self.config.batch_size]
                   for start in range(0, len(order), self.config.batch_size)]
        device = _model_device(self.model)
        idle = 0 if self.lockstep is None else self.lockstep.max(len(batches), device) - len(batches)
        if not batches and not idle:
            return []

        results: dict[int, list[Sample]] = {}
        with _eval_mode(self.model), torch.no_grad():
            for batch in batches:
                for position, samples in zip(batch, self._sample_batch(batch, encoded, round_index,
                                                                      prompt_indices), strict=True):
                    prompt_meta = meta[position] if meta is not None else {}
                    for s in samples:
                        s.prompt = prompts[position]
                        s.messages = self.renderer.conversation(prompts[position])
                        s.meta = dict(prompt_meta)
                    results[position] = samples
                if progress is not None:
                    progress(len(results), len(prompts))
            for _ in range(idle):
                self._generate(torch.full((1, 1), self.pad_token_id, device=device), None)
        return [s for position in range(len(prompts)) for s in results[position]]

    def _sample_batch(self, batch: list[int], encoded: list[list[int]], round_index: int,
                      prompt_indices: list[int]) -> list[list[Sample]]:
        """Generate for the prompts at positions `batch`: a list of k samples per prompt, in `batch` order."""
        cfg = self.config
        greedy = cfg.temperature == 0
        # Greedy draws the same completion k times: generate it once and copy it.
        rows_per_prompt = 1 if greedy else cfg.num_samples
        device = _model_device(self.model)
        input_ids, attention_mask = self._left_pad([encoded[i] for i in batch], device)
        input_ids = input_ids.repeat_interleave(rows_per_prompt, dim=0)
        attention_mask = attention_mask.repeat_interleave(rows_per_prompt, dim=0)

        processors = LogitsProcessorList()
        if not greedy:
            seeds = [sample_seed(cfg.seed, round_index, prompt_indices[position], j)
                     for position in batch for j in range(rows_per_prompt)]
            processors.append(_RowwiseSampler(seeds, cfg.max_new_tokens, cfg, device))
        output = self._generate(input_ids, processors, attention_mask)
        # Causal LMs return prompt + completion; seq2seq returns the decoder start token + completion.
        generated = output[:, 1:] if self.is_encoder_decoder else output[:, input_ids.shape[1]:]
        logger.debug("sampled %d rows x %d prompt tokens -> %d new tokens", *input_ids.shape,
                     generated.shape[1])

        grouped = []
        for b, position in enumerate(batch):
            samples = []
            for j in range(cfg.num_samples):
                row = generated[b * rows_per_prompt + (0 if greedy else j)].tolist()
                text, ids, finished = self._finish(row)
                samples.append(Sample(prompt="", completion=text, prompt_index=prompt_indices[position],
                                      sample_index=j, completion_ids=ids, finished=finished))
            grouped.append(samples)
        return grouped

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

    def _left_pad(self, rows: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad token id lists into (ids, attention_mask); done here so the tokenizer is never mutated."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(device), mask.to(device)

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

    def _check_arguments(self, prompts, round_index, meta, prompt_indices) -> None:
        problems = Problems("Sampler.sample arguments")
        add_prompt_problems(prompts, problems)
        problems.integer("round_index", round_index, minimum=0)
        for name, values in (("meta", meta), ("prompt_indices", prompt_indices)):
            if values is None:
                continue
            if not isinstance(values, (list, tuple)):
                problems.add(f"`{name}` must be None or a list with one entry per prompt, got {type(values).__name__}.")
            elif isinstance(prompts, (list, tuple)) and len(values) != len(prompts):
                problems.add(f"`{name}` has {len(values)} entries but there are {len(prompts)} prompts; "
                             "pass one per prompt.")
            elif name == "meta" and not all(isinstance(m, dict) for m in values):
                problems.add("`meta` must be None or a list of dicts, one per prompt.")
            elif name == "prompt_indices" and not all(is_integer(i) and i >= 0 for i in values):
                problems.add("`prompt_indices` must hold ints >= 0 (each prompt's index in your prompt list).")
        problems.raise_if_any()


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


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
