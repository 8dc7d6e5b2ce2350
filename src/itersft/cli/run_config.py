"""Read an `itersft run` config (YAML or JSON) and build the loop's parts from it.

Every section is checked against the fields of the object it configures; an unknown key is an
error naming the section, the key and the accepted keys, never silently ignored.

Prompts (`prompts`, `eval_prompts`, `labelled`) come from a JSONL file or a `datasets` dataset;
`prompts` and `eval_prompts` also from a reasoning-gym task (`{reasoning_gym: {name, size, seed, config}}`,
see `itersft.tasks.reasoning_gym`; held-out questions that are also training questions are dropped). The
prompt column is `prompt_field`; left out, it is `prompt` when the first row has one, else `messages`.
A cell holding a string is a text prompt, one holding a list of `{role, content}` turns is a chat
prompt (`itersft.sampling.prompts`: known roles, a user turn last). Whether text prompts get the chat
template, and a system prompt, are `sampling.chat_template` (true | false | auto) and
`sampling.system_prompt`: the sampling settings say how prompts are shown to the model, and the
loop trains in the format it sampled in. All of this is checked before any model loads.
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
from itersft.sampling.prompts import Prompt, check_format, check_prompts
from itersft.sampling.sampler import SamplingConfig
from itersft.sampling.samples import Sample
from itersft.tasks.reasoning_gym import DEFAULT_SYSTEM_PROMPT, gym_prompts

SECTIONS = {"model", "tokenizer", "output_dir", "prompts", "eval_prompts", "labelled", "scorer", "filters",
            "sampling", "loop", "training", "peft"}
FILTERS = {"threshold": filter_module.Threshold, "best_of_k": filter_module.BestOfK,
           "top_percent": filter_module.TopPercent, "drop_uniform_prompts": filter_module.DropUniformPrompts,
           "dedup": filter_module.Dedup}
SOURCE_KEYS = {"path", "dataset", "name", "split", "prompt_field", "completion_field", "meta_fields", "limit"}


def load_config(path: str | Path) -> dict[str, Any]:
    """Parse the file (YAML is a superset of JSON) and check its top-level keys."""
    text = Path(path).read_text()
    config = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config must be a mapping of sections, got {type(config).__name__}.")
    _check_keys("config", config, SECTIONS)
    for required in ("model", "output_dir", "prompts", "scorer"):
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


def describe_sources(config: dict[str, Any]) -> dict[str, str]:
    """Where each prompt set was read from, for `run_identity.json` (a file as its absolute path)."""
    described = {}
    for section in ("prompts", "eval_prompts", "labelled"):
        spec = config.get(section)
        if isinstance(spec, dict) and "reasoning_gym" in spec:
            described[section] = f"reasoning-gym {json.dumps(spec['reasoning_gym'], sort_keys=True)}"
        elif isinstance(spec, dict):
            where = str(Path(spec["path"]).resolve()) if "path" in spec else f"dataset {spec.get('dataset')!r}"
            options = {k: v for k, v in spec.items() if k not in ("path", "dataset")}
            described[section] = where + (f" {json.dumps(options, sort_keys=True)}" if options else "")
    return described


def build_filter(config: dict[str, Any]):
    """`filters` is a list of one-key mappings, applied in order, e.g. `[{threshold: 1.0}, {dedup: {}}]`."""
    specs = config.get("filters") or [{"threshold": 1.0}]
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


def read_prompts(section: str, spec: dict[str, Any], held_out_from: list[Prompt] | None = None
                 ) -> tuple[list[Prompt], list[dict]]:
    """Prompts (strings or chat messages, checked) and per-prompt metadata from a JSONL file (`path`), a
    `datasets` dataset or a reasoning-gym task (`reasoning_gym`). A reasoning-gym set drops the questions
    that are user turns of `held_out_from` (the training prompts, for `eval_prompts`); files and datasets
    are read as they are."""
    if isinstance(spec, dict) and "reasoning_gym" in spec:
        _check_keys(section, spec, {"reasoning_gym"})
        task = gym_prompts(spec["reasoning_gym"], held_out_from or (), section)
        return task.prompts, task.meta
    rows = _read_rows(section, spec)
    prompts = _prompt_column(section, spec, rows)
    meta_fields = spec.get("meta_fields", ["answer"])
    return prompts, [{name: row[name] for name in meta_fields if name in row} for row in rows]


def read_labelled(spec: dict[str, Any]) -> list[Sample]:
    """Labelled (prompt, completion) pairs to mix into training; a prompt may be chat messages."""
    rows = _read_rows("labelled", spec)
    prompts = _prompt_column("labelled", spec, rows)
    completion_field = spec.get("completion_field", "completion")
    missing = [number for number, row in enumerate(rows) if completion_field not in row]
    if missing:
        raise ValueError(f"`labelled` rows {missing[:10]} have no `{completion_field}` field (set `completion_field`).")
    return [Sample(prompt=prompt, completion=str(row[completion_field]), prompt_index=i, sample_index=0)
            for i, (prompt, row) in enumerate(zip(prompts, rows))]


def check_prompt_format(sampling: SamplingConfig, tokenizer, *prompt_lists: list[Prompt] | None) -> None:
    """Refuse, before the model loads, a prompt format the tokenizer cannot give (`itersft.sampling.prompts`)."""
    every_prompt = [prompt for prompts in prompt_lists if prompts for prompt in prompts]
    check_format(sampling.chat_template, sampling.system_prompt, every_prompt, tokenizer)


def _prompt_column(section: str, spec: dict[str, Any], rows: list[dict]) -> list[Prompt]:
    """The prompt cells: strings stay strings (other scalars become strings), lists are chat messages."""
    field = spec.get("prompt_field") or next((f for f in ("prompt", "messages") if rows and f in rows[0]), "prompt")
    missing = [number for number, row in enumerate(rows) if field not in row]
    if missing:
        raise ValueError(f"`{section}` rows {missing[:10]} have no `{field}` field: set `prompt_field` to the column "
                         "holding the prompt (a string, or a list of {role, content} messages).")
    prompts = [row[field] if isinstance(row[field], (list, tuple)) else str(row[field]) for row in rows]
    check_prompts(prompts, section)
    return prompts


def _read_rows(section: str, spec: dict[str, Any]) -> list[dict]:
    if not isinstance(spec, dict):
        raise ValueError(f"`{section}` must be a mapping with `path` (JSONL) or `dataset`.")
    _check_keys(section, spec, SOURCE_KEYS)
    if "path" in spec:
        lines = Path(spec["path"]).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    elif "dataset" in spec:
        from datasets import load_dataset

        rows = list(load_dataset(spec["dataset"], spec.get("name"), split=spec.get("split", "train")))
    else:
        raise ValueError(f"`{section}` needs `path` (a JSONL file) or `dataset` (a datasets name or path).")
    return rows[: spec["limit"]] if spec.get("limit") else rows


def _check_keys(section: str, values: dict, allowed: set[str]) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"`{section}`: unknown key(s) {unknown}; accepted: {sorted(allowed)}.")
