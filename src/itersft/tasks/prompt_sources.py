"""Where a run config's prompts come from: one entry per kind of source in `SOURCES`.

A prompt set (`prompts`, `eval_prompts`, `labelled`) is a mapping with exactly one key naming its
source kind (`path`: a local file or folder, `dataset`: a `datasets` name; see `files`;
`reasoning_gym`: a reasoning-gym task's questions, see `reasoning_gym`), that kind's own keys, and the
keys every kind shares: `prompt_field`, `meta_fields`, `limit` (the first rows only) and, for
`labelled`, `completion_field`. Every source yields rows, which `prompt_rows` turns into prompts and
metadata. A new kind of source is one more entry in `SOURCES`.

A held-out set (`eval_prompts`) is read with the training prompts at hand (`held_out_from`): a kind
that generates its questions (`reasoning_gym`) drops those the training prompts already hold; files
and datasets are read as they are. `reasoning_gym` gives questions without completions, so it is
refused for `labelled`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itersft.sampling.prompts import Prompt
from itersft.sampling.samples import Sample
from itersft.tasks import files
from itersft.tasks.prompt_rows import rows_to_prompts
from itersft.tasks.reasoning_gym import gym_rows


@dataclass(frozen=True)
class PromptSource:
    """A kind of prompt source: how it reads rows from its config mapping, the keys it takes besides its
    own name, and how it is described in `run_identity.json`. With `drops_training_questions`, `read`
    also takes the training prompts and leaves their questions out of a held-out set; `labelled` says
    whether the kind can hold labelled (prompt, completion) pairs."""

    read: Callable[..., list[dict]]
    keys: frozenset[str]
    describe: Callable[[dict[str, Any]], str]
    drops_training_questions: bool = False
    labelled: bool = True


SOURCES: dict[str, PromptSource] = {
    "path": PromptSource(files.read_path, frozenset({"split"}), lambda spec: str(Path(spec["path"]).resolve())),
    "dataset": PromptSource(files.read_dataset, frozenset({"name", "split"}),
                            lambda spec: f"dataset {spec['dataset']!r}"),
    "reasoning_gym": PromptSource(gym_rows, frozenset(),
                                  lambda spec: f"reasoning-gym {json.dumps(spec['reasoning_gym'], sort_keys=True)}",
                                  drops_training_questions=True, labelled=False),
}
"""The source kinds, by the key that names each in a prompt set's mapping."""
SHARED_KEYS = frozenset({"prompt_field", "meta_fields", "limit", "completion_field"})


def read_rows(section: str, spec: Any, held_out_from: Sequence[Prompt] | None = None) -> list[dict]:
    """The rows of the prompt set `spec` (its keys checked), cut to `limit`; a held-out set of a kind with
    `drops_training_questions` without the questions of `held_out_from` (the training prompts)."""
    kind = source_kind(section, spec)
    unknown = sorted(set(spec) - {kind} - SOURCES[kind].keys - SHARED_KEYS)
    if unknown:
        raise ValueError(f"`{section}`: unknown key(s) {unknown}; accepted with `{kind}`: "
                         f"{sorted({kind} | SOURCES[kind].keys | SHARED_KEYS)}.")
    source = SOURCES[kind]
    rows = (source.read(section, spec, held_out_from)
            if held_out_from is not None and source.drops_training_questions else source.read(section, spec))
    return rows[: spec["limit"]] if spec.get("limit") else rows


def source_kind(section: str, spec: Any) -> str:
    """The one key of `spec` that names its source kind."""
    kinds = [key for key in SOURCES if isinstance(spec, dict) and key in spec]
    if len(kinds) != 1:
        raise ValueError(f"`{section}` must be a mapping with exactly one of {sorted(SOURCES)} (where the prompts come "
                         f"from); got {spec!r}.")
    return kinds[0]


def read_prompts(section: str, spec: dict[str, Any], held_out_from: Sequence[Prompt] | None = None
                 ) -> tuple[list[Prompt], list[dict]]:
    """Prompts (strings or chat messages, checked) and per-prompt metadata (every other column, or
    `meta_fields`) of a prompt set; `held_out_from`: the training prompts, for a held-out set."""
    return rows_to_prompts(section, read_rows(section, spec, held_out_from), spec.get("prompt_field"),
                           spec.get("meta_fields"))


def read_labelled(spec: dict[str, Any]) -> list[Sample]:
    """Labelled (prompt, completion) pairs to mix into training; a prompt may be chat messages."""
    kind = source_kind("labelled", spec)
    if not SOURCES[kind].labelled:
        raise ValueError(f"`labelled`: a `{kind}` source gives questions without completions, not labelled "
                         f"(prompt, completion) pairs; read them from one of "
                         f"{sorted(name for name, source in SOURCES.items() if source.labelled)}.")
    rows = read_rows("labelled", spec)
    prompts, _ = rows_to_prompts("labelled", rows, spec.get("prompt_field"), [])
    completion_field = spec.get("completion_field", "completion")
    missing = [number for number, row in enumerate(rows) if completion_field not in row]
    if missing:
        raise ValueError(f"`labelled` rows {missing[:10]} have no `{completion_field}` field (set `completion_field`).")
    return [Sample(prompt=prompt, completion=str(row[completion_field]), prompt_index=i, sample_index=0)
            for i, (prompt, row) in enumerate(zip(prompts, rows))]


def describe_sources(config: dict[str, Any]) -> dict[str, str]:
    """Where each prompt set of a run config was read from, for `run_identity.json`."""
    described = {}
    for section in ("prompts", "eval_prompts", "labelled"):
        spec = config.get(section)
        if isinstance(spec, dict):
            kind = source_kind(section, spec)
            options = {k: v for k, v in spec.items() if k != kind}
            described[section] = SOURCES[kind].describe(spec) + (f" {json.dumps(options, sort_keys=True)}"
                                                                 if options else "")
    return described
