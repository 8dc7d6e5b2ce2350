"""The `refill` sampling backend: one prefill per prompt for its k samples, and a batch that stays busy.

`model.generate(num_return_sequences=k)` copies each prompt k times *before* the prefill, so the prompt
is run through the model k times; it steps every row until the longest row of the batch is done, so rows
that drew EOS keep being computed; and its cache copies itself whole at every step (`torch.cat`). This
decoder instead:

1. prefills each prompt once (prompts admitted together are left-padded into one forward pass) and
   writes its keys/values into k rows of preallocated buffers, one row per sample (`refill_slots`);
2. decodes one token per live row per step, each row with its own position ids and attention mask;
   token t of sample j of prompt i is drawn from that sample's own uniform stream
   (`draws.sample_uniforms`, column t), exactly as the `generate` backend draws it;
3. retires a row when it draws EOS, completes a stop string or reaches `max_new_tokens`: its slot is
   freed at once (the batch computes no finished row), and as soon as k slots are free the next waiting
   prompt is prefilled into them, so the batch stays at `capacity` rows while prompts wait.

Draws depend on (seed, round, prompt, sample) and the logits only, so the samples do not depend on the
batch size, the order of the prompts or the other prompts in the batch, as far as the forward pass is
batch-invariant (see the sampler's docstring). Stop strings are matched within the completion only.

Deliberately left out: encoder-decoders, caches other than a plain full-attention `DynamicCache`
(sliding-window, hybrid, linear-attention, KV-sharing layers), generation-config processors that
`generate` would add (`suppress_tokens`, `begin_suppress_tokens`, `forced_bos_token_id`), and sharded
weights run in lockstep: `refill_unsupported_reason` names which, and the sampler uses `generate` there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import DynamicCache, GenerationMixin
from transformers.cache_utils import DynamicLayer

from itersft.sampling.draws import SPARE_DRAWS, draw_tokens, sample_uniforms
from itersft.sampling.refill_slots import RowSlots

# Generation-config fields under which `generate` adds a processor this decoder does not apply.
_UNSUPPORTED_GENERATION_FIELDS = ("suppress_tokens", "begin_suppress_tokens", "forced_bos_token_id")


def _base_model(model):
    """The transformers model under a PEFT wrapper (whose forward only passes keywords through)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _forward_parameters(model) -> set[str]:
    """The keywords the model's class accepts in `forward` (the class's: wrappers set on the instance hide them)."""
    return set(inspect.signature(type(_base_model(model)).forward).parameters)


def refill_unsupported_reason(model, lockstep: bool) -> str | None:
    """Why this decoder cannot sample from `model`, or None when it can."""
    if lockstep:
        return ("the weights are sharded and sampled in lockstep (`synced_gpus`), which this decoder does not "
                "implement")
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return "the model is an encoder-decoder"
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return "its PEFT adapter learns prompt tokens, which `generate` prepends"
    name, parameters = type(_base_model(model)).__name__, _forward_parameters(model)
    if "position_ids" not in parameters:
        return f"{name}.forward takes no `position_ids`"
    if "cache" not in parameters and "past_key_values" not in parameters:
        return f"{name}.forward takes no KV cache"
    if type(_base_model(model)).prepare_inputs_for_generation is not GenerationMixin.prepare_inputs_for_generation:
        # Multimodal, recurrent and some rope-scaled models feed `generate` differently; this decoder
        # calls `forward` directly, so it only vouches for models that use the default preparation.
        return f"{name} overrides `prepare_inputs_for_generation`"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as error:  # a config the cache cannot read: the decoder cannot vouch for it
        return f"its KV cache layout could not be read from the config ({error})"
    odd = sorted({type(layer).__name__ for layer in layers if type(layer) is not DynamicLayer})
    if odd:
        return f"its KV cache has {', '.join(odd)} layers, not only full-attention `DynamicLayer`s"
    generation_config = getattr(model, "generation_config", None)
    set_fields = [f for f in _UNSUPPORTED_GENERATION_FIELDS if getattr(generation_config, f, None) is not None]
    if set_fields:
        return f"its generation config sets {', '.join(set_fields)}, which `generate` would apply"
    return None


def left_pad(rows: list[list[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (ids, attention_mask); done here so the tokenizer is never mutated."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


class RefillDecoder:
    """Runs prompts through the model as described in the module docstring; one instance per `sample()` call.

    `rows_per_prompt` is k (1 for greedy decoding, which argmaxes). `capacity` is the most rows decoded at
    once. `stop_criteria` is a `StopStringCriteria` or None.
    """

    def __init__(self, model, *, rows_per_prompt: int, capacity: int, max_new_tokens: int, temperature: float,
                 top_k: int, top_p: float, eos_token_ids: list[int], pad_token_id: int, stop_criteria=None):
        self.model = model
        self.k = rows_per_prompt
        self.capacity = max(capacity, rows_per_prompt)
        self.max_new_tokens = max_new_tokens
        self.warp = (temperature, top_k, top_p)
        self.device = next(model.parameters()).device
        self.eos = torch.tensor(eos_token_ids or [-1], dtype=torch.long, device=self.device)
        self.pad_token_id = pad_token_id
        self.stop_criteria = stop_criteria
        parameters = _forward_parameters(model)
        self.cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}

    def run(self, prompts: list[list[int]], seeds: list[list[int]],
            on_prompt_done: Callable[[int], None] | None = None) -> list[list[list[int]]]:
        """Generated ids (EOS included when drawn) of each row of each prompt, prompts in the order given.

        Prompts are admitted in the order given; `seeds[i]` holds the k row seeds of prompt i (ignored
        when greedy). `on_prompt_done(i)` is called when the last row of prompt i retires.
        """
        window = None if self.stop_criteria is None else self.stop_criteria.maximum_token_len
        slots = RowSlots(self.capacity, self.max_new_tokens, self.max_new_tokens + SPARE_DRAWS, window, self.device)
        results: list[list[list[int]]] = [[[] for _ in range(self.k)] for _ in prompts]
        rows_left = [self.k] * len(prompts)
        waiting = list(range(len(prompts)))
        while waiting or slots.n:
            admit = min(len(waiting), (self.capacity - slots.n) // self.k)
            if admit:
                chosen, waiting = waiting[:admit], waiting[admit:]
                self._prefill(slots, chosen, [prompts[i] for i in chosen], [seeds[i] for i in chosen])
            else:
                self._step(slots)
            done = self._finished(slots)
            for row in done.nonzero()[:, 0].tolist():
                prompt, sample = divmod(slots.owner[row], self.k)
                results[prompt][sample] = slots.tokens[row, : int(slots.count[row])].tolist()
                rows_left[prompt] -= 1
                if rows_left[prompt] == 0 and on_prompt_done is not None:
                    on_prompt_done(prompt)
            slots.retire(done)
        return results

    def _forward(self, input_ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_keyword: cache}, **self.extra)
        return out.logits[:, -1].float()

    def _prefill(self, slots: RowSlots, chosen: list[int], prompts: list[list[int]], seeds: list[list[int]]) -> None:
        """Prefill `prompts` once each (one forward pass), draw the first token of each of their k rows and
        add the rows to `slots`; rows i*k .. i*k+k-1 of the new ones are prompt i's."""
        ids, mask = left_pad(prompts, self.pad_token_id, self.device)
        cache = DynamicCache(config=self.model.config)
        positions = (mask.cumsum(dim=-1) - 1).clamp_(min=0)
        logits = self._forward(ids, mask, positions, cache).repeat_interleave(self.k, dim=0)
        if not all(type(layer) is DynamicLayer and layer.is_initialized for layer in cache.layers):
            raise RuntimeError("The model filled its KV cache with layers the refill backend cannot regroup; "
                               "set `SamplingConfig(backend='generate')`.")
        rows = len(prompts) * self.k
        if self.warp[0] == 0:  # greedy: no uniforms needed
            uniforms = torch.zeros(rows, self.max_new_tokens + SPARE_DRAWS, device=self.device)
        else:
            uniforms = sample_uniforms([s for row_seeds in seeds for s in row_seeds], self.max_new_tokens, self.device)
        first = draw_tokens(logits, uniforms[:, 0], *self.warp)
        tokens = torch.zeros((rows, self.max_new_tokens), dtype=torch.long, device=self.device)
        tokens[:, 0] = first
        extra = {}
        if self.stop_criteria is not None:
            # Filled with an id past the vocabulary, which no stop string matches: only completions count.
            window = torch.full((rows, self.stop_criteria.maximum_token_len), torch.iinfo(torch.int32).max,
                                dtype=torch.long, device=self.device)
            window[:, -1] = first
            extra["window"] = window
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        slots.admit([(layer.keys, layer.values) for layer in cache.layers], mask, self.k,
                    [prompt * self.k + j for prompt in chosen for j in range(self.k)],
                    positions=lengths.repeat_interleave(self.k), last=first, tokens=tokens,
                    count=torch.ones(rows, dtype=torch.long, device=self.device), uniforms=uniforms, **extra)

    def _step(self, slots: RowSlots) -> None:
        """Feed every live row its latest token and draw the next one."""
        n = slots.n
        slots.open_column()
        logits = self._forward(slots.last[:n, None], slots.mask[:n, : slots.t + 1], slots.positions[:n, None],
                               slots.cache)
        slots.close_column()
        count = slots.count[:n]
        drawn = draw_tokens(logits, slots.uniforms[:n].gather(1, count[:, None])[:, 0], *self.warp)
        slots.tokens[:n].scatter_(1, count.clamp(max=self.max_new_tokens - 1)[:, None], drawn[:, None])
        count += 1
        slots.last[:n] = drawn
        slots.positions[:n] += 1
        if slots.window is not None:
            slots.window[:n] = torch.cat([slots.window[:n, 1:], drawn[:, None]], dim=1)

    def _finished(self, slots: RowSlots) -> torch.Tensor:
        """(n,) True for the live rows whose latest token ends them."""
        n = slots.n
        done = torch.isin(slots.last[:n], self.eos) | (slots.count[:n] >= self.max_new_tokens)
        if slots.window is not None:
            done |= self.stop_criteria(slots.window[:n], None).to(done.device)
        return done
