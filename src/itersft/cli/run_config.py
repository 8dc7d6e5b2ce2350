"""Read an `itersft run` config (YAML or JSON) and build the loop's parts from it.

Every section is checked against the fields of the object it configures; an unknown key is an
error naming the section, the key and the accepted keys, never silently ignored.

Prompts (`prompts`, `eval_prompts`, `labelled`) are read by `itersft.tasks` (a local JSON/JSONL,
Parquet or CSV file, a `save_to_disk` folder, a `datasets` name; for `prompts` and `eval_prompts`
also a reasoning-gym task, `{reasoning_gym: {name, size, seed, config}}`, whose held-out questions
that are also training questions are dropped: `itersft.tasks.reasoning_gym`). The prompt column is
`prompt_field`; left out, it is `prompt` when the first row has one, else `messages`; every other
column is the prompt's metadata (`meta_fields` restricts it). A cell holding a string is a text prompt, one holding a
list of `{role, content}` turns is a chat prompt (`itersft.sampling.prompts`: known roles, a user turn
last). Whether text prompts get the chat template, and a system prompt, are `sampling.chat_template`
(true | false | auto) and `sampling.system_prompt`: the sampling settings say how prompts are shown to
the model, and the loop trains in the format it sampled in. Scoring is a `scorer` or `reward_funcs`
(with `reward_weights`), never both (`itersft.scoring.scorer_choice`). All of this is checked before
any model loads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from itersft import filters as filter_module
from itersft.config import IterativeSFTConfig
from itersft.loop.expert_iteration import LoopConfig
from itersft.sampling.sampler import SamplingConfig
from itersft.scoring.reward_functions import RewardFunctions
from itersft.scoring.scorer_choice import choose_scorer
from itersft.tasks.prompt_sources import describe_sources, read_labelled, read_prompts
from itersft.tasks.reasoning_gym import DEFAULT_SYSTEM_PROMPT

__all__ = ["build_dataclass", "build_filter", "build_loop", "build_peft", "build_sampling", "build_scoring",
           "build_training_args", "describe_sources", "load_config", "read_labelled",
           "read_prompts"]

SECTIONS = {"model", "tokenizer", "output_dir", "prompts", "eval_prompts", "labelled", "scorer", "reward_funcs",
            "reward_weights", "filters", "sampling", "loop", "training", "peft"}
FILTERS = {"threshold": filter_module.Threshold, "best_of_k": filter_module.BestOfK,
           "top_percent": filter_module.TopPercent, "drop_uniform_prompts": filter_module.DropUniformPrompts,
           "dedup": filter_module.Dedup, "above_group_mean": filter_module.AboveGroupMean}
DEFAULT_FILTERS = [{"threshold": 1.0}]
"""Without `filters`: keep what a scorer judges right (1.0)."""
DEFAULT_REWARD_FILTERS = [{"above_group_mean": {}}]
"""Without `filters`, with `reward_funcs`: keep what beats its prompt's mean (their sum has no fixed scale)."""


def load_config(path: str | Path) -> dict[str, Any]:
    """Parse the file (YAML is a superset of JSON) and check its top-level keys."""
    text = Path(path).read_text()
    config = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config must be a mapping of sections, got {type(config).__name__}.")
    _check_keys("config", config, SECTIONS)
    for required in ("model", "output_dir", "prompts"):
        if required not in config:
            raise ValueError(f"{path}: `{required}` is required.")
    sampling = config.get("sampling") if isinstance(config.get("sampling"), dict) else {}
    for section in ("prompts", "eval_prompts"):
        gym = config[section].get("reasoning_gym") if isinstance(config.get(section), dict) else None
        if (isinstance(gym, dict) and gym.get("system_prompt", DEFAULT_SYSTEM_PROMPT) is not None
                and sampling.get("system_prompt") is not None):
            raise ValueError(f"{path}: `sampling.system_prompt` is set, but `{section}.reasoning_gym` gives its "
                             "prompts their own (reasoning-gym's `default` unless its `system_prompt` says otherwise), "
                             "which would win: set `system_prompt: null` there to use yours.")
    return config


def build_dataclass(section: str, cls, values: dict[str, Any] | None, **fixed):
    """Instantiate `cls` from a config section, rejecting keys it has no field for."""
    values = dict(values or {})
    _check_keys(section, values, {f.name for f in dataclasses.fields(cls) if f.init} - set(fixed))
    return cls(**values, **fixed)


def build_training_args(config: dict[str, Any]) -> IterativeSFTConfig:
    values = {"report_to": "none", "save_strategy": "no", **(config.get("training") or {})}
    return build_dataclass("training", IterativeSFTConfig, values,
                           output_dir=str(Path(config["output_dir"]) / "trainer"))


def build_sampling(config: dict[str, Any]) -> SamplingConfig:
    return build_dataclass("sampling", SamplingConfig, config.get("sampling"))


def build_loop(config: dict[str, Any]) -> LoopConfig:
    return build_dataclass("loop", LoopConfig, config.get("loop"), output_dir=config["output_dir"])


def build_scoring(config: dict[str, Any]) -> tuple[Any, RewardFunctions | None]:
    """(`scorer` as written, None) or (None, the `reward_funcs` with their `reward_weights`), checked; exactly one
    of the two sections is given. A reward model named by `reward_funcs` loads here."""
    chosen, _ = choose_scorer(config.get("scorer"), config.get("reward_funcs"), config.get("reward_weights"))
    return (None, chosen) if isinstance(chosen, RewardFunctions) else (config["scorer"], None)


def build_filter(config: dict[str, Any]):
    """`filters` is a list of one-key mappings, applied in order, e.g. `[{threshold: 1.0}, {dedup: {}}]`; left out,
    `DEFAULT_FILTERS`, or with `reward_funcs` `DEFAULT_REWARD_FILTERS`."""
    specs = config.get("filters") or (DEFAULT_REWARD_FILTERS if config.get("reward_funcs") else DEFAULT_FILTERS)
    built = []
    for spec in specs:
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ValueError(f"`filters` entries are one-key mappings like {{threshold: 1.0}}, got {spec!r}.")
        (name, arguments), = spec.items()
        if name not in FILTERS:
            raise ValueError(f"`filters`: unknown filter {name!r}; choose from {sorted(FILTERS)}.")
        cls = FILTERS[name]
        built.append(cls(**arguments) if isinstance(arguments, dict) else cls(arguments))
    return built[0] if len(built) == 1 else filter_module.Compose(*built)


def build_peft(config: dict[str, Any]):
    if not config.get("peft"):
        return None
    from peft import LoraConfig

    return build_dataclass("peft", LoraConfig, config["peft"])


def _check_keys(section: str, values: dict, allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"`{section}`: unknown key(s) {unknown}; accepted: {sorted(allowed)}.")
