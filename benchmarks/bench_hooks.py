"""Benchmark 5: what the user's extension points cost, and that the default path did not get slower.

Systems, each a long-lived worker process holding its own trainer, all on the same samples and the
same updates (the model of `_common.py`, `batching="sorted"`, one update per step):

* `before`: the default path (no collator, no override) at the commit before the hooks existed,
  imported from a `git worktree` of that commit (`--before`, default `/tmp/itersft-before`);
* `default`: the default path now;
* `collator`: a plain padding function as `data_collator`, giving the labels the default path gives
  (so the same loss), through the collator path (host collation, the trainer's own loss route);
* `override (super)`: `compute_loss` overridden to return `super().compute_loss(...)`: the
  `training_step` machinery alone, the loss still at label positions only;
* `override (full logits)`: a typical user override (`model(...)` logits, token cross-entropy summed
  and divided by `num_items_in_batch`): what the full-vocabulary logits add on top.

Every system takes the same updates, so the losses printed must agree. Rounds interleave the systems
(one step each, in turn) after one warm-up round; medians of the timed rounds.

    git worktree add /tmp/itersft-before a5a4360
    .venv/bin/python benchmarks/bench_hooks.py [--rounds 3] [--samples 32] [--before /tmp/itersft-before]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import BATCH_SIZE, emit, machine, median, parse, save_model, table, workload  # noqa: E402
from torch.nn.utils.rnn import pad_sequence  # noqa: E402

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "src"
SYSTEMS = ("before", "default", "collator", "override (super)", "override (full logits)")


# ---- a worker: one system, one trainer, steps on request ----------------------------------------


def pad_like_the_trainer(pad_token_id: int):
    """A plain collator on the features' tensors: right-pad, labels the ids with -100 on padding (what `step()`
    does itself)."""
    def collate(features: list[dict]) -> dict[str, torch.Tensor]:
        ids = pad_sequence([f["input_ids"] for f in features], batch_first=True, padding_value=pad_token_id)
        mask = pad_sequence([f["attention_mask"] for f in features], batch_first=True, padding_value=0)
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return collate


def build_trainer(system: str, model_dir: Path, samples: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    class SuperLoss(IterativeSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class FullLogitsLoss(IterativeSFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           use_cache=False).logits
            return torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), inputs["labels"][:, 1:].reshape(-1),
                reduction="sum") / num_items_in_batch

    classes = {"override (super)": SuperLoss, "override (full logits)": FullLogitsLoss}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=1e-4,
                                per_device_train_batch_size=BATCH_SIZE,
                                gradient_accumulation_steps=-(-samples // BATCH_SIZE), max_grad_norm=0.0,
                                save_strategy="no", logging_steps=10**9, seed=0,
                                batching="sorted")  # the layout every system here can take (no packing)
    extra = {"data_collator": pad_like_the_trainer(tokenizer.pad_token_id)} if system == "collator" else {}
    torch.manual_seed(0)
    return classes.get(system, IterativeSFTTrainer)(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                                    tokenizer=tokenizer, **extra)


def worker(system: str, model_dir: Path, samples: int) -> None:
    """Answer each `step ROUND` line on stdin with one RESULT line: seconds and the step's loss."""
    trainer = build_trainer(system, model_dir, samples)
    emit({"ready": True})
    for line in sys.stdin:
        round_index = int(line.split()[1])
        batch = workload(round_index, samples=samples)
        started = time.perf_counter()
        stats = trainer.step(input_ids=batch)
        emit({"seconds": time.perf_counter() - started, "loss": stats["loss"], "tokens": stats["real_tokens"]})


# ---- the driver ------------------------------------------------------------------------------------


class Worker:
    """A worker process for one system, with `itersft` imported from `source`."""

    def __init__(self, system: str, source: Path, model_dir: Path, samples: int, threads: int):
        environment = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", system, "--model", str(model_dir), "--samples", str(samples)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment)
        self.read()

    def read(self) -> dict:
        lines = []
        for line in self.process.stdout:
            lines.append(line)
            if line.startswith("RESULT "):
                return parse(line)
        raise RuntimeError("a benchmark worker stopped:\n" + "".join(lines[-40:]))

    def step(self, round_index: int) -> dict:
        self.process.stdin.write(f"step {round_index}\n")
        self.process.stdin.flush()
        return self.read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up round")
    parser.add_argument("--samples", type=int, default=32, help="samples per step")
    parser.add_argument("--before", type=Path, default=Path("/tmp/itersft-before"),
                        help="a git worktree of the commit before the hooks (its src/ is imported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per worker")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.samples)
        return
    if not (args.before / "src" / "itersft").is_dir():
        raise SystemExit(f"{args.before} holds no itersft checkout: `git worktree add {args.before} a5a4360` first.")

    model_dir = save_model(Path(tempfile.mkdtemp()) / "model")
    workers = {system: Worker(system, args.before / "src" if system == "before" else SOURCE, model_dir,
                              args.samples, args.threads) for system in SYSTEMS}
    seconds: dict[str, list[float]] = {system: [] for system in SYSTEMS}
    losses: dict[str, list[float]] = {system: [] for system in SYSTEMS}
    try:
        for round_index in range(args.rounds + 1):
            for system, process in workers.items():
                result = process.step(round_index)
                losses[system].append(result["loss"])
                if round_index:
                    seconds[system].append(result["seconds"])
    finally:
        for process in workers.values():
            process.close()

    base = median(seconds["default"])
    rows = [[system, f"{median(seconds[system]) / base:.3f}", f"{median(seconds[system]):.2f}",
             " ".join(f"{v:.2f}" for v in seconds[system]), f"{losses[system][-1]:.6f}"] for system in SYSTEMS]
    print(f"# step() time of the extension points, {args.samples} samples/step (lengths 16-512), batch "
          f"{BATCH_SIZE}, one update/step, batching='sorted', {args.rounds} interleaved rounds + 1 warm-up, medians")
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no", cwd=HERE) else ""
    print(f"# now: {git('rev-parse', '--short', 'HEAD', cwd=HERE)}{dirty}; "
          f"before: {git('rev-parse', '--short', 'HEAD', cwd=args.before)} ({args.before})")
    print(f"# machine: {machine()}; workers: torch threads {args.threads} each, one running at a time")
    print(f"# load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(table(rows, ["system", "time vs default", "median s/step", "all rounds (s)", "loss, last step"]))
    if len({f"{losses[s][-1]:.4f}" for s in SYSTEMS}) != 1:
        print("# WARNING: the systems' losses differ: they did not take the same updates")


if __name__ == "__main__":
    main()
