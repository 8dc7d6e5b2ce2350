"""What every benchmark shares: the header of each table, the model, the workloads, medians and tables.

Not a test module (pytest collects `test_*.py` only); each `bench_*.py` imports it from its own folder.
The model is a Qwen2-style decoder (hidden 256, 4 layers, 8k vocabulary, about 6.3M parameters) with
fixed-seed random weights, saved with `save_pretrained` so every process (also TRL's own virtualenv)
loads the same weights.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = {"vocab_size": 8192, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}
SAMPLES_PER_STEP, MIN_LENGTH, MAX_LENGTH, BATCH_SIZE = 64, 16, 512, 4
# The training comparisons (bench_training.py): 16 texts per step() call, lengths 16-512 tokens counting EOS.
TRAINING_SAMPLES = 16
EOS_TEXT = "</s>"  # the toy tokenizer's EOS, as text (it tokenizes to the EOS id)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


# The CPU flags that decide which kernels run: torch's vectorised kernels (AVX2 or AVX-512), and native
# bfloat16 arithmetic (AVX512-BF16, AMX-BF16), without which bf16 matrix products take a slow path.
CPU_FLAGS = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "bf16": ("avx512_bf16", "amx_bf16")}
# Environment variables that make torch, MKL and oneDNN use narrower kernels than the CPU has (e.g. to
# stand in for an AVX2-only CPU: ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2).
ISA_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def cpu_flags() -> str:
    """Which of `CPU_FLAGS` this CPU has, the kernels torch chose, and any `ISA_VARIABLES` that narrow them."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(next(line for line in info if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    has = ", ".join(f"{name} {'yes' if any(f in flags for f in keys) else 'no'}" for name, keys in CPU_FLAGS.items())
    forced = " ".join(f"{name}={os.environ[name]}" for name in ISA_VARIABLES if name in os.environ)
    return f"{has}; torch kernels {torch.backends.cpu.get_cpu_capability()}" + (f" ({forced})" if forced else "")


def machine() -> str:
    """One line naming the CPU, its flags, cores, torch threads and library versions."""
    import transformers

    return (f"{cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, python "
            f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")


def commit(repo: Path = REPO) -> str:
    """`git rev-parse --short HEAD` of `repo`, with `-dirty` when tracked or untracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain") else "")


def trl_versions(trl_python: str | None) -> str:
    """TRL's, transformers' and torch's versions as TRL's virtualenv has them, or why they are missing."""
    if not trl_python or not Path(trl_python).exists():
        return "trl: not installed (benchmarks/setup_trl_venv.sh)"
    code = "import torch, transformers, trl; print(f'trl {trl.__version__} (transformers {transformers.__version__}, " \
           "torch {torch.__version__})')"
    done = subprocess.run([trl_python, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "trl: " + (done.stderr.strip().splitlines() or ["failed to import"])[-1]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def snapshot() -> dict:
    """The commit and the load when a measurement starts (a header is printed after it ends)."""
    return {"commit": commit(), "load": load()}


def header(title: str, trl_python: str | None = None, device: str = "cpu", started: dict | None = None) -> str:
    """The lines above a table: what was measured, the commit, versions, threads, machine, and the load at
    the start (`started`, from `snapshot()` when the measurement began) and now."""
    import transformers

    started = started or snapshot()
    lines = [f"# {title}",
             f"# commit {started['commit']}; python {platform.python_version()}, torch {torch.__version__}, "
             f"transformers {transformers.__version__}"
             + (f"; {trl_versions(trl_python)}" if trl_python is not None else ""),
             f"# machine: {cpu_model()} ({cpu_flags()}), {os.cpu_count()} cores, torch threads "
             f"{torch.get_num_threads()}; "
             f"{started['load']} at the start, {load()} at the end"]
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"# device: {torch.cuda.get_device_name(device)}")
    return "\n".join(lines)


def quiet_transformers() -> None:
    """No progress bars or info logs from transformers in a benchmark's output (a script's own choice)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def save_model(directory: Path, seed: int = 0, tokenizer=None, **overrides) -> Path:
    """Build the benchmark's Qwen2-style model and save it with `tokenizer` (default: the byte-level toy one)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from itersft.toy import build_tokenizer

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = tokenizer or build_tokenizer()
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
    """The samples of one step as token tensors: lengths uniform in [min_length, max_length], ids uniform."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lengths = torch.randint(min_length, max_length + 1, (samples,), generator=generator).tolist()
    return [torch.randint(4, vocab, (n,), generator=generator) for n in lengths]


def text_workload(step: int, samples: int = TRAINING_SAMPLES, seed: int = 0, min_length: int = MIN_LENGTH,
                  max_length: int = MAX_LENGTH) -> list[str]:
    """The texts of one step: lowercase letters, one byte-level token each, so that with the EOS that
    `step()` appends a text is `n` tokens, `n` uniform in [min_length, max_length], from (seed, step)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    lengths = torch.randint(min_length, max_length + 1, (samples,), generator=generator).tolist()
    return ["".join(chr(97 + c) for c in torch.randint(0, 26, (n - 1,), generator=generator).tolist())
            for n in lengths]


def real_tokens(texts: list[str]) -> int:
    """Tokens of `text_workload`'s texts with their EOS: one per letter, plus one."""
    return sum(len(text) + 1 for text in texts)


def peak_rss_mib() -> float:
    """This process's peak resident set size since it started its program.

    Read from `VmHWM` in /proc/self/status where there is one: `getrusage`'s `ru_maxrss` of a process
    started with vfork (as `subprocess` starts them) includes its parent's peak, so a driver larger than
    its workers would be reported as each worker's peak."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
