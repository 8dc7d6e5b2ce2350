"""Where `step()`'s time goes: torch.profiler over a few `step()` calls of a training workload.

A workload of `bench_training.py` (16 texts of 16-512 tokens, per-device batch 4, a ~6.3M model; the
kind of text and the model as chosen, every call on new texts). Prints the operators by self CPU time,
then the calls' time split into the parts that matter for speed: matrix products, attention kernels,
the LM head + loss (`_LinearCrossEntropySum`, which holds its own products), the optimizer, the update
guard (`guard.UpdateGuard`: snapshot and finiteness check), the host-side work before the first
forward (tokenising, laying out), and the rest (elementwise work, host-side Python). Run it with one
thread to see the single-core split without interference between threads.

    python benchmarks/profile_step.py [--texts prose] [--model qwen2-6m-mha] [--accumulation 1] [--steps 2] \
        [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BATCH_SIZE, MAX_LENGTH, TRAINING_SAMPLES, header, quiet_transformers, snapshot  # noqa: E402
from _models import MODELS, prepare_model  # noqa: E402
from _texts import KINDS, tokenizer_for, write_calls  # noqa: E402

# Labels put around parts of step() for the profile (`labelled`): (label, trainer attribute, its method).
LABELS = [("host: tokenise and lay out", "encoder", "encode_input"), ("update guard", "guard", "snapshot"),
          ("update guard", "guard", "weights_finite")]
# Each operator's own (self) time goes to the first part whose keys match it or one of its callers.
PARTS = {
    "LM head + loss (chunked, label positions only)": ("_linearcrossentropysum",),
    "attention kernels (forward and backward)": ("scaled_dot_product", "scaleddotproduct", "flash_attention"),
    "optimizer (fused AdamW) and gradient clipping": ("optimizer.step", "_fused_adamw", "clip_grad", "_foreach_norm"),
    "update guard (snapshot before each update, finiteness check after)": ("update guard",),
    "host: tokenise and lay out": ("host: tokenise and lay out",),
    "matrix products (decoder, forward and backward)": ("aten::mm", "aten::addmm", "aten::bmm"),
}
REST = "everything else (elementwise, norms, embedding, host-side Python)"


def part_of(event) -> str:
    chain = []
    while event is not None:
        chain.append(event.name.lower())
        event = event.cpu_parent
    for part, keys in PARTS.items():
        names = chain if part != "matrix products (decoder, forward and backward)" else chain[:1]
        if any(key in name for name in names for key in keys):
            return part
    return REST


def labelled(trainer) -> None:
    """Wrap the methods of `LABELS` on this trainer's objects in `torch.profiler.record_function`."""
    from torch.profiler import record_function

    for label, owner, method in LABELS:
        target = getattr(trainer, owner)
        original = getattr(target, method)

        def wrapped(*args, _original=original, _label=label, **kwargs):
            with record_function(_label):
                return _original(*args, **kwargs)

        setattr(target, method, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", default="letters", choices=KINDS, help="kind of text (_texts.py)")
    parser.add_argument("--model", default="qwen2-6m", choices=["qwen2-6m", "qwen2-6m-mha"])
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="profiled step() calls, after one warm-up call")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batching", default=None, help="default: the library's default")
    args = parser.parse_args()
    quiet_transformers()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    model_dir = prepare_model(args.model, folder, tokenizer_for(args.texts))
    calls = json.loads(write_calls(folder / "calls.json", args.texts, args.steps + 1, TRAINING_SAMPLES, MAX_LENGTH,
                                   "new", model_dir, args.steps).read_text())
    extra = {"batching": args.batching} if args.batching else {}
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", save_strategy="no", learning_rate=1e-4,
                                per_device_train_batch_size=BATCH_SIZE, gradient_accumulation_steps=args.accumulation,
                                **extra)
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                  tokenizer=AutoTokenizer.from_pretrained(model_dir))
    labelled(trainer)
    trainer.step(texts=calls[0])
    started_at = snapshot()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for texts in calls[1:]:
            trainer.step(texts=texts)
        wall = time.perf_counter() - started
    print(header(f"step() profile: {args.model} ({MODELS[args.model]['label']}), {args.texts} texts, new on every "
                 f"call, {TRAINING_SAMPLES} texts/call of 16-{MAX_LENGTH} tokens, batch {BATCH_SIZE}, accumulation "
                 f"{args.accumulation}, batching={trainer.settings.batching}; {args.steps} calls after 1 warm-up",
                 started=started_at))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    totals = dict.fromkeys([*PARTS, REST], 0.0)
    for event in prof.events():
        totals[part_of(event)] += event.self_cpu_time_total
    profiled = sum(totals.values())
    print(f"\n# {wall:.2f} s wall for {args.steps} calls; {profiled / 1e6:.2f} s of operator time (all threads)")
    for name, value in totals.items():
        print(f"- {name}: {value / profiled:.1%}")


if __name__ == "__main__":
    main()
