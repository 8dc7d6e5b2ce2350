"""The systems the training benchmark times, each in its own process: `python _workers.py SYSTEM ...`.

A process per system makes peak RSS comparable (each is its own high-water mark) and lets TRL run in
its own virtualenv (transformers 4.x). Every system loads the same saved weights and tokenizer and
trains on the same texts: the `step()` calls of `--calls`, a JSON list of lists of texts written by
the driver (`_texts.write_calls`). It runs call 0 as a warm-up and prints `RESULT {"ready": true}`;
then each line `round` on stdin runs the next N calls (`--steps`) and prints one `RESULT {json}`
line: per call the seconds, real (non-padding) tokens, computed tokens (padding included) and
optimizer updates, and the round's first loss. So the driver interleaves the systems round by round
without paying a process start per round. End of input: a last `RESULT` line with peak RSS (and, on
CUDA, peak device memory), then exit.

Systems:
  itersft  `IterativeSFTTrainer.step(texts=...)`, library defaults except batch size, accumulation and LR
           (and `--batching` when given)
  bare     `_bare.BareLoop` on the micro-batches `step()` forms (same layout, same loss, same optimizer)
  trl      TRL 0.23.1 `IterativeSFTTrainer.step(texts=...)` (run with benchmarks/.venv-trl/bin/python);
           the texts carry their EOS as text, so it trains on the same token sequences. Its optimizer
           steps after every micro-batch whatever `gradient_accumulation_steps` (or accelerate's
           `gradient_accumulation_kwargs`) says: its Accelerator is built with accumulation 1. So with
           `--accumulation A` it runs micro-batches of 4 x A samples: one update per A x 4 samples, as
           itersft makes, over the same samples. The updates it takes are counted, not assumed.

    printf 'round\nround\n' | python _workers.py itersft --model DIR --calls FILE --accumulation 4 --steps 3 \
        [--device cuda --bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import BATCH_SIZE, EOS_TEXT, emit, peak_rss_mib  # noqa: E402

LEARNING_RATE = 1e-4


def itersft_stepper(args, model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    extra = {"batching": args.batching} if args.batching else {}
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                per_device_train_batch_size=BATCH_SIZE, gradient_accumulation_steps=args.accumulation,
                                save_strategy="no", bf16=args.bf16, use_cpu=args.device == "cpu", **extra)
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                  tokenizer=AutoTokenizer.from_pretrained(model_dir))

    def step(texts):
        stats = trainer.step(texts=texts)
        return {"real": stats["real_tokens"], "computed": stats["padded_tokens"], "updates": stats["updates"],
                "loss": stats["loss"]}

    return step


def bare_stepper(args, model_dir: Path):
    from _bare import BareLoop
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from itersft import IterativeSFTConfig

    batching = args.batching or IterativeSFTConfig.batching  # the trainer's default layout
    loop = BareLoop(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                    BATCH_SIZE, args.accumulation, batching, LEARNING_RATE, device=args.device,
                    autocast_dtype=torch.bfloat16 if args.bf16 else None)
    updates = 0

    def prepare(texts):  # before the clock: the micro-batches are the trainer's work, not the loop's
        nonlocal updates
        windows = loop.micro_batches(texts, updates)
        updates += len(windows)
        return windows

    def step(windows):
        loss = loop.step(windows)
        return {"real": loop.real_tokens(windows), "computed": loop.computed_tokens(windows),
                "updates": len(windows), "loss": loss}

    return step, prepare


def trl_stepper(args, model_dir: Path):
    import warnings

    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import IterativeSFTConfig, IterativeSFTTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers 4 cannot read the tokenizer class name transformers 5 saved; the file itself is the same
    # tokenizer: the toy one (`itersft.toy.build_tokenizer`) or `_texts`'s BPE, both with these special tokens.
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # A fair run: max_steps set and a constant schedule, so the LR is not decayed to zero (TRL's default);
    # bf16 only where asked (TRL's config turns it on by default, which fails on CPU).
    config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                save_strategy="no", max_steps=100_000, lr_scheduler_type="constant", bf16=args.bf16,
                                use_cpu=args.device == "cpu",
                                per_device_train_batch_size=BATCH_SIZE * args.accumulation)
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                  processing_class=tokenizer)
    inner = trainer.optimizer.optimizer  # under accelerate's wrapper: counts the updates really taken
    updates, inner_step = [0], inner.step

    def counted(*a, **k):
        updates[0] += 1
        return inner_step(*a, **k)

    inner.step = counted

    def step(texts):
        texts = [text + EOS_TEXT for text in texts]
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        before = updates[0]
        trainer.step(texts=texts)
        # it pads the whole step to its longest text, whatever the micro-batch
        return {"real": sum(lengths), "computed": len(lengths) * max(lengths), "updates": updates[0] - before,
                "loss": None}

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["itersft", "bare", "trl"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--calls", required=True, help="JSON file: the texts of each step() call, warm-up first")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per round")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--batching", default=None, help="itersft/bare layout; default: the library's default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (all systems keep float32 weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.manual_seed(0)
    prepare = lambda texts: texts  # noqa: E731
    if args.system == "itersft":
        step = itersft_stepper(args, Path(args.model))
    elif args.system == "bare":
        step, prepare = bare_stepper(args, Path(args.model))
    else:
        step = trl_stepper(args, Path(args.model))
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    calls = json.loads(Path(args.calls).read_text())

    def timed(index: int) -> tuple[float, dict]:
        work = prepare(calls[index])
        sync()
        started = clock()
        done = step(work)
        if isinstance(done["loss"], torch.Tensor):
            done["loss"] = done["loss"].item()
        sync()
        return clock() - started, done

    timed(0)  # warm-up: lazy initialisation, allocator, kernels
    emit({"ready": True})
    done_calls = 1
    for command in sys.stdin:  # one line per round from the driver; anything else ends the process
        if command.strip() != "round":
            break
        result = {"step_seconds": [], "real_tokens": [], "computed_tokens": [], "updates": [], "loss": None}
        for index in range(done_calls, done_calls + args.steps):  # every system runs the same calls in a round
            seconds, done = timed(index)
            result["step_seconds"].append(seconds)
            result["real_tokens"].append(int(done["real"]))
            result["computed_tokens"].append(int(done["computed"]))
            result["updates"].append(int(done["updates"]))
            result["loss"] = done["loss"] if result["loss"] is None else result["loss"]
        done_calls += args.steps
        emit(result)
    emit({"peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(), "torch": torch.__version__,
          "peak_device_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None})


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
