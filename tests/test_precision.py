"""`itersft.precision`: which precision runs by default, what an explicit choice does, and the checks.

The machine's own answers (its CPU flags, the speed of its matrix products) are replaced by stand-ins, so
every case runs on any machine: a CPU with and without native bfloat16, flags that mislead, a GPU with
native, emulated or no bfloat16. The decision is cached per process, so each test starts from an empty cache.
"""

from __future__ import annotations

import logging

import pytest
import torch

from itersft import IterativeSFTConfig
from itersft import precision as precision_module
from itersft.precision import Bf16Support, bf16_support, check_trainer_precision, choose_precision, cpu_bf16_flags


@pytest.fixture(autouse=True)
def fresh_decisions():
    bf16_support.cache_clear()
    precision_module._log_once.cache_clear()
    yield
    bf16_support.cache_clear()
    precision_module._log_once.cache_clear()


@pytest.fixture
def cpu(monkeypatch):
    """Sets what the CPU reports (`flags`: its native bfloat16 flags, None when unreadable) and how much faster
    its bfloat16 matrix products run (`speedup`); `measured` counts the measurements taken."""

    class FakeCpu:
        flags: frozenset[str] | None = frozenset()
        speedup = 1.0
        measured = 0

        def measure(self):
            self.measured += 1
            return self.speedup

    fake = FakeCpu()
    monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: fake.flags)
    monkeypatch.setattr(precision_module, "measure_bf16_speedup", fake.measure)
    return fake


# ---- the CPU's capability -------------------------------------------------------------------------


@pytest.mark.parametrize("line, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni", frozenset()),  # this machine's kind: AVX-512, no bf16
    ("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", frozenset({"avx512_bf16", "amx_bf16"})),
    ("Features\t: fp asimd evtstrm aes sha2 bf16 i8mm", frozenset({"bf16"})),  # Arm (Graviton 3, Apple M2 on Linux)
    ("Features\t: fp asimd evtstrm aes", frozenset()),
])
def test_native_bf16_flags_are_read_from_cpuinfo(tmp_path, line, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\n{line}\n\nprocessor\t: 1\n{line}\n")
    assert cpu_bf16_flags(cpuinfo) == expected
    assert cpu_bf16_flags(tmp_path / "missing") is None  # no /proc (macOS, Windows): unknown, not "absent"


def test_without_native_bf16_the_cpu_uses_float32_and_measures_nothing(cpu):
    support = bf16_support(torch.device("cpu"))
    assert support.runs and not support.fast
    assert "has no native bfloat16 instructions" in support.reason
    assert cpu.measured == 0
    assert choose_precision("auto", "cpu").name == "fp32"


def test_native_bf16_is_used_only_when_a_measurement_confirms_it(cpu):
    cpu.flags, cpu.speedup = frozenset({"amx_bf16"}), 3.0
    chosen = choose_precision("auto", "cpu")
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16
    assert "this CPU reports amx_bf16" in chosen.reason and "3.00x float32's speed, faster" in chosen.reason

    bf16_support.cache_clear()
    cpu.speedup = 1.1  # the flag is there, but the kernels do not make bfloat16 pay (a hypervisor, an old oneDNN)
    chosen = choose_precision("auto", "cpu")
    assert chosen.name == "fp32" and chosen.dtype == torch.float32
    assert "not fast enough (needs 1.25x)" in chosen.reason


def test_unreadable_flags_are_settled_by_the_measurement(cpu):
    cpu.flags, cpu.speedup = None, 2.0
    assert choose_precision("auto", "cpu").name == "bf16"
    assert "flags could not be read" in bf16_support(torch.device("cpu")).reason


def test_the_decision_is_taken_once_per_process_and_logged_once(cpu, caplog):
    cpu.flags, cpu.speedup = frozenset({"avx512_bf16"}), 2.0
    with caplog.at_level(logging.INFO, logger="itersft.precision"):
        picks = [choose_precision("auto", device) for device in ("cpu", torch.device("cpu"), "cpu")]
    assert {p.name for p in picks} == {"bf16"}
    assert cpu.measured == 1
    assert [r.getMessage() for r in caplog.records] == [f"precision on cpu: bfloat16 ({picks[0].reason})"]


def test_the_real_measurement_compares_the_two_kinds_of_product(monkeypatch):
    """`measure_bf16_speedup` on a clock the matrix products advance: float32 products take 2 ticks, bfloat16
    ones 1 (speedup 2), then 6 ticks (bfloat16 three times slower: it stops after one round)."""
    clock, calls, ticks = [0.0], [], {}
    real_mm = torch.mm

    def timed_mm(a, b):
        calls.append(a.dtype)
        clock[0] += ticks[a.dtype]
        return real_mm(a, b)

    monkeypatch.setattr(precision_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(precision_module.torch, "mm", timed_mm)
    ticks.update({torch.float32: 2.0, torch.bfloat16: 1.0})
    assert precision_module.measure_bf16_speedup() == 2.0
    assert calls.count(torch.bfloat16) == 1 + precision_module._PROBE_ROUNDS  # a warm-up, then every round
    calls.clear()
    ticks.update({torch.float32: 2.0, torch.bfloat16: 6.0})
    assert precision_module.measure_bf16_speedup() == pytest.approx(1 / 3)
    assert calls.count(torch.bfloat16) == 2  # a warm-up and one round: a slow kernel is not timed again


# ---- explicit choices and bad settings --------------------------------------------------------------


def test_an_explicit_choice_is_honoured_and_slow_bf16_is_warned_of_once(cpu, caplog):
    with caplog.at_level(logging.INFO, logger="itersft.precision"):
        assert choose_precision("fp32", "cpu").name == "fp32"
        assert not caplog.records and cpu.measured == 0  # nothing to decide
        assert choose_precision("bf16", "cpu").name == "bf16"  # slow here, but asked for
        assert choose_precision("bf16", "cpu").autocast("cpu").fast_dtype == torch.bfloat16
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("`precision`='bf16' on cpu will be slow: this ")

    caplog.clear()
    bf16_support.cache_clear()
    cpu.flags, cpu.speedup = frozenset({"amx_bf16"}), 4.0
    with caplog.at_level(logging.INFO, logger="itersft.precision"):
        assert choose_precision("fp32", "cpu").name == "fp32"  # fast bf16 available, float32 asked for
        assert choose_precision("bf16", "cpu").name == "bf16"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("setting", ["float32", "BF16", "fp16", True, None, ""])
def test_an_unknown_setting_is_refused_by_name(cpu, setting):
    with pytest.raises(ValueError, match=rf"^`precision` must be one of 'auto', 'bf16', 'fp32', got {setting!r}\.$"):
        choose_precision(setting, "cpu")
    with pytest.raises(ValueError, match=r"^`--precision` must be one of"):
        choose_precision(setting, "cpu", name="--precision")


# ---- GPUs and other devices -------------------------------------------------------------------------


@pytest.fixture
def gpu(monkeypatch):
    """`torch.cuda.is_bf16_supported` answers as a device with `native` and/or `emulated` bfloat16 would."""
    state = {"native": True, "emulated": True}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: state["native"] or (including_emulation and state["emulated"]))
    return state


def test_a_gpu_uses_bf16_where_it_is_native(gpu):
    assert choose_precision("auto", "cuda").name == "bf16"
    bf16_support.cache_clear()
    gpu["native"] = False  # a pre-Ampere GPU: torch emulates bfloat16
    assert choose_precision("auto", "cuda").name == "fp32"
    assert choose_precision("bf16", "cuda").name == "bf16"
    assert "only emulates bfloat16" in bf16_support(torch.device("cuda")).reason


def test_bf16_on_a_device_that_cannot_run_it_is_refused_by_name(gpu):
    gpu.update(native=False, emulated=False)
    assert choose_precision("auto", "cuda").name == "fp32"
    with pytest.raises(ValueError, match=r"^`precision`='bf16', but cuda cannot run bfloat16 \(this cuda device has "
                                         r"no bfloat16 support\)\. precision='fp32' \(or 'auto'\) runs in float32\.$"):
        choose_precision("bf16", "cuda")


def test_a_device_without_a_bf16_query_keeps_float32_unless_asked():
    """torch has no bfloat16 query for "meta" (nor for MPS): a bfloat16 tensor can be made there, so bf16 runs
    when asked for, but `auto` keeps float32. This build of torch has no MPS backend: bf16 cannot run there."""
    support = bf16_support(torch.device("meta"))
    assert support == Bf16Support(True, False, "whether bfloat16 is fast on meta is not known here")
    assert choose_precision("auto", "meta").name == "fp32"
    assert choose_precision("bf16", "meta").name == "bf16"
    if not torch.backends.mps.is_built():
        assert not bf16_support(torch.device("mps")).runs
        with pytest.raises(ValueError, match=r"^`precision`='bf16', but mps cannot run bfloat16 \(a bfloat16 tensor"):
            choose_precision("bf16", "mps")


# ---- the trainer's `bf16`: honoured, warned of, or refused, before the model loads ---------------------


def _config(tmp_path, **overrides):
    return IterativeSFTConfig(output_dir=str(tmp_path), report_to="none", save_strategy="no", use_cpu=True,
                              **overrides)


def test_the_trainers_bf16_is_honoured_with_one_warning_where_it_is_slow(cpu, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="itersft.precision"):
        check_trainer_precision(_config(tmp_path))
        assert cpu.measured == 0 and not caplog.records  # float32, the default: nothing to check
        args = _config(tmp_path, bf16=True)
        check_trainer_precision(args)
        check_trainer_precision(args)
    assert args.bf16 is True  # the user's choice stands
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["`bf16`=True on cpu will be slow"]
    assert caplog.records[0].getMessage().endswith(". bf16=False runs in float32.")


def test_the_trainer_refuses_bf16_the_device_cannot_run_before_loading_the_model(tmp_path, monkeypatch):
    from itersft import IterativeSFTTrainer

    monkeypatch.setattr(precision_module, "bf16_support", lambda device: Bf16Support(False, False, "no bfloat16 here"))
    with pytest.raises(ValueError, match=r"^`bf16_full_eval`=True, but cpu cannot run bfloat16 \(no bfloat16 here\)"):
        check_trainer_precision(_config(tmp_path, bf16_full_eval=True))
    with pytest.raises(ValueError, match=r"^`bf16`=True, but cpu cannot run bfloat16"):
        IterativeSFTTrainer(str(tmp_path / "no-such-model"), _config(tmp_path, bf16=True))
