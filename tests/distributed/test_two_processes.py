"""Two real processes on CPU (gloo), launched with torch.distributed.run, under DDP, FSDP2 and LoRA-on-DDP.

The reference is one process stepping on the union of both ranks' samples, window by window: equal
parameters prove that every token of every rank weighs the same. Averaging per rank instead (what
plain DDP does with a per-rank mean loss) would give rank 1's few short samples the weight of rank
0's many long ones, and the parameters would differ.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from itersft import IterativeSFTTrainer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # launch files name their json configs relative to the repository root
sys.path.insert(0, str(HERE))
import worker_hooks  # noqa: E402
import worker_seq2seq  # noqa: E402
import worker_step  # noqa: E402

TIMING = {"step_time", "tokens_per_second"}
# Marked `deepspeed` too: under CI=true that skip is a failure (tests/conftest.py).
needs_deepspeed = [pytest.mark.deepspeed,
                   pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                      reason="deepspeed is not installed (`make test` installs it)")]


def free_port() -> int:
    """A TCP port free on this machine now, for a rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker_env() -> dict[str, str]:
    """The environment of a launched worker: one thread each, and this folder importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}


def launch(script: str, *args: str, timeout: int = 180, launch_file: Path | None = None) -> None:
    """Run `script` in 2 processes: with torchrun, or as `accelerate launch --config_file launch_file`."""
    port = free_port()
    if launch_file is None:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(port), str(HERE / script), *args]
    else:  # the launch file as shipped, scaled down to 2 processes on this machine
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_file),
                   "--num_processes", "2", "--main_process_port", str(port), str(HERE / script), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(),
                               cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and both workers
        stdout, stderr = process.communicate()
        raise AssertionError(f"2-process run timed out:\n{stdout[-4000:]}\n{stderr[-8000:]}") from None
    assert process.returncode == 0, stdout[-4000:] + stderr[-8000:]


def run_worker(model_dir: Path, out: Path, mode: str, engine: str) -> None:
    launch("worker_step.py", str(model_dir), str(out), mode, engine, launch_file=worker_step.LAUNCH_FILES.get(engine))


@pytest.fixture(scope="module", params=[pytest.param(engine, marks=needs_deepspeed if engine.startswith("zero") else ())
                                        for engine in worker_step.ENGINES])
def two_rank_run(request, tmp_path_factory, causal_dir):
    """(engine, output folder) of a 2-rank training run."""
    engine = request.param
    out = tmp_path_factory.mktemp(engine)
    run_worker(causal_dir, out, "train", engine)
    return engine, out


def _windows(samples: list, batch_size: int = 2, accumulation: int = 2, micro_batches: int | None = None):
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    batches += [[]] * ((micro_batches or len(batches)) - len(batches))
    return [sum(batches[i : i + accumulation], []) for i in range(0, len(batches), accumulation)]


def union_windows(shares: list[list]) -> list[list]:
    """What each update of the 2 ranks (batch 2, accumulation 2) trains on: its windows on both ranks, joined.

    Ranks agree on the larger micro-batch count, so the short rank's later windows are empty."""
    micro_batches = max(-(-len(share) // 2) for share in shares)
    return [sum(windows, []) for windows in zip(*(_windows(share, micro_batches=micro_batches) for share in shares))]


def test_ranks_end_identical_and_equal_to_one_process_on_the_union(two_rank_run, causal_dir, tmp_path):
    assert_equal_to_one_process_on_the_union(*two_rank_run, causal_dir, tmp_path)


def test_two_machines_train_as_one(causal_dir, tmp_path):
    """Two torchrun launchers, one process each, meeting at a rendezvous address: the several-machines
    recipe simulated on this machine (each process is local rank 0 of its "machine")."""
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(HERE / "worker_step.py"), str(causal_dir), str(tmp_path), "train", "ddp"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env(), cwd=ROOT,
                              start_new_session=True) for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=180) for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            os.killpg(node.pid, signal.SIGKILL)
        raise AssertionError("2-machine run timed out") from None
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stdout[-4000:] + stderr[-8000:]
    assert_equal_to_one_process_on_the_union("ddp", tmp_path, causal_dir, tmp_path / "reference")


def assert_equal_to_one_process_on_the_union(engine: str, out: Path, causal_dir: Path, tmp_path: Path) -> None:
    rank0 = torch.load(out / f"{engine}-train-rank0.pt")
    rank1 = torch.load(out / f"{engine}-train-rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name

    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = IterativeSFTTrainer(model, worker_step.config(tmp_path, batch_size=64, accumulation=1),
                                    tokenizer=tokenizer, peft_config=worker_step.peft_config(engine),
                                    **worker_step.evaluation())
    two_rank_stats = json.loads((out / f"{engine}-train-stats-rank0.json").read_text())
    for call in range(worker_step.CALLS):
        shares = [worker_step.rank_samples(rank, call, len(tokenizer)) for rank in (0, 1)]
        updates = [reference.step(input_ids=window) for window in union_windows(shares)]
        assert [u["updates"] for u in updates] == [1, 1]
        # The loss, the pre-clip gradient norm (which Adam's updates would not reveal a wrong scale of)
        # and the warmup LR of the 2-rank updates are the union's.
        tokens = sum(u["trained_tokens"] for u in updates)
        expected = {"loss": sum(u["loss"] * u["trained_tokens"] for u in updates) / tokens,
                    "grad_norm": sum(u["grad_norm"] for u in updates) / 2,
                    "learning_rate": updates[-1]["learning_rate"]}
        for key, value in expected.items():
            assert two_rank_stats[call][key] == pytest.approx(value, rel=1e-4), (call, key)
    assert reference.state.global_step == 2 * worker_step.CALLS
    # Weights move by ~6e-2; summation order alone leaves ~1e-5. Per-rank averaging misses by far more.
    trained = reference.model.state_dict()
    assert trained.keys() == rank0.keys()
    for name, tensor in trained.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-3, atol=5e-5, msg=name)
    # evaluate() on the ranks' uneven shares of the held-out texts: the one process's loss, and the same
    # predictions for the same label tokens (compute_metrics through transformers' prediction loop).
    expected_eval = reference.evaluate()
    # byte tokens + EOS per text, less the first token, which nothing predicts
    assert expected_eval["eval_label_tokens"] == sum(len(text) for text in worker_step.EVAL_TEXTS)
    for rank in (0, 1):
        evaluated = json.loads((out / f"{engine}-eval-rank{rank}.json").read_text())
        assert evaluated["eval_loss"] == pytest.approx(expected_eval["eval_loss"], rel=1e-4)
        assert evaluated["eval_label_tokens"] == expected_eval["eval_label_tokens"]
        assert evaluated["eval_mean_predicted_id"] == pytest.approx(expected_eval["eval_mean_predicted_id"])
    moved = {name for name, tensor in trained.items() if name in initial and not torch.equal(tensor, initial[name])}
    if "lora" in engine:  # only the adapters train; the base weights stay as loaded
        assert all(not name.startswith("base_model.model.") or "lora_" in name for name in moved)
    else:
        assert moved == set(initial)


@pytest.mark.parametrize("engine", ["ddp", pytest.param("zero3", marks=needs_deepspeed)])
def test_seq2seq_ranks_train_as_one_process_on_the_union(engine, seq2seq_dir, tmp_path):
    """The encoder-decoder path (texts + texts_labels, decoder inputs from the labels) under each engine."""
    launch("worker_seq2seq.py", str(seq2seq_dir), str(tmp_path), engine)
    rank0 = torch.load(tmp_path / f"seq2seq-{engine}-rank0.pt")
    rank1 = torch.load(tmp_path / f"seq2seq-{engine}-rank1.pt")
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    model = AutoModelForSeq2SeqLM.from_pretrained(seq2seq_dir)
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    reference = IterativeSFTTrainer(model, worker_step.config(tmp_path / "reference", batch_size=64, accumulation=1),
                                    tokenizer=AutoTokenizer.from_pretrained(seq2seq_dir))
    for call in range(worker_seq2seq.CALLS):
        for pairs in union_windows([worker_seq2seq.rank_pairs(rank, call) for rank in (0, 1)]):
            reference.step(texts=[source for source, _ in pairs], texts_labels=[target for _, target in pairs])
    trained = reference.model.state_dict()
    for name, tensor in trained.items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-3, atol=5e-5, msg=name)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", pytest.param("zero2", marks=needs_deepspeed)])
def test_a_collator_and_a_compute_loss_override_train_as_one_process_on_the_union(engine, causal_dir, tmp_path):
    """A user's collator (prompt tokens masked) and a weighted `compute_loss` dividing by `num_items_in_batch`,
    on uneven shares: the window's label tokens are counted on the collated labels over both ranks, and the
    world-size factor undoes the ranks' gradient averaging, so the ranks train as one process on the union."""
    launch("worker_hooks.py", str(causal_dir), str(tmp_path), engine)
    rank0 = torch.load(tmp_path / f"hooks-{engine}-rank0.pt")
    rank1 = torch.load(tmp_path / f"hooks-{engine}-rank1.pt")
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    tokenizer = AutoTokenizer.from_pretrained(causal_dir)
    model = AutoModelForCausalLM.from_pretrained(causal_dir)
    reference = worker_hooks.trainer_class("ddp")(
        model, worker_step.config(tmp_path / "reference", batch_size=64, accumulation=1), tokenizer=tokenizer,
        data_collator=worker_hooks.prompt_masking_collator)
    two_rank_stats = json.loads((tmp_path / f"hooks-{engine}-stats-rank0.json").read_text())
    for call in range(worker_step.CALLS):
        shares = [worker_step.rank_samples(rank, call, len(tokenizer)) for rank in (0, 1)]
        updates = [reference.step(input_ids=window) for window in union_windows(shares)]
        tokens = sum(u["trained_tokens"] for u in updates)
        assert two_rank_stats[call]["trained_tokens"] == tokens
        # The pre-clip gradient norm shows a wrong scale (a missing world-size factor) that Adam's steps hide.
        expected = {"loss": sum(u["loss"] * u["trained_tokens"] for u in updates) / tokens,
                    "grad_norm": sum(u["grad_norm"] for u in updates) / len(updates)}
        for key, value in expected.items():
            assert two_rank_stats[call][key] == pytest.approx(value, rel=1e-4), (call, key)
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(rank0[name], tensor, rtol=1e-3, atol=5e-5, msg=name)


def test_the_saved_model_loads_with_from_pretrained(two_rank_run, causal_dir):
    engine, out = two_rank_run
    saved = out / f"{engine}-final"
    if "lora" in engine:  # the adapters alone, on top of the base model
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(causal_dir), saved)
    else:
        model = AutoModelForCausalLM.from_pretrained(saved)
    loaded = model.state_dict()
    for name, tensor in torch.load(out / f"{engine}-train-rank0.pt").items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0, msg=name)


def test_statistics_are_global_and_identical_on_every_rank(two_rank_run, causal_dir):
    engine, out = two_rank_run
    stats = [json.loads((out / f"{engine}-train-stats-rank{r}.json").read_text()) for r in (0, 1)]
    strip = [[{k: v for k, v in s.items() if k not in TIMING} for s in rank] for rank in stats]
    assert strip[0] == strip[1]
    vocab = len(AutoTokenizer.from_pretrained(causal_dir))
    for call, step in enumerate(stats[0]):
        samples = [s for rank in (0, 1) for s in worker_step.rank_samples(rank, call, vocab)]
        assert step["samples"] == len(samples) == (8 if call < worker_step.CALLS - 1 else 6)
        assert step["trained_tokens"] == sum(len(s) - 1 for s in samples)
        assert step["real_tokens"] == sum(len(s) for s in samples)
        assert step["updates"] == 2 and step["global_step"] == 2 * (call + 1)


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", pytest.param("zero2", marks=needs_deepspeed),
                                    pytest.param("zero3", marks=needs_deepspeed)])
def test_a_non_finite_update_is_skipped_on_every_rank(engine, causal_dir, tmp_path):
    """Rank 0's forward turns NaN in call 1: both ranks skip both updates (DeepSpeed skips inside its
    engine), say so in the statistics, keep finite weights, and train normally afterwards."""
    run_worker(causal_dir, tmp_path, "nonfinite", engine)
    for rank in (0, 1):
        stats = json.loads((tmp_path / f"{engine}-nonfinite-stats-rank{rank}.json").read_text())
        assert [(s["updates"], s["skipped_updates"]) for s in stats] == [(2, 0), (0, 2), (2, 0), (2, 0)]
        assert stats[1]["global_step"] == stats[0]["global_step"] == 2 and stats[-1]["global_step"] == 6
        assert all(math.isfinite(s["loss"]) for s in stats[2:])
        parameters = torch.load(tmp_path / f"{engine}-nonfinite-rank{rank}.pt")
        assert all(torch.isfinite(tensor).all() for tensor in parameters.values())


def test_a_checkpoint_written_by_two_ranks_resumes(two_rank_run, causal_dir):
    engine, out = two_rank_run
    for mode in ("save", "resume"):
        run_worker(causal_dir, out, mode, engine)
    uninterrupted = torch.load(out / f"{engine}-save-rank0.pt")
    for rank in (0, 1):
        resumed = torch.load(out / f"{engine}-resume-rank{rank}.pt")
        assert resumed.keys() == uninterrupted.keys()
        for name, tensor in uninterrupted.items():
            torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    saved = {p.name for p in (out / f"{engine}-checkpoint").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= saved
    # FSDP2 with SHARDED_STATE_DICT (fsdp2.yaml): each rank wrote its shard of the weights and optimizer state.
    # DeepSpeed: the engine's own checkpoint (weights and each rank's optimizer partition) in global_step<N>/.
    # FSDP2 with FULL_STATE_DICT (transformers' default, fsdp2-lora): the gathered weights and optimizer state.
    expected = {"fsdp2": {"pytorch_model_fsdp_0", "optimizer_0"},
                "fsdp2-lora": {"adapter_model.safetensors", "pytorch_model_fsdp.bin", "optimizer.bin"},
                "zero2": {"global_step4", "scheduler.pt"}, "zero3": {"global_step4", "scheduler.pt"}}.get(
                    engine, {"optimizer.pt"})
    assert expected <= saved, saved
