"""Run with 2 CPU processes (gloo) from test_two_processes.py, by torchrun or `accelerate launch`.

Each rank trains on its own, deliberately uneven, samples: rank 0 gets three times as many as rank 1,
and longer ones. Writes each rank's full parameters and step() statistics to the output folder.

Usage: worker_step.py MODEL_DIR OUT_DIR MODE ENGINE
    MODE: train | save | resume | nonfinite (rank 0's forward yields NaN in call 1: no update may be taken)
    ENGINE: ddp | lora (LoRA adapters from `peft_config`, under DDP) |
            fsdp2 (FSDP2, every parameter sharded over the 2 ranks) | fsdp2-lora (LoRA under FSDP2) |
            zero2 | zero3 (DeepSpeed ZeRO stage 2 / 3)

The engines in `LAUNCH_FILES` are launched with `accelerate launch --config_file` and the shipped
launch file, whose settings reach the trainer through the environment; the others through torchrun
with the engine set in the training arguments (`config(..., engine=...)`), the other way users pick one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from datasets import Dataset
from peft import LoraConfig
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer

CALLS = 4
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Three held-out texts: the ranks' evaluation shares are uneven, and `evaluate()` must count each once.
EVAL_TEXTS = ["the quick brown fox", "jumps over", "the lazy dog and the cat"]
ENGINES = ("ddp", "lora", "fsdp2", "fsdp2-lora", "zero2", "zero3")
LAUNCH_FILES = {"fsdp2": EXAMPLES / "accelerate" / "fsdp2.yaml",
                "zero2": EXAMPLES / "accelerate" / "deepspeed_zero2.yaml"}


def rank_samples(rank: int, call: int, vocab: int) -> list[torch.Tensor]:
    """Rank 0: 6 samples of 9-20 tokens; rank 1: 2 samples of 3-6 tokens (different every call), and none
    in the last call, where it must still join every collective of rank 0's updates."""
    if rank == 1 and call == CALLS - 1:
        return []
    generator = torch.Generator().manual_seed(100 * call + rank)
    count, (low, high) = (6, (9, 21)) if rank == 0 else (2, (3, 7))
    lengths = torch.randint(low, high, (count,), generator=generator).tolist()
    return [torch.randint(4, vocab, (n,), generator=generator) for n in lengths]


def config(out: Path, batch_size: int = 2, accumulation: int = 2, engine: str = "ddp",
           from_launch_file: bool = False, **overrides) -> IterativeSFTConfig:
    """The run's config for `engine` (see the module docstring); `overrides` replace any field.

    `from_launch_file`: the engine's settings come from the launch file, not from these arguments."""
    # accelerate runs DeepSpeed only without `use_cpu`; the gloo process group comes from
    # `use_gloo_process_group()`, which transformers takes over (`use_configured_state`).
    deepspeed_on_cpu = {"use_cpu": False, "accelerator_config": {"use_configured_state": True}}
    engine_args = {"zero2": deepspeed_on_cpu, "zero3": deepspeed_on_cpu} if from_launch_file else {
        **{engine: {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"]}}
           for engine in ("fsdp2", "fsdp2-lora")},
        **{f"zero{stage}": {**deepspeed_on_cpu, "deepspeed": str(EXAMPLES / "deepspeed" / f"zero{stage}.json")}
           for stage in (2, 3)},
    }
    return IterativeSFTConfig(**{
        "output_dir": str(out / "trainer"), "report_to": "none", "save_strategy": "no",
        "per_device_train_batch_size": batch_size, "gradient_accumulation_steps": accumulation,
        "learning_rate": 1e-2, "warmup_steps": 2, "use_cpu": True, "max_grad_norm": 0.0, "shuffle_samples": False,
        "seed": 0,
        **engine_args.get(engine, {}), **overrides})


def use_gloo_process_group(engine: str) -> None:
    """DeepSpeed on CPU: start accelerate's process state on gloo before transformers would pick a backend."""
    if engine.startswith("zero"):
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        PartialState(backend="gloo")


def evaluation() -> dict:
    """The trainer's evaluation arguments: the held-out texts and `prediction_summary` as the metric,
    which goes through transformers' prediction loop (predictions gathered across ranks)."""
    return {"eval_dataset": Dataset.from_dict({"text": EVAL_TEXTS}), "compute_metrics": prediction_summary,
            "preprocess_logits_for_metrics": lambda logits, labels: logits.argmax(dim=-1)}


def prediction_summary(prediction) -> dict[str, float]:
    """How many label tokens were predicted, and the mean predicted id: a row seen twice or not at all,
    or predictions matched to the wrong row, changes one of them (an untrained model's accuracy is 0)."""
    predicted, target = prediction.predictions[:, :-1], prediction.label_ids[:, 1:]  # position t predicts t + 1
    keep = target != -100
    return {"label_tokens": int(keep.sum()), "mean_predicted_id": float(predicted[keep].mean())}


def peft_config(engine: str) -> LoraConfig | None:
    return LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if "lora" in engine else None


class CpuFSDP2Trainer(IterativeSFTTrainer):
    """Runs FSDP2 on CPU processes, which accelerate only enables on accelerators.

    accelerate leaves a CPU run as plain multi-process (DDP) even with an FSDP plugin; torch's
    `fully_shard` itself works over gloo. Switching accelerate's state to FSDP right after the
    trainer creates its accelerator sends the whole FSDP2 path (sharding at prepare, no_sync,
    DTensor gradient clipping, full-state-dict saving and loading) through real sharded collectives.
    """

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.accelerator.state.distributed_type = DistributedType.FSDP
        # From the training arguments, or else from the environment `accelerate launch` set from its file.
        self.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(**(self.args.fsdp_plugin_args or {}))
        self.is_fsdp_enabled = True


def full_parameters(trainer: IterativeSFTTrainer) -> dict[str, torch.Tensor]:
    """Every entry of the model's state dict, unsharded, on the host."""
    gathered = contextlib.nullcontext()
    if trainer.is_deepspeed_enabled and trainer.shards_parameters:  # ZeRO-3 partitions every parameter
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(trainer.model.parameters()))
    with gathered:
        return {name: (value.full_tensor() if isinstance(value, DTensor) else value).detach().cpu().clone()
                for name, value in trainer.model.state_dict().items()}


@contextlib.contextmanager
def nan_after(module: torch.nn.Module):
    """Inside: `module`'s output is NaN, so the loss and every gradient of the update become NaN."""
    handle = module.register_forward_hook(lambda _module, _inputs, output: output * float("nan"))
    try:
        yield
    finally:
        handle.remove()


def main(model_dir: str, out: Path, mode: str, engine: str) -> None:
    use_gloo_process_group(engine)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer_class = CpuFSDP2Trainer if engine.startswith("fsdp2") else IterativeSFTTrainer
    args = config(out, engine=engine, from_launch_file=engine in LAUNCH_FILES)
    trainer = trainer_class(model, args, tokenizer=tokenizer, peft_config=peft_config(engine),
                            **evaluation())
    if engine.startswith("fsdp2"):
        assert trainer.accelerator.is_fsdp2 and type(trainer.model_wrapped).__name__.startswith("FSDP")
    if engine.startswith("zero"):
        assert type(trainer.model_wrapped).__name__ == "DeepSpeedEngine"
        assert trainer.accelerator.state.deepspeed_plugin.zero_stage == int(engine[-1])
    rank = trainer.accelerator.process_index
    first = 0
    if mode == "resume":
        trainer.resume_from_checkpoint(str(out / f"{engine}-checkpoint"))
        first = 2
    stats = []
    for call in range(first, CALLS):
        poison = contextlib.nullcontext()
        if mode == "nonfinite" and call == 1 and rank == 0:
            poison = nan_after(dict(trainer.model.named_modules())["model.norm"])
        with poison:
            stats.append(trainer.step(input_ids=rank_samples(rank, call, len(tokenizer))))
        if mode == "save" and call == 1:
            trainer.save_checkpoint(out / f"{engine}-checkpoint")
    torch.save(full_parameters(trainer), out / f"{engine}-{mode}-rank{rank}.pt")
    if mode == "train":
        trainer.save_model(str(out / f"{engine}-final"))
        (out / f"{engine}-eval-rank{rank}.json").write_text(json.dumps(trainer.evaluate()))
    (out / f"{engine}-{mode}-stats-rank{rank}.json").write_text(json.dumps(stats))
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4])
    # Every output is written and both ranks are past their last collective. Skip the process-group
    # teardown: destroying a gloo group intermittently hangs one rank on CPU here (about one run in
    # four, with torch 2.13), which says nothing about training.
    sys.stdout.flush()
    os._exit(0)
