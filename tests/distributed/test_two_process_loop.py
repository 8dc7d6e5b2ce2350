"""`itersft run` under torchrun with 2 CPU processes writes what one process writes.

Round 0 samples from the same starting model with per-sample seeds, so its accepted samples must be
identical however the prompts are sharded; later rounds may differ in the last bits of training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker_loop  # noqa: E402
from test_two_processes import free_port, launch, needs_deepspeed  # noqa: E402

PROMPTS = [f"q{i}:" for i in range(10)]
ANSWERS = ["x" if i % 2 else "y" for i in range(10)]


def _run(config: Path, output_dir: Path, processes: int) -> None:
    command = [sys.executable, "-m", "itersft.cli.main", "run", str(config), "--output-dir", str(output_dir)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", *command[2:]]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_two_process_loop_writes_the_same_artefacts(tmp_path, answering_dir):
    base = answering_dir
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(base), "output_dir": "unused", "prompts": {"path": str(prompts)},
        "eval_prompts": {"path": str(prompts), "limit": 5}, "scorer": "exact_match",
        "sampling": {"num_samples": 3, "max_new_tokens": 4, "seed": 1},
        "loop": {"rounds": 2, "prompts_per_round": 7, "step_size": 8, "seed": 1},
        "training": {"learning_rate": 0.01, "per_device_train_batch_size": 2, "seed": 1},
    }))
    one, two = tmp_path / "one", tmp_path / "two"
    _run(config, one, processes=1)
    _run(config, two, processes=2)

    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "trainer" not in p.parts
                      and not p.name.startswith("rng_state"))

    assert set(listing(one)) <= set(listing(two))
    assert (two / "rounds" / "round-0001" / "rng_state_1.pth").exists()
    for written in ("accepted", "samples"):  # the main process writes every rank's samples, as one process does
        assert (one / written / "round-0000.jsonl").read_text() == (two / written / "round-0000.jsonl").read_text()
    first = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [m.keys() for m in first] == [m.keys() for m in second]
    for key in ("samples_drawn", "samples_kept", "acceptance_rate", "pass@1", "pass@k"):
        assert first[0][key] == second[0][key], key
    assert second[0]["samples_drawn"] == 7 * 3
    for metrics in first + second:  # every round of both runs kept samples and trained on them
        assert metrics["samples_kept"] > 0 and metrics["train_updates"] > 0, metrics


@pytest.mark.parametrize("engine", ["fsdp2", pytest.param("zero3", marks=needs_deepspeed)])
def test_sharded_loop_keeps_ranks_in_step_and_matches_one_process(engine, tmp_path, answering_dir):
    """Sharded parameters make every forward a collective; uneven shares must neither hang nor change samples."""
    launch("worker_loop.py", str(answering_dir), str(tmp_path), engine, timeout=300)
    worker_loop.run(str(answering_dir), tmp_path, "single")
    one, two = tmp_path / "single", tmp_path / engine
    assert (one / "accepted" / "round-0000.jsonl").read_text() == (two / "accepted" / "round-0000.jsonl").read_text()
    assert (two / "accepted" / "round-0000.jsonl").read_text()  # something was kept, so round 0 trained
    first = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(first) == len(second) == 2
    for key in ("samples_drawn", "samples_kept", "pass@1", "pass@k", "train_samples"):
        assert first[0][key] == second[0][key], key
    for metrics in first + second:
        assert metrics["samples_kept"] > 0 and metrics["train_updates"] > 0, metrics
    assert (two / "final").is_dir() and (two / "rounds" / "round-0001" / "rng_state_1.pth").exists()
