"""Draw k completions per prompt from the model being trained, reproducibly per sample.

Every random draw for sample `j` of prompt `i` in round `r` comes from its own uniform stream, seeded
from a stable hash of `(seed, r, i, j)` (`itersft.sampling.draws`). Which prompts share a batch, the batch
size, the prompt order, and later which rank samples a prompt therefore do not change what is drawn.

Prompts are strings or chat messages; `itersft.sampling.prompts` decides which get the chat template
(`SamplingConfig.chat_template`), renders them with the generation prompt, and adds the template's
end-of-turn token to the ids that stop generation; the completion is then the assistant turn's content.
Both backends below sample from those same prompt ids and stop at those same ids.

Two backends draw these same samples (`SamplingConfig.backend`):

* `refill` (`itersft.sampling.refill`): one prefill per prompt shared by its k samples, finished rows
  dropped at once and waiting prompts admitted into their slots. Decoder-only models with a plain
  full-attention KV cache, not in lockstep.
* `generate` (`itersft.sampling.generate_backend`): `model.generate` with one row per sample, as
  `num_return_sequences` does. Every model `generate` supports, also sharded weights in lockstep
  (`synced_gpus`) and encoder-decoders.

`auto`, the default, is `refill` where it applies, else `generate` (logged). Prompts are sorted by token
length, longest first, so batched prompts pad little.

Deliberately left out: beam search, prompt truncation. Reproducibility is exact as far as the forward
pass is batch-invariant: logits that differ in the last bits between batch shapes (common in bf16 on
GPU) can move a draw across a token boundary; for the same reason the two backends agree sample for
sample only up to such boundary cases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StopStringCriteria

from itersft.checks import Problems, is_integer
from itersft.distributed import Ranks
from itersft.sampling.draws import sample_seed, warp_scores
from itersft.sampling.generate_backend import GenerateDecoder
from itersft.sampling.prompts import Prompt, PromptRenderer, add_prompt_problems, is_chat_template_choice
from itersft.sampling.refill import RefillDecoder, refill_unsupported_reason
from itersft.sampling.samples import Sample

__all__ = ["BACKENDS", "Sampler", "SamplingConfig", "sample_seed", "warp_scores"]
logger = logging.getLogger(__name__)

BACKENDS = ("auto", "refill", "generate")


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
            It does not change what is sampled, so it is not part of a loop run's identity (`run_identity`).
        seed: base seed; with the round, prompt index and sample index it fixes every draw.
        stop_strings: optional strings that end a completion; the completion is cut before the first one.
        chat_template: whether plain string prompts go through the tokenizer's chat template as the user
            turn: True, False, or "auto" (the default: when the tokenizer has a template whose end-of-turn
            token the model stops at; see `itersft.sampling.prompts`). Chat-message prompts always do. The
            loop trains in the format it sampled in.
        system_prompt: a system turn put first in every chat prompt that has none; needs the template.
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
    batch_size: int = field(default=16, metadata={"identity": False})
    seed: int = 0
    stop_strings: list[str] | None = None
    chat_template: bool | str = "auto"
    system_prompt: str | None = None
    backend: str = "auto"

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
        problems.choice("backend", self.backend, BACKENDS)
        problems.raise_if_any()
        if self.stop_strings is not None:
            self.stop_strings = list(self.stop_strings)


class Sampler:
    """Draws `config.num_samples` completions per prompt from `model` (causal or seq2seq, PEFT or not).

    The caller's tokenizer is only read (padding is done here, on the left); a tokenizer without a pad
    token pads with EOS. How prompts are rendered, and which ids end a completion, is `self.renderer`'s
    (`itersft.sampling.prompts.PromptRenderer`, built from the config's `chat_template` and `system_prompt`).
    The model is put in eval mode for sampling and every module's previous mode is restored afterwards,
    also when generation raises. `backend` is the one `config.backend` resolved to for this model
    (`"refill"` or `"generate"`).

    `lockstep` is for a model whose parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3),
    where every forward pass is a collective that all ranks must join: pass the run's `Ranks`. Sampling
    then uses `generate` (`backend="refill"` is refused). Each `sample()` call runs as many `generate`
    calls as the busiest rank's (the others generate from a one-token dummy prompt and discard it), and
    `generate` keeps stepping until every rank's rows are done (`synced_gpus`). Each rank makes one
    `sample()` call per phase (a round's draw, an evaluation) with its own share of the prompts, which
    may be empty.
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
            raise ValueError("The tokenizer has neither a pad token nor an EOS token; set `tokenizer.pad_token`.")
        self.pad_token_id = pad
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
        of `completion`); `finished` says a stop token or a stop string was produced, `stop_token_id`
        which stop token it was. `progress(done, total)` is called as prompts complete (after each
        `generate` call, or as each prompt's last row finishes with `refill`) with the number of prompts
        sampled so far.
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
        seeds = [self._seeds(round_index, prompt_indices[i]) for i in order]
        report = None if progress is None else (lambda done: progress(done, len(prompts)))
        with _eval_mode(self.model), torch.no_grad():
            ordered_rows = self._decode([encoded[i] for i in order], seeds, report)
        rows = dict(zip(order, ordered_rows, strict=True))
        samples = []
        for position, prompt in enumerate(prompts):
            prompt_meta = meta[position] if meta is not None else {}
            for j in range(self.config.num_samples):
                # Greedy draws the same completion k times: it was generated once.
                text, ids, finished, stop_token = self._finish(rows[position][j % len(rows[position])])
                samples.append(Sample(prompt=prompt, completion=text, prompt_index=prompt_indices[position],
                                      sample_index=j, completion_ids=ids, finished=finished,
                                      meta=dict(prompt_meta), messages=self.renderer.conversation(prompt),
                                      stop_token_id=stop_token))
        return samples

    def _rows_per_prompt(self) -> int:
        return 1 if self.config.temperature == 0 else self.config.num_samples

    def _seeds(self, round_index: int, prompt_index: int) -> list[int]:
        return [sample_seed(self.config.seed, round_index, prompt_index, j) for j in range(self._rows_per_prompt())]

    def _decode(self, prompts: list[list[int]], seeds: list[list[int]],
                report: Callable[[int], None] | None) -> list[list[list[int]]]:
        """Each prompt's generated rows (ids, then the stop token when drawn, maybe padding), by the backend."""
        cfg, k = self.config, self._rows_per_prompt()
        if self.backend == "generate":
            decoder = GenerateDecoder(self.model, self.tokenizer, cfg, rows_per_prompt=k,
                                      stop_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id,
                                      lockstep=self.lockstep)
            return decoder.run(prompts, seeds, on_batch_done=report)
        stop = StopStringCriteria(self.tokenizer, cfg.stop_strings) if cfg.stop_strings else None
        decoder = RefillDecoder(self.model, rows_per_prompt=k, capacity=cfg.batch_size * k,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p, eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id,
                                stop_criteria=stop)
        done = 0

        def prompt_done(_: int) -> None:
            nonlocal done
            done += 1
            report(done)

        return decoder.run(prompts, seeds, on_prompt_done=None if report is None else prompt_done)

    def _finish(self, row: list[int]) -> tuple[str, list[int], bool, int | None]:
        """Cut one generated row at its stop token (everything after it is padding) and at the first stop
        string: (text, ids, finished, the stop token that ended it or None)."""
        eos = set(self.eos_token_ids)
        end = next((t for t, token in enumerate(row) if token in eos), None)
        finished = end is not None
        ids = row if end is None else row[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hits = [text.find(s) for s in self.config.stop_strings or ()]
        hits = [h for h in hits if h >= 0]
        if not hits:
            return text, ids, finished, None if end is None else row[end]
        text = text[: min(hits)]
        # A token may straddle the stop string; keep the ids whose text lies wholly inside the completion.
        n = len(ids)
        while n > 0 and not text.startswith(self.tokenizer.decode(ids[:n], skip_special_tokens=True)):
            n -= 1
        return text, ids[:n], True, None

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
