"""Benchmark 3: batched k-sample generation (`itersft.loop.sampler.Sampler`) against per-prompt calls.

32 prompts of 8-40 tokens, k=4 samples each, 32 new tokens, temperature 1. The Sampler puts 16
prompts x 4 samples in one `generate` call (left-padded, KV cache) and draws every sample from its own
seeded generator; the baseline calls `model.generate(do_sample=True, num_return_sequences=4)` once
per prompt (already batched over the k samples of a prompt). Model: the Qwen2-style model of
`_common.py` with the byte-level toy tokenizer's 260-token vocabulary (so samples decode), ~4M
parameters. EOS is not a stop here (the tokenizer's EOS is masked out of both), so both generate the
same number of tokens.

    .venv/bin/python benchmarks/bench_sampling.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, median, save_model, table  # noqa: E402

PROMPTS, K, NEW_TOKENS = 32, 4, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up round")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from itersft.loop.sampler import Sampler, SamplingConfig

    model_dir = save_model(Path(tempfile.mkdtemp()) / "model", vocab_size=260)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # No EOS: every completion is NEW_TOKENS long in both systems, so they do the same work.
    model.generation_config.eos_token_id = None
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(8, 41, (PROMPTS,), generator=generator).tolist()
    prompts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=generator)) for n in lengths]

    class NoEos:  # the tokenizer as the Sampler sees it, minus EOS (pads with <pad>)
        def __getattr__(self, name):
            return None if name == "eos_token_id" else getattr(tokenizer, name)

        def __call__(self, *a, **k):
            return tokenizer(*a, **k)

    sampler = Sampler(model, NoEos(), SamplingConfig(num_samples=K, max_new_tokens=NEW_TOKENS, temperature=1.0,
                                                      batch_size=16, seed=0, chat_template=False))
    plain = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=NEW_TOKENS,
                             min_new_tokens=NEW_TOKENS, num_return_sequences=K, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=None)

    def per_prompt(round_index):
        out = []
        with torch.no_grad():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt")
                generated = model.generate(**ids, generation_config=plain)
                out += tokenizer.batch_decode(generated[:, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    systems = {
        "per-prompt model.generate (num_return_sequences=4)": per_prompt,
        "itersft Sampler (16 prompts x 4 samples per call)": lambda r: sampler.sample(prompts, round_index=r),
    }
    seconds = {name: [] for name in systems}
    for round_index in range(args.rounds + 1):
        for name, run in systems.items():
            started = time.perf_counter()
            samples = run(round_index)
            assert len(samples) == PROMPTS * K
            if round_index:
                seconds[name].append(time.perf_counter() - started)
    base = PROMPTS * K / median(seconds[next(iter(systems))])
    rows = []
    for name, values in seconds.items():
        rate = PROMPTS * K / median(values)
        rows.append([name, f"{rate / base:.2f}x", f"{rate:,.1f}", f"{median(values):.2f}",
                     " ".join(f"{v:.2f}" for v in values)])
    print(f"# sampling: {PROMPTS} prompts x {K} samples, {NEW_TOKENS} new tokens each; {args.rounds} rounds + 1 "
          "warm-up; medians")
    print(f"# machine: {machine()}")
    print(table(rows, ["system", "samples/s vs per-prompt", "samples/s", "median s", "all rounds (s)"]))


if __name__ == "__main__":
    main()
