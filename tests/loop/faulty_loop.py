"""The loop runs the fault tests share: two-round-or-less loops on the answering toy model (see conftest),
and a way to make a folder read-only or a disk small without root (a user + mount namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.filters import Threshold
from itersft.loop.expert_iteration import ExpertIteration, LoopConfig
from itersft.sampling.sampler import SamplingConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import worker_full_disk  # noqa: E402

PROMPTS = worker_full_disk.PROMPTS
TIMING_KEYS = {"sampling_seconds", "sampling_tokens_per_second", "training_seconds", "training_tokens_per_second",
               "round_seconds"}


def meta(changed: int | None = None):
    """The answers; `changed`: that prompt's answer swapped (other prompts, as far as the run can tell)."""
    return [{"answer": ("y" if m["answer"] == "x" else "x") if i == changed else m["answer"]}
            for i, m in enumerate(worker_full_disk.META)]


def build_loop(model_dir, run_dir, scorer="exact_match", seed=3, learning_rate=1e-2, sampling_seed=3, trainer_dir=None,
          logging_steps=10, **options):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = IterativeSFTConfig(output_dir=str(trainer_dir or Path(run_dir).parent / "trainer"), report_to="none",
                              learning_rate=learning_rate, per_device_train_batch_size=4, save_strategy="no",
                              seed=seed, logging_steps=logging_steps)
    settings = dict(output_dir=str(run_dir), rounds=1, prompts_per_round=6, step_size=8, seed=3, score_workers=2)
    settings.update(options)
    sampling = SamplingConfig(num_samples=3, max_new_tokens=4, temperature=1.0, seed=sampling_seed,
                              chat_template=False)
    return ExpertIteration(IterativeSFTTrainer(model, args, tokenizer), sampling, scorer, Threshold(1.0),
                           LoopConfig(**settings))


def round_folders(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "rounds").iterdir())


def trained(history) -> bool:
    return bool(history) and all(m["samples_kept"] > 0 and m["train_updates"] > 0 for m in history)


def namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode == 0


NAMESPACES = namespaces_work()
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason="no user + mount namespace here (`unshare -Urm`)")


def on_a_read_only_folder(folder: Path, command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with `folder` read-only: a read-only tmpfs over it in a namespace, or, without
    namespaces and as a user other than root (whom permissions do not stop), its mode bits."""
    folder.mkdir(parents=True, exist_ok=True)
    if NAMESPACES:
        command = ["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"', str(folder),
                   *command]
    elif os.geteuid() != 0:
        folder.chmod(0o555)
    else:
        pytest.skip("root without namespaces: no way to make a folder read-only for this process")
    return subprocess.run(command, capture_output=True, text=True, timeout=300)
