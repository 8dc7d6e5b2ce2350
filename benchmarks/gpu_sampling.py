"""Sampling on one device: itersft's `Sampler` against batched `generate(..., num_return_sequences=k)`.

The baseline is what a loop without itersft calls: one `generate` over a batch of left-padded prompts
with `do_sample=True, num_return_sequences=k` (the prompt's KV cache is built once per row). The
`Sampler` runs with its default settings (and so its default backend) at the same temperature, k,
`max_new_tokens` and prompts-per-call. EOS is switched off in both (the weights are random, or EOS
would end rows at random places), so every completion is `max_new_tokens` long and both do the same
work; sampled tokens are counted from what each returns all the same. `gpu.sh` runs this in bf16 on
a GPU (weights cast to bf16 for both); `--device cpu --tiny` is its smoke run.

Method: one warm-up call each, then `--rounds` rounds, the two systems alternating (the order
flipping between rounds), CUDA synchronised around every timed call; the ratio is the median of the
per-round ratios of sampled tokens/s.

    python benchmarks/gpu_sampling.py --device cuda --bf16 --model smollm2-135m
    python benchmarks/gpu_sampling.py --device cpu --model tiny --prompts 4 --max-new-tokens 8 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import header, median, quiet_transformers, snapshot, table  # noqa: E402
from _models import MODELS, prepare_model  # noqa: E402


class NoEos:
    """The tokenizer as the Sampler sees it, minus EOS (it still pads with the pad token)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return None if name in ("eos_token_id", "eos_token") else getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


def prompts_of(count: int, seed: int = 0) -> list[str]:
    """Prompts of 16-64 letters (one byte-level token each), fixed by `seed`."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(16, 65, (count,), generator=generator).tolist()
    return ["".join(chr(97 + c) for c in torch.randint(0, 26, (n,), generator=generator).tolist()) for n in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(MODELS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--bf16", action="store_true", help="cast the weights to bf16 for both systems")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-prompts", type=int, default=32, help="prompts per call, both systems")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet_transformers()

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from itersft.sampling.sampler import Sampler, SamplingConfig

    model_dir = prepare_model(args.model, Path(tempfile.mkdtemp()))
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    prompts = prompts_of(args.prompts)
    sampler = Sampler(model, NoEos(tokenizer), SamplingConfig(num_samples=args.k, max_new_tokens=args.max_new_tokens,
                                                              temperature=1.0, batch_size=args.batch_prompts, seed=0))
    plain = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
                             min_new_tokens=args.max_new_tokens, num_return_sequences=args.k,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=None)

    def batched_generate(round_index: int) -> int:
        tokens = 0
        with torch.no_grad():
            for start in range(0, len(prompts), args.batch_prompts):
                batch = tokenizer(prompts[start : start + args.batch_prompts], return_tensors="pt", padding=True,
                                  padding_side="left").to(args.device)
                generated = model.generate(**batch, generation_config=plain)[:, batch["input_ids"].shape[1]:]
                tokens += int((generated != tokenizer.pad_token_id).sum())
        return tokens

    def itersft_sampler(round_index: int) -> int:
        return sum(len(s.completion_ids) for s in sampler.sample(prompts, round_index=round_index))

    systems = {f"batched generate(num_return_sequences={args.k})": batched_generate,
               "itersft Sampler (defaults)": itersft_sampler}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rates = {name: [] for name in systems}
    began = snapshot()
    for round_index in range(args.rounds + 1):  # round 0 warms up
        names = list(systems) if round_index % 2 else list(systems)[::-1]
        for name in names:
            sync()
            started = time.perf_counter()
            tokens = systems[name](round_index)
            sync()
            if round_index:
                rates[name].append(tokens / (time.perf_counter() - started))
    base = rates[next(iter(systems))]
    rows = [[name, f"{median(values):,.0f}", f"**{median([v / b for v, b in zip(values, base)]):.2f}x**",
             " ".join(f"{v / b:.2f}" for v, b in zip(values, base))] for name, values in rates.items()]
    backend = getattr(sampler, "backend", "generate")
    print(header(f"sampling: {args.model} ({MODELS[args.model]['label']}), {'bf16' if args.bf16 else 'float32'} on "
                 f"{args.device}; {args.prompts} prompts of 16-64 tokens x k={args.k}, {args.max_new_tokens} new "
                 f"tokens (EOS off), {args.batch_prompts} prompts per call; Sampler backend {backend!r}; 1 warm-up + "
                 f"{args.rounds} rounds, median of per-round ratios", device=args.device, started=began))
    print(table(rows, ["system", "sampled tokens/s", "vs batched generate", "per round"]))


if __name__ == "__main__":
    main()
