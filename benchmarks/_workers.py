"""The systems a benchmark times, each run in its own process by `python _workers.py SYSTEM ...`.

A fresh process per run makes peak RSS comparable (it is the process's own high-water mark) and lets
TRL run in its own virtualenv (transformers 4.x). Prints one `RESULT {json}` line: per-step seconds,
real (non-padding) tokens per step, peak RSS.

Systems:
  bare     plain PyTorch: each micro-batch right-padded, full logits, cross-entropy summed and divided
           by the step's label tokens, backward; one AdamW update per step (fused, no weight decay: the
           trainer's default optimizer); no trainer
  itersft  `IterativeSFTTrainer.step()` with `--batching` and `--accumulation`
  trl      TRL 0.23.1 `IterativeSFTTrainer.step()` (run with benchmarks/.venv-trl/bin/python)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import BATCH_SIZE, emit, peak_rss_mib, workload  # noqa: E402

LEARNING_RATE = 1e-4


def padded(samples: list[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one micro-batch; labels are the ids, -100 on padding."""
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sample in enumerate(samples):
        ids[row, : len(sample)] = sample
        mask[row, : len(sample)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def bare_step(model, optimizer, micro_batches: list[dict[str, torch.Tensor]]) -> float:
    """One update over `micro_batches` with a token-mean loss; returns the mean loss."""
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches)
    total = torch.zeros(())
    for batch in micro_batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 batch["labels"][:, 1:].reshape(-1), reduction="sum")
        (loss / tokens).backward()
        total += loss.detach()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total.item() / tokens


def make_stepper(args, model_dir: Path):
    """A function `samples -> computed tokens` that trains one step the way `args.system` does; computed
    tokens count padding, real tokens do not."""
    if args.system == "bare":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=True)

        def bare(samples):
            batches = [padded(samples[i : i + BATCH_SIZE], 0) for i in range(0, len(samples), BATCH_SIZE)]
            bare_step(model, optimizer, batches)
            return sum(b["input_ids"].numel() for b in batches)

        return bare
    if args.system == "itersft":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from itersft import IterativeSFTConfig, IterativeSFTTrainer

        config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                    per_device_train_batch_size=BATCH_SIZE, save_strategy="no",
                                    gradient_accumulation_steps=args.accumulation, batching=args.batching)
        trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                      tokenizer=AutoTokenizer.from_pretrained(model_dir))
        return lambda samples: trainer.step(input_ids=samples)["padded_tokens"]
    if args.system == "trl":
        import warnings

        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
        from trl import IterativeSFTConfig, IterativeSFTTrainer

        warnings.filterwarnings("ignore", category=FutureWarning)
        # transformers 4 cannot read the tokenizer class name transformers 5 saved; the file itself is the same
        # byte-level tokenizer (`itersft.toy.build_tokenizer`, whose special tokens these are).
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), pad_token="<pad>",
                                            bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        # A fair run: max_steps set and a constant schedule, so the LR is not decayed to zero (TRL's default).
        config = IterativeSFTConfig(output_dir=tempfile.mkdtemp(), report_to="none", learning_rate=LEARNING_RATE,
                                    per_device_train_batch_size=BATCH_SIZE, save_strategy="no",
                                    max_steps=100_000, lr_scheduler_type="constant", bf16=False)  # fp32, as the others
        trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(model_dir), config,
                                      processing_class=tokenizer)

        def trl(samples):
            # TRL 0.23 requires all three lists with input_ids (its collator rebuilds the labels anyway).
            trainer.step(input_ids=samples, attention_mask=[torch.ones_like(s) for s in samples], labels=samples)
            return len(samples) * max(len(s) for s in samples)  # it pads the whole step to its longest sample

        return trl
    raise SystemExit(f"unknown system {args.system!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=["bare", "itersft", "trl"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=2, help="timed steps, after one warm-up step")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batching", default="sorted")
    parser.add_argument("--accumulation", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    step = make_stepper(args, Path(args.model))
    times, tokens, computed = [], [], []
    for index in range(args.steps + 1):
        samples = workload(index, samples=args.samples)
        started = time.perf_counter()
        with_padding = step(samples)
        if index:  # step 0 warms up (lazy initialisation, allocator)
            times.append(time.perf_counter() - started)
            tokens.append(sum(len(s) for s in samples))
            computed.append(with_padding)
    emit({"step_seconds": times, "tokens": tokens, "computed_tokens": computed, "peak_rss_mib": peak_rss_mib(),
          "threads": torch.get_num_threads(), "torch": torch.__version__})


if __name__ == "__main__":
    main()
