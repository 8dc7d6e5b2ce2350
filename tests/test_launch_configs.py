"""The launch configs in examples/ are what accelerate and IterativeSFTTrainer accept.

fsdp2.yaml, deepspeed_zero2.yaml and both DeepSpeed json files also train in the 2-process tests
(tests/distributed/worker_step.py); here every file is parsed by accelerate's own loader and checked
against what the trainer supports.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from itersft.trainer.engine import finalize_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_CONFIGS = sorted((ROOT / "examples" / "accelerate").glob("*.yaml"))


def test_every_launch_config_is_covered():
    assert {p.stem for p in LAUNCH_CONFIGS} == {"ddp_cpu_2proc", "ddp_gpus", "fsdp2", "deepspeed_zero2",
                                                "deepspeed_zero3"}


@pytest.mark.parametrize("path", LAUNCH_CONFIGS, ids=lambda p: p.stem)
def test_launch_config_loads_and_asks_for_a_supported_set_up(path):
    config = load_config_from_file(str(path))
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# accelerate launch --config_file examples/accelerate/{path.name} ")
    assert config.mixed_precision in (None, "no")  # precision belongs to the training config (`bf16: true`)
    if config.distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2
    if config.distributed_type == DistributedType.DEEPSPEED:
        ds_config = json.loads((ROOT / config.deepspeed_config["deepspeed_config_file"]).read_text())
        assert ds_config["zero_optimization"]["stage"] == int(path.stem[-1])
        assert "optimizer" not in ds_config and "scheduler" not in ds_config
        assert config.deepspeed_config["zero3_init_flag"] == (path.stem == "deepspeed_zero3")


def _accelerator_with(ds_config: dict):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(
        hf_ds_config=SimpleNamespace(config=ds_config))))


@pytest.mark.parametrize("section", ["optimizer", "scheduler"])
def test_deepspeed_config_with_its_own_optimizer_or_schedule_is_refused(section):
    accelerator = _accelerator_with({section: {"type": "AdamW"}, "zero_optimization": {"stage": 2}})
    with pytest.raises(ValueError, match=f"'{section}' section"):
        finalize_deepspeed_config(accelerator, None, None)
