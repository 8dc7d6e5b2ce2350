"""What every benchmark shares: the machine description, the model, the mixed-length workload.

Not a test module (pytest collects `test_*.py` only); each `bench_*.py` imports it from its own folder.
The model is a Qwen2-style decoder (hidden 256, 4 layers, 8k vocabulary, about 6M parameters) with
fixed-seed random weights, saved with `save_pretrained` so every process (also TRL's own virtualenv)
loads the same weights.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MODEL = {"vocab_size": 8192, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}
SAMPLES_PER_STEP, MIN_LENGTH, MAX_LENGTH, BATCH_SIZE = 64, 16, 512, 4


def machine() -> str:
    """One line naming the CPU, cores, torch threads and library versions."""
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def save_model(directory: Path, seed: int = 0, **overrides) -> Path:
    """Build the benchmark's Qwen2-style model (and the byte-level toy tokenizer) and save both."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from itersft.toy import build_tokenizer

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = build_tokenizer()
    config = Qwen2Config(**{**MODEL, **overrides}, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def workload(step: int, samples: int = SAMPLES_PER_STEP, seed: int = 0, vocab: int = MODEL["vocab_size"],
             min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH) -> list[torch.Tensor]:
    """The samples of one step: lengths uniform in [min_length, max_length], ids uniform, from (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lengths = torch.randint(min_length, max_length + 1, (samples,), generator=generator).tolist()
    return [torch.randint(4, vocab, (n,), generator=generator) for n in lengths]


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: list[float]) -> float:
    return statistics.median(values)


def emit(result: dict) -> None:
    """A subprocess's answer: one JSON line on stdout, marked so log lines around it are ignored."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


def parse(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("the benchmark subprocess printed no result:\n" + output[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
