"""Which precision runs the matrix products: bfloat16 where the device does it fast, else float32.

`choose_precision(setting, device)` is the one place a precision is picked by default (`"auto"`) or
checked when given (`"bf16"`, `"fp32"`); `check_trainer_precision(args)` applies the same facts to a
`TrainingArguments`' `bf16`. Both rest on `bf16_support(device)`, decided once per process and device:

* CPU: bfloat16 is fast only with native instructions (x86 `avx512_bf16` or `amx_bf16`, Arm `bf16`).
  Without them PyTorch still runs it, through oneDNN's conversions (AVX-512: about half float32's
  speed) or its reference kernel (AVX2: about 1% of it), so `auto` picks float32. The flags alone can
  mislead (a hypervisor may report a flag the kernels do not use; Linux is the only system whose
  flags are read here), so where they claim native bfloat16, or cannot be read, a matrix product of
  each kind is timed (tens of milliseconds) and bfloat16 is chosen only when it is clearly faster.
* CUDA and XPU: fast where the device has native bfloat16 (CUDA: compute capability 8.0 or newer),
  runnable where torch can emulate it, neither elsewhere.
* Other devices (MPS, ...): bfloat16 runs where a bfloat16 tensor can be made there; `auto` keeps
  float32, since nothing tells whether it is fast. Ask for bf16 explicitly to use it.

A precision asked for explicitly is honoured, with one warning where it will be slow; bf16 on a device
that cannot run it at all, or a setting that is not a precision, is a `ValueError` naming the setting.
Each decision is logged once per process. Deliberately left out: float16 (it needs loss scaling, which
only the trainer's `fp16` does) and casting the weights themselves (`model_init_kwargs={"dtype": ...}`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
"""What a precision setting accepts: decided by the device (`auto`), or bfloat16 / float32 autocast."""

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU flags (x86 `flags`, Arm `Features` in /proc/cpuinfo) that mean bfloat16 arithmetic in hardware."""

REQUIRED_SPEEDUP = 1.25
"""How much faster a bfloat16 matrix product must be than a float32 one for `auto` to choose it on a
CPU: autocast also pays for casting the float32 weights on every forward, which a bare product does not."""

_PROBE_SIZE = 256
_PROBE_ROUNDS = 5


@dataclass(frozen=True)
class Bf16Support:
    """What a device does with bfloat16: whether it runs at all, whether it beats float32, and why."""

    runs: bool
    fast: bool
    reason: str


@dataclass(frozen=True)
class Precision:
    """The precision a run uses: `name` ("bf16" or "fp32") and why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on `device_type` for "bf16" (the weights stay float32), nothing for "fp32"."""
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.name == "bf16" else contextlib.nullcontext()


def choose_precision(setting: str, device: Any, name: str = "precision") -> Precision:
    """The precision for `setting` ("auto", "bf16" or "fp32") on `device` (a `torch.device` or its name).

    "auto" is bf16 where `bf16_support` says it is fast, else fp32; "bf16" is honoured where it runs (with a
    warning, once, where it is slow); "fp32" always. Raises a ValueError naming `name` for any other
    setting and for bf16 on a device that cannot run it, before anything is loaded onto it.
    """
    if not isinstance(setting, str) or setting not in PRECISIONS:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, PRECISIONS))}, got {setting!r}.")
    if setting == "fp32":
        return Precision("fp32", f"`{name}`='fp32' was asked for")
    device = torch.device(device)
    support = bf16_support(device)
    if setting == "auto":
        _log_once(logging.INFO, f"precision on {device}: {'bfloat16' if support.fast else 'float32'} "
                                f"({support.reason})")
        return Precision("bf16" if support.fast else "fp32", support.reason)
    _check_bf16(support, device, f"`{name}`='bf16'", f"{name}='fp32' (or 'auto') runs in float32")
    return Precision("bf16", f"`{name}`='bf16' was asked for")


def check_trainer_precision(args) -> None:
    """Check a `TrainingArguments`' `bf16` / `bf16_full_eval` against its device: a ValueError naming the
    setting where the device cannot run bfloat16, one warning where it will be slow. The setting itself is
    the user's and is never changed (transformers' own checks, e.g. CPU training needs `use_cpu`, still apply).
    """
    for name in ("bf16", "bf16_full_eval"):
        if getattr(args, name, False) is True:
            _check_bf16(bf16_support(args.device), args.device, f"`{name}`=True", f"{name}=False runs in float32")


def _check_bf16(support: Bf16Support, device: torch.device, asked: str, alternative: str) -> None:
    """bf16 was `asked` for on `device`: refuse it where it cannot run, warn once where it will be slow."""
    if not support.runs:
        raise ValueError(f"{asked}, but {device} cannot run bfloat16 ({support.reason}). {alternative}.")
    if not support.fast:
        _log_once(logging.WARNING, f"{asked} on {device} will be slow: {support.reason}. {alternative}.")


@functools.cache
def bf16_support(device: torch.device) -> Bf16Support:
    """Whether `device` runs bfloat16 and whether it runs it faster than float32 (see the module docstring).

    Cached per process and device: the answer does not change while a process runs, and the CPU's
    measurement should not be repeated (nor give different answers to two callers).
    """
    if device.type == "cpu":
        return _cpu_support()
    backend = getattr(torch, device.type, None)
    if hasattr(backend, "is_bf16_supported"):
        with backend.device(device) if device.index is not None else contextlib.nullcontext():
            if backend.is_bf16_supported(including_emulation=False):
                return Bf16Support(True, True, f"{device.type} device with native bfloat16")
            if backend.is_bf16_supported(including_emulation=True):
                return Bf16Support(True, False, f"this {device.type} device only emulates bfloat16")
        return Bf16Support(False, False, f"this {device.type} device has no bfloat16 support")
    try:
        torch.ones(2, dtype=torch.bfloat16, device=device)
    except (RuntimeError, TypeError) as error:
        return Bf16Support(False, False, f"a bfloat16 tensor cannot be made there ({error})")
    return Bf16Support(True, False, f"whether bfloat16 is fast on {device.type} is not known here")


def _cpu_support() -> Bf16Support:
    flags = cpu_bf16_flags()
    if flags is not None and not flags:
        return Bf16Support(True, False, f"this {platform.machine()} CPU has no native bfloat16 instructions "
                                        f"({', '.join(NATIVE_BF16_FLAGS[:2])} or Arm bf16): PyTorch emulates them")
    claim = f"this CPU reports {', '.join(sorted(flags))}" if flags else "this CPU's flags could not be read"
    speedup = measure_bf16_speedup()
    fast = speedup >= REQUIRED_SPEEDUP
    verdict = "faster" if fast else "not fast enough"
    return Bf16Support(True, fast, f"{claim}; a {_PROBE_SIZE}x{_PROBE_SIZE} bfloat16 matrix product ran "
                                   f"{speedup:.2f}x float32's speed, {verdict} (needs {REQUIRED_SPEEDUP}x)")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The native bfloat16 flags (`NATIVE_BF16_FLAGS`) the CPU reports, or None where there is no
    /proc/cpuinfo to read (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split()) & frozenset(NATIVE_BF16_FLAGS)
    return None


def measure_bf16_speedup() -> float:
    """float32 time over bfloat16 time for the same CPU matrix product (best of a few rounds each,
    interleaved, at torch's current thread count). Stops after one round when bfloat16 is more than twice
    as slow: an emulated kernel can run at 1% of float32's speed, and rounds of it would take seconds."""
    generator = torch.Generator().manual_seed(0)
    pairs = {dtype: (torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=generator).to(dtype),
                     torch.randn(_PROBE_SIZE, _PROBE_SIZE, generator=generator).to(dtype))
             for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():  # warm-up: first calls pick kernels and allocate
        torch.mm(a, b)
    for _ in range(_PROBE_ROUNDS):
        for dtype, (a, b) in pairs.items():
            started = time.perf_counter()
            torch.mm(a, b)
            best[dtype] = min(best[dtype], time.perf_counter() - started)
        if best[torch.bfloat16] > 2 * best[torch.float32]:
            break
    return best[torch.float32] / best[torch.bfloat16]


@functools.cache
def _log_once(level: int, message: str) -> None:
    logger.log(level, message)
