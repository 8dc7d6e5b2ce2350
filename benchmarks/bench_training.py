"""Every training ratio the README quotes, from one run: itersft `step()` against TRL 0.23.1 and a bare loop.

Workloads: every combination of a kind of text (`--texts`) and a model (`--models`), by default four:

* text: `letters` (random lowercase letters, one token each through the byte-level toy tokenizer) or
  `prose` (English prose from this Python's standard library through an 8k-token BPE tokenizer trained
  here; see `_texts.py`, which says where the prose comes from);
* model: `qwen2-6m` (Qwen2-style, hidden 256, 4 layers, 8k vocabulary, 4 heads sharing 2 key/value heads)
  or `qwen2-6m-mha` (the same with a key/value head per head), fixed-seed weights saved once, loaded by
  every system (`_models.py`).

In each: 16 texts per `step()` call of 16-512 tokens counting the EOS, every call on texts no call
before it had (`--repeat-texts`: the same texts every round, the earlier setting), per-device batch 4,
learning rate 1e-4, float32 on CPU, each library's defaults otherwise. Real tokens/s counts
non-padding tokens only.

What is held equal in each comparison:

* **Samples**: the same texts per call for every system; TRL gets each text with its EOS as text (a
  special token of both tokenizers), so it trains on the same token sequences as `step()` (which
  appends EOS). Real tokens per call are checked to be equal across systems.
* **Optimizer updates**: `step()` takes one update per accumulation window (16 samples / (4 x A)). TRL
  0.23.1 steps its optimizer after every micro-batch, whatever `gradient_accumulation_steps` says
  (its Accelerator is built with accumulation 1), so at accumulation A it runs one micro-batch of 4 x A
  samples per update: A=1 -> 4 updates of 4 samples for both; A=4 -> one update of 16 samples for both.
  Updates per call are counted in every system (TRL's at its inner optimizer) and checked to be equal.
  Not equal at A=4: TRL holds one micro-batch of 16 samples padded to the call's longest (more
  activation memory), `step()` four of 4; the loss per update is the token mean over the same samples
  in both.
* **Trainer overhead**: the bare loop (`_bare.py`) trains on exactly the micro-batches `step()` forms
  (same order, sorting, packing, loss function, clipping and fused AdamW), built before its clock
  starts; its loss must equal `step()`'s (checked every round), which proves the same work was done.

Method: per workload and accumulation, every system of the TRL comparison runs in its own process
(TRL in its own virtualenv, `setup_trl_venv.sh`), all started together and warmed up with one call;
then `--rounds` rounds, in each of which every process runs the same `--steps` timed calls in turn,
in an order that rotates between rounds. The overhead comparison alternates `step()` and the bare loop
call by call in this process. Each ratio is the median over rounds of that round's ratio; peak RSS is
each process's own high-water mark. The last table gathers every workload's ratios.

The machine's CPU flags (AVX2, AVX-512, native bf16) and the kernels torch picked are printed with each
table: they decide which kernels run. To stand in for an AVX2-only CPU on a newer one, narrow torch's,
MKL's and oneDNN's kernels for every process: `ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_training.py`.

    python benchmarks/bench_training.py                      # CPU, 4 workloads; estimated 25 minutes on 2 quiet cores
    python benchmarks/bench_training.py --texts prose --models qwen2-6m-mha --rounds 5
    python benchmarks/bench_training.py --device cuda --bf16 --models smollm2-135m   # see gpu.sh
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, MAX_LENGTH, TRAINING_SAMPLES, median, quiet_transformers, table  # noqa: E402
from _models import MODELS, prepare_model  # noqa: E402
from _texts import KINDS, tokenizer_for, write_calls  # noqa: E402

SYSTEMS = ("trl", "itersft", "bare", "before")
NAMES = {"trl": "TRL 0.23.1 IterativeSFTTrainer", "itersft": "itersft step()",
         "bare": "bare loop, step()'s micro-batches", "before": "itersft step() before (--before)"}


class Worker:
    """One system in its own process (`_workers.py`), warmed up, running a round per request."""

    def __init__(self, python: str, system: str, model_dir: Path, calls: Path, accumulation: int, args):
        library = args.before if system == "before" else None  # `before`: step() of an older checkout's library
        system = "itersft" if system == "before" else system
        self.command = [python, str(HERE / "_workers.py"), system, "--model", str(model_dir), "--calls", str(calls),
                        "--steps", str(args.steps), "--accumulation", str(accumulation), "--device", args.device,
                        "--clock", args.clock, *(["--bf16"] if args.bf16 else []),
                        *(["--threads", str(args.threads)] if args.threads else []),
                        *(["--batching", args.batching] if args.batching and system != "trl" else [])]
        self.log = tempfile.TemporaryFile(mode="w+")  # stderr to a file: a full pipe would block the worker
        environment = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
        if library is not None:
            environment["PYTHONPATH"] = os.pathsep.join([str(Path(library) / "src"), environment.get("PYTHONPATH", "")])
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env=environment)

    def wait_ready(self) -> None:
        """Block until the worker has loaded its model and run its warm-up step."""
        self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        self.process.wait()
        self.log.seek(0)
        raise RuntimeError(f"{' '.join(self.command)} exited with {self.process.returncode}:\n"
                           f"{self.log.read()[-4000:]}")

    def round(self) -> dict:
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> dict:
        self.process.stdin.close()
        final = self._read()
        self.process.wait()
        return final


def rate(result: dict) -> float:
    return sum(result["real_tokens"]) / sum(result["step_seconds"])


def compare_with_trl(model_dir: Path, calls: Path, args) -> tuple[str, dict]:
    """Per accumulation, a process per system; then `--rounds` rounds in which each runs its timed steps in
    turn, the order rotating between rounds. Returns the table and the headline ratios."""
    systems = [s for s in SYSTEMS if (s != "trl" or Path(args.trl_python).exists()) and (s != "before" or args.before)]
    if "trl" not in systems:
        print(f"# {args.trl_python} not found: run benchmarks/setup_trl_venv.sh. TRL is left out.", flush=True)
    runs, finals = {}, {}
    for accumulation in args.accumulation:  # one accumulation at a time: fewer processes held at once
        order = [(accumulation, s) for s in systems]
        # Started together (start-up and warm-up are not timed), then every round runs one process at a time.
        workers = {key: Worker(args.trl_python if key[1] == "trl" else sys.executable, key[1], model_dir, calls,
                               accumulation, args) for key in order}
        try:
            for worker in workers.values():
                worker.wait_ready()
            for round_index in range(args.rounds):
                shift = round_index % len(order)
                for key in order[shift:] + order[:shift]:
                    result = workers[key].round()
                    runs.setdefault(key, []).append(result)
                    print(f"# round {round_index + 1}, accumulation {accumulation}, {key[1]}: "
                          f"{' '.join(f'{s:.2f}' for s in result['step_seconds'])} s/step, "
                          f"{rate(result):,.0f} real tokens/s", flush=True)
            finals |= {key: worker.close() for key, worker in workers.items()}
        finally:
            for worker in workers.values():
                if worker.process.poll() is None:
                    worker.process.kill()
    rows, headline = [], {}
    for accumulation in args.accumulation:
        reference = runs[accumulation, systems[0]]
        for system in systems:  # identical samples and update counts in every round, or the comparison is void
            for round_index, (result, first) in enumerate(zip(runs[accumulation, system], reference)):
                if result["real_tokens"] != first["real_tokens"] or result["updates"] != first["updates"]:
                    raise RuntimeError(f"accumulation {accumulation}, round {round_index + 1}: {system} trained on "
                                       f"{result['real_tokens']} real tokens in {result['updates']} updates per call, "
                                       f"{systems[0]} on {first['real_tokens']} in {first['updates']}: not a "
                                       "like-for-like comparison")
        first = reference[0]
        bare_rss = finals[accumulation, "bare"]["peak_rss_mib"]
        for system in systems:
            results, final = runs[accumulation, system], finals[accumulation, system]
            vs_trl = ([rate(r) / rate(t) for r, t in zip(results, runs[accumulation, "trl"])]
                      if "trl" in systems else [])
            computed = sum(sum(r["computed_tokens"]) for r in results) / sum(sum(r["real_tokens"]) for r in results)
            device = f"{final['peak_device_mib']:,.0f}" if final.get("peak_device_mib") is not None else "-"
            shown = f"{median(vs_trl):.2f}x" if vs_trl else "-"
            rows.append([accumulation, NAMES[system], sum(first["updates"]) // len(first["updates"]),
                         f"{median([rate(r) for r in results]):,.0f}", f"{computed:.2f}",
                         f"**{shown}**" if system == "itersft" and vs_trl else shown,
                         " ".join(f"{v:.2f}" for v in vs_trl) or "-", f"{final['peak_rss_mib']:,.0f}",
                         f"{final['peak_rss_mib'] / bare_rss:.2f}x", device])
            if vs_trl and system != "trl":
                headline[f"{system} vs TRL, accumulation {accumulation}"] = median(vs_trl)
            if system == "itersft":
                headline[f"itersft peak RSS vs bare, accumulation {accumulation}"] = final["peak_rss_mib"] / bare_rss
    columns = ["accum", "system", "updates/step", "real tokens/s", "computed/real tokens", "vs TRL (median)",
               "vs TRL per round", "peak RSS MiB", "RSS vs bare", "peak device MiB"]
    return table(rows, columns), headline


def compare_with_bare(model_dir: Path, calls: Path, args) -> tuple[str, dict]:
    """`step()` and the bare loop alternating in this process, one call each per round."""
    import torch
    from _bare import BareLoop
    from _workers import LEARNING_RATE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    rows, headline = [], {}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    call_texts = json.loads(calls.read_text())
    for accumulation in args.accumulation:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        extra = {"batching": args.batching} if args.batching else {}
        config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                    per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
                                    save_strategy="no", bf16=args.bf16, use_cpu=args.device == "cpu", **extra)
        trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config, tokenizer=tokenizer)
        bare = BareLoop(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, 4, accumulation,
                        trainer.settings.batching, LEARNING_RATE, seed=config.seed, device=args.device,
                        autocast_dtype=torch.bfloat16 if args.bf16 else None)
        ratios, rates, worst = [], {"itersft": [], "bare": []}, 0.0
        for round_index in range(args.overhead_rounds + 1):  # round 0 warms both up
            texts = call_texts[round_index]
            windows = bare.micro_batches(texts, trainer.state.global_step)
            seconds = {}
            for system in (("itersft", "bare") if round_index % 2 else ("bare", "itersft")):
                sync()
                started = clock()
                if system == "itersft":
                    stats = trainer.step(texts=texts)
                    itersft_loss = stats["loss"]
                else:
                    bare_loss = bare.step(windows).item()
                sync()
                seconds[system] = clock() - started
            difference = abs(itersft_loss - bare_loss) / abs(bare_loss)
            worst = max(worst, difference)
            if difference > (1e-2 if args.bf16 else 1e-4):
                raise RuntimeError(f"round {round_index}: step() loss {itersft_loss} but bare loop {bare_loss}: the "
                                   "bare loop no longer replicates step()'s micro-batches (see _bare.py)")
            if round_index:
                tokens = stats["real_tokens"]
                ratios.append(seconds["bare"] / seconds["itersft"])
                rates["itersft"].append(tokens / seconds["itersft"])
                rates["bare"].append(tokens / seconds["bare"])
        headline[f"itersft vs bare loop, accumulation {accumulation}"] = median(ratios)
        rows.append([accumulation, f"{median(rates['bare']):,.0f}", f"{median(rates['itersft']):,.0f}",
                     f"**{median(ratios):.3f}x**", " ".join(f"{r:.3f}" for r in ratios), f"{worst:.1e}"])
        del trainer, bare
    columns = ["accum", "bare loop real tokens/s", "step() real tokens/s", "step() vs bare (median)",
               "per round", "max relative loss difference"]
    return table(rows, columns), headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", nargs="+", default=list(KINDS), choices=KINDS, help="kinds of text (_texts.py)")
    parser.add_argument("--models", nargs="+", default=["qwen2-6m", "qwen2-6m-mha"], choices=sorted(MODELS))
    parser.add_argument("--repeat-texts", action="store_true",
                        help="every round on the same texts (default: every call on new texts)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the TRL comparison (fresh processes each)")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per process and round, after 1 warm-up")
    parser.add_argument("--overhead-rounds", type=int, default=5,
                        help="timed calls of the in-process comparison (0: leave it out)")
    parser.add_argument("--accumulation", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--samples", type=int, default=TRAINING_SAMPLES, help="texts per step() call")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="longest text in tokens (shortest: 16)")
    parser.add_argument("--batching", default=None, help="itersft's batching mode; default: the library's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in every system (float32 weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every system (default: torch's)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time (the real measure); cpu: each process's CPU time, steadier when "
                             "other jobs share the cores (use with --threads 1)")
    parser.add_argument("--trl-python", default=str(HERE / ".venv-trl" / "bin" / "python"))
    parser.add_argument("--skip-trl-comparison", action="store_true", help="only the in-process overhead comparison")
    parser.add_argument("--before", default=None,
                        help="a checkout of an older commit (git worktree add DIR COMMIT): its step() joins the "
                             "process comparison as one more system, run from DIR/src")
    args = parser.parse_args()
    quiet_transformers()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` or `kill` still stops the workers
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)  # this process runs the overhead comparison

    if args.before:
        from _common import commit

        NAMES["before"] = f"itersft step() at {commit(Path(args.before))} (--before)"
    folder = Path(tempfile.mkdtemp())
    calls_needed = 1 + max(args.rounds * args.steps, args.overhead_rounds)
    summary = {}
    for kind in args.texts:
        tokenizer = tokenizer_for(kind)
        for model in args.models:
            model_dir = prepare_model(model, folder / kind, tokenizer)
            calls = write_calls(folder / kind / f"{model}-calls.json", kind, calls_needed, args.samples,
                                args.max_length, "same" if args.repeat_texts else "new", model_dir, args.steps)
            name = f"{kind}, {model}"
            summary[name] = run_workload(name, model_dir, calls, args)
    print_summary(summary, args)


def run_workload(name: str, model_dir: Path, calls: Path, args) -> dict:
    """Both comparisons on one workload; prints their tables, returns the headline ratios."""
    from _common import header, snapshot

    kind, model = name.split(", ")
    texts = "the same every round" if args.repeat_texts else "new on every call"
    workload = (f"{model} ({MODELS[model]['label']}), {kind} texts ({texts}), "
                f"{args.samples} texts/call of 16-{args.max_length} tokens, per-device batch 4, "
                f"{'bf16 autocast' if args.bf16 else 'float32'} on {args.device}"
                + ("; CPU seconds, not wall time" if args.clock == "cpu" else ""))
    headline = {}
    if not args.skip_trl_comparison:
        started = snapshot()
        text, found = compare_with_trl(model_dir, calls, args)
        headline |= found
        print(header(f"itersft vs TRL 0.23.1 and a bare loop, equal updates, identical samples: {workload}; "
                     f"a process per system, 1 warm-up call, then {args.rounds} rounds x {args.steps} calls, "
                     "systems rotated within each round; medians",
                     args.trl_python, args.device, started))
        print(text, flush=True)
    if args.overhead_rounds >= 1:
        started = snapshot()
        text, found = compare_with_bare(model_dir, calls, args)
        headline |= found
        print(header(f"trainer overhead: step() vs a bare loop on the same micro-batches, one process, alternating: "
                     f"{workload}; 1 warm-up + {args.overhead_rounds} rounds, median of per-round ratios",
                     device=args.device, started=started))
        print(text, flush=True)
    print_headline(headline)
    return headline


def print_summary(summary: dict, args) -> None:
    """Every workload's headline ratios in one table, with the commit and the machine."""
    from _common import commit, cpu_flags, cpu_model

    measures = [("itersft vs TRL", ">= 2x"), ("itersft vs bare loop", ">= 0.95x"),
                ("itersft peak RSS vs bare", "<= 1.2x"), ("bare vs TRL", "the limit")]
    if args.before:
        measures.append(("before vs TRL", "--before"))
    rows = []
    for name, headline in summary.items():
        for accumulation in args.accumulation:
            found = [headline.get(f"{measure}, accumulation {accumulation}") for measure, _ in measures]
            rows.append([name, accumulation, *("-" if value is None else f"{value:.2f}x" for value in found)])
    before = f"; --before {args.before} at {commit(Path(args.before))}" if args.before else ""
    print(f"\n# every workload: commit {commit()}{before}; {cpu_model()} ({cpu_flags()}); "
          f"python benchmarks/bench_training.py {' '.join(sys.argv[1:])}")
    print(table(rows, ["workload (text, model)", "accum", *(f"{m} ({t})" for m, t in measures)]))


def print_headline(headline: dict) -> None:
    targets = {"vs TRL": ">= 2x", "vs bare loop": ">= 0.95x", "RSS vs bare": "<= 1.2x"}
    print("\n# headline (target)")
    for name, value in headline.items():
        target = next((t for k, t in targets.items() if k in name), "") if name.startswith("itersft") else (
            "the limit" if name.startswith("bare") else "the --before checkout")
        print(f"- {name}: {value:.2f}x ({target})")


if __name__ == "__main__":
    main()
