"""The `generate` sampling backend: `model.generate`, one row per sample, each row drawn from its own stream.

`model.generate` runs *greedy* decoding with one extra logits processor, `_RowwiseSampler`, last in the
list, which draws each row's token from that row's uniform stream (`itersft.sampling.draws`) and returns
scores that are `-inf` except at the drawn token, so greedy's argmax takes exactly that token. Left-padded
batching, the KV cache, stopping at the stop ids, padding of finished rows and stop strings stay with
`generate`; each sample is its own row, as with `num_return_sequences` (the prompt is prefilled k times).

It works for every model `generate` supports: encoder-decoders, any cache layout, and sharded weights in
lockstep (`synced_gpus`, with idle calls so every rank makes as many `generate` calls as the busiest).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from itersft.distributed import Ranks
from itersft.sampling.draws import draw_tokens, sample_uniforms
from itersft.sampling.refill import left_pad

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


class _RowwiseSampler(LogitsProcessor):
    """Draws each row's next token from that row's own uniform stream; greedy decoding then takes it.

    One uniform per decoding step, turned into a token by `draws.draw_tokens` (inverse CDF of the warped
    distribution). `config` is the `SamplingConfig` (temperature, top_k, top_p are read).
    """

    def __init__(self, seeds: list[int], steps: int, config, device: torch.device):
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


def model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


class GenerateDecoder:
    """Runs prompts through `model.generate` in batches of `config.batch_size` prompts; one per `sample()` call.

    `config` is the `SamplingConfig`; `rows_per_prompt` is k (1 for greedy decoding, whose k samples are
    the same). `stop_token_ids` end a row (EOS, the chat template's end of turn). `lockstep`: see the
    module docstring.
    """

    def __init__(self, model, tokenizer, config, *, rows_per_prompt: int, stop_token_ids: list[int],
                 pad_token_id: int, lockstep: Ranks | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.k = rows_per_prompt
        self.stop_token_ids = stop_token_ids
        self.pad_token_id = pad_token_id
        self.lockstep = lockstep
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.device = model_device(model)  # looked up once: a sharded model's lookup can be slow

    def run(self, prompts: list[list[int]], seeds: list[list[int]],
            on_batch_done: Callable[[int], None] | None = None) -> list[list[list[int]]]:
        """Generated ids (then the stop token and padding) of each row of each prompt, in the order given.

        `seeds[i]` holds the k row seeds of prompt i (ignored when greedy). `on_batch_done(prompts_done)`
        is called after each batch with the number of prompts sampled so far.
        """
        size = self.config.batch_size
        batches = [range(start, min(start + size, len(prompts))) for start in range(0, len(prompts), size)]
        idle = 0 if self.lockstep is None else self.lockstep.max(len(batches), self.device) - len(batches)
        rows: list[list[list[int]]] = []
        for batch in batches:
            rows += self._generate_batch([prompts[i] for i in batch], [seeds[i] for i in batch])
            if on_batch_done is not None:
                on_batch_done(len(rows))
        for _ in range(idle):
            self._generate(torch.full((1, 1), self.pad_token_id, device=self.device), None)
        return rows

    def _generate_batch(self, prompts: list[list[int]], seeds: list[list[int]]) -> list[list[list[int]]]:
        """One `generate` call for `prompts`: their rows, prompt by prompt."""
        cfg = self.config
        input_ids, attention_mask = left_pad(prompts, self.pad_token_id, self.device)
        input_ids = input_ids.repeat_interleave(self.k, dim=0)
        attention_mask = attention_mask.repeat_interleave(self.k, dim=0)
        processors = LogitsProcessorList()
        if cfg.temperature != 0:
            row_seeds = [s for prompt_seeds in seeds for s in prompt_seeds]
            processors.append(_RowwiseSampler(row_seeds, cfg.max_new_tokens, cfg, self.device))
        output = self._generate(input_ids, processors, attention_mask)
        # Causal LMs return prompt + completion; seq2seq returns the decoder start token + completion.
        generated = output[:, 1:] if self.is_encoder_decoder else output[:, input_ids.shape[1]:]
        generated = generated.tolist()
        return [generated[b * self.k : (b + 1) * self.k] for b in range(len(prompts))]

    def _generate(self, input_ids: torch.Tensor, processors: LogitsProcessorList | None,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`model.generate` with the loop's length, stop ids, padding and stop strings, and nothing else."""
        cfg = self.config
        generation_config = GenerationConfig(
            **_NEUTRAL_GENERATION,
            max_new_tokens=cfg.max_new_tokens,
            use_cache=True,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.stop_token_ids or None,
            stop_strings=cfg.stop_strings,
        )
        extra = {"tokenizer": self.tokenizer} if cfg.stop_strings else {}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                   generation_config=generation_config, logits_processor=processors,
                                   synced_gpus=self.lockstep is not None, **extra)
