"""reasoning-gym tasks as the loop's prompts and verifiers (the optional extra `itersft[reasoning-gym]`).

reasoning-gym (Apache-2.0) generates questions procedurally from a seed, over a hundred tasks, and
checks an answer with the task's own `score_answer(answer, entry)`, a float in [0, 1] that gives
partial credit in places (by default len(gold)/len(answer) when the gold answer sits inside a longer
one; gsm_symbolic gives 0.01 to a wrong number). A spec names one task or a weighted mix:

    {name: basic_arithmetic, size: 256, seed: 0, config: {min_terms: 2, max_terms: 2}}
    {datasets: [{name: chain_sum, weight: 1, config: {...}}, {name: leg_counting, weight: 2}], size: 256, seed: 0}

`config` takes the task's own settings (the fields of its config class; `size` and `seed` are set at
the top of the spec). Optional: `system_prompt`, the name of one of reasoning-gym's `SYSTEM_PROMPTS`
("default", its own convention, unless set; null for none, so that `SamplingConfig.system_prompt` can
give your own), and `few_shot`: that many worked examples (a question and `<answer>gold</answer>`) as
earlier turns of every prompt, drawn as the first entries of the set and never asked themselves.
`seed` is required: reasoning-gym draws a random one without it. Everything is checked before any
model loads: an unknown task is refused naming the close names, an unknown config key naming the
accepted ones, and the configuration is built once, so reasoning-gym's own checks run too.

**Held-out sets must not share questions with training.** Most tasks draw entry i at seed s from
`Random(s + i)`: seeds 0 and 1 of size 256 share 255 entries, and a small configuration (two one-digit
terms) has only a few hundred distinct questions. So `gym_prompts(spec, held_out_from=training_prompts)`
drops every question that appears as a user turn of the training prompts (their few-shot examples
included), and each set drops the questions its own examples answer; the counts are logged and kept
in `GymPrompts`. A held-out set left empty is refused.

**Metadata.** Each prompt's meta is `{"answer": gold, "reasoning_gym": {"task": ..., "index": i}}`:
the spec that rebuilds the dataset and the entry's index, not the entry, since entries' metadata hold
tuples that JSON (the run identity, files) turns into lists and some `score_answer`s then fail (arc_agi
scores its own gold answer 0.05 after a round trip). The scorer rebuilds the dataset and the entry
once per process (cached; scoring workers are forked after the prompts were built, so they inherit
both) and checks that the entry's answer is still the one in the meta.

**Scorers.** `reasoning_gym` follows reasoning-gym's convention: the answer is the last
`<answer>...</answer>` (`reasoning_gym.utils.extract_answer`), scored by the task's `score_answer`.
`reasoning_gym_fallback` takes the tag too, and, when none is written and the gold answer is a number,
the number of the completion's final answer, read by the rule `numeric` and `math` follow
(`itersft.scoring.final_answer`: the last box, else the `####` marker, else the last number; a hedge
such as "4 or 5" scores 0.0): small instruct models rarely write the tags (SmolLM2-135M-Instruct
wrote none in 192 greedy answers) but often end on the right number. Both return None (unscorable)
when they find no answer, where reasoning-gym scores 0.0: the loop counts those apart
(`samples_unscorable`), which for `reasoning_gym` is the untagged share.
Partial credit stays partial: a `Threshold(1.0)` filter (the run config's default) keeps full scores
only. `evaluate_prompts(..., extra_scorers=...)` scores the same greedy answers both ways.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itersft.checks import Problems

logger = logging.getLogger(__name__)

SPEC_KEYS = ("name", "datasets", "size", "seed", "config", "system_prompt", "few_shot")
MIX_KEYS = ("name", "weight", "config")
DEFAULT_SYSTEM_PROMPT = "default"
"""reasoning-gym's own system prompt (it asks for the reasoning, then `<answer>answer here</answer>`)."""

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")  # a gold answer that is a plain number gets the last-number fallback


@dataclass(frozen=True)
class GymTask:
    """A checked spec: `dataset` rebuilds the reasoning-gym dataset (JSON: name or datasets, config, size,
    seed), `system_prompt` is the system turn's text (None: no system turn), `few_shot` the examples shown."""

    dataset: dict[str, Any]
    system_prompt: str | None
    few_shot: int

    @property
    def key(self) -> str:
        """`dataset` as canonical JSON: the cache key and what the meta carries."""
        return json.dumps(self.dataset, sort_keys=True)


@dataclass(frozen=True)
class GymPrompts:
    """Prompts (chat messages) and their meta, with how many questions were dropped and why."""

    prompts: list[list[dict[str, str]]]
    meta: list[dict[str, Any]]
    dropped_as_examples: int = 0
    dropped_as_seen: int = 0


def gym_prompts(spec: Any, held_out_from: Sequence[Any] = (), section: str = "prompts") -> GymPrompts:
    """Build the prompts and meta a spec describes (see the module docstring), checked first.

    `held_out_from`: the training prompts (strings or chat messages) of a held-out set; a question that
    appears as one of their user turns is dropped. `section` names the spec in errors.
    """
    task = parse_spec(spec, section)
    entries = [_entry(task.key, index) for index in range(task.dataset["size"])]
    examples = entries[: task.few_shot]
    unanswered = [index for index, entry in enumerate(examples) if entry["answer"] is None]
    if unanswered:
        raise ValueError(f"`{section}.reasoning_gym.few_shot`: entries {unanswered} have no single gold answer to "
                         "show (their task checks an answer by other means); set `few_shot` to 0.")
    head = [{"role": "system", "content": task.system_prompt}] if task.system_prompt is not None else []
    for example in examples:
        head += [{"role": "user", "content": example["question"]},
                 {"role": "assistant", "content": f"<answer>{example['answer']}</answer>"}]
    shown = {example["question"] for example in examples}
    seen = _user_turns(held_out_from)
    prompts, meta = [], []
    dropped_as_examples = dropped_as_seen = 0
    for index in range(task.few_shot, len(entries)):
        question = entries[index]["question"]
        if question in shown:
            dropped_as_examples += 1
        elif question in seen:
            dropped_as_seen += 1
        else:
            prompts.append([*head, {"role": "user", "content": question}])
            meta.append({"answer": entries[index]["answer"], "reasoning_gym": {"task": task.dataset, "index": index}})
    if dropped_as_examples or dropped_as_seen:
        logger.warning("`%s`: dropped %d of %d reasoning-gym questions: %d answered by the few-shot examples, %d also "
                       "among the training prompts", section, dropped_as_examples + dropped_as_seen,
                       len(entries) - task.few_shot, dropped_as_examples, dropped_as_seen)
    if not prompts:
        raise ValueError(f"`{section}.reasoning_gym`: every question was dropped ({dropped_as_seen} also among the "
                         f"training prompts, {dropped_as_examples} answered by the examples). Most tasks draw entry i "
                         "at seed s from Random(s + i): give the held-out set a seed at least the training `size` "
                         "away, or a configuration with more distinct questions.")
    return GymPrompts(prompts, meta, dropped_as_examples, dropped_as_seen)


def gym_rows(section: str, spec: Mapping[str, Any], held_out_from: Sequence[Any] | None = None) -> list[dict]:
    """The prompt set `{reasoning_gym: <spec>}` of a run config as rows in TRL's prompt-only format
    (`prompt`, and the meta's `answer` and `reasoning_gym` columns), for `itersft.tasks.prompt_sources`."""
    built = gym_prompts(spec["reasoning_gym"], held_out_from or (), section)
    return [{"prompt": prompt, **meta} for prompt, meta in zip(built.prompts, built.meta)]


def parse_spec(spec: Any, section: str = "prompts") -> GymTask:
    """Check a spec against the installed reasoning-gym, collecting every problem, and build its dataset once."""
    where = f"`{section}.reasoning_gym`"
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a mapping with `name` (or `datasets`), `size` and `seed`, got {spec!r}.")
    registry, system_prompts = _reasoning_gym()
    problems = Problems(where)
    _unknown_keys(problems, "", spec, SPEC_KEYS)
    problems.integer("size", spec.get("size"), minimum=1)
    if "seed" not in spec:
        problems.add("`seed` is required: without one reasoning-gym draws a random seed, and a held-out set needs "
                     "a seed of its own.")
    else:
        problems.integer("seed", spec["seed"], minimum=0)
    few_shot = spec.get("few_shot", 0)
    problems.integer("few_shot", few_shot, minimum=0)
    system_prompt = spec.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    if system_prompt is not None:
        problems.choice("system_prompt", system_prompt, [*system_prompts, None])
    if ("name" in spec) == ("datasets" in spec):
        problems.add("give either `name` (one task) or `datasets` (a weighted mix of tasks), not both or neither.")
    dataset: dict[str, Any] = {}
    if "name" in spec:
        dataset = {"name": spec["name"], "config": _checked_config(problems, "", spec, registry)}
    elif isinstance(spec.get("datasets"), list) and spec["datasets"]:
        dataset = {"datasets": [_checked_mix_entry(problems, f"datasets[{i}].", entry, registry)
                                for i, entry in enumerate(spec["datasets"])]}
        names = [entry.get("name") for entry in spec["datasets"] if isinstance(entry, Mapping)]
        if len(set(map(str, names))) != len(names):
            problems.add(f"`datasets` names a task twice ({names}); reasoning-gym mixes distinct tasks.")
    elif "datasets" in spec:
        problems.add(f"`datasets` must be a non-empty list of {{name, weight, config}}, got {spec['datasets']!r}.")
    try:
        json.dumps(dataset)
    except (TypeError, ValueError):
        problems.add(f"`config` values must be JSON-like (numbers, strings, lists, mappings), got {dataset!r}.")
    problems.raise_if_any()
    task = GymTask({**dataset, "size": spec["size"] + few_shot, "seed": spec["seed"]},
                   None if system_prompt is None else system_prompts[system_prompt], few_shot)
    try:
        _dataset(task.key)
    except (AssertionError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{where}: reasoning-gym refused the configuration: {error or type(error).__name__}") from None
    return task


def _checked_config(problems: Problems, prefix: str, spec: Mapping, registry: dict) -> dict:
    """The task's config after checking the name against the registry and the keys against its config class."""
    name, config = spec.get("name"), spec.get("config") or {}
    names = sorted(n for n in registry if n != "composite")
    if not isinstance(config, Mapping):
        problems.add(f"`{prefix}config` must be a mapping of {name}'s settings, got {config!r}.")
        return {}
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.6)
        hint = (f"close names: {', '.join(close)}" if close else f"the {len(names)} tasks: {', '.join(names)}")
        if name == "composite":
            hint = "a mix of tasks is given as `datasets: [{name, weight, config}, ...]`"
        problems.add(f"`{prefix}name` {name!r} is not a reasoning-gym task; {hint}.")
        return dict(config)
    fields = [f.name for f in dataclasses.fields(registry[name][1]) if f.name not in ("seed", "size")]
    for key in ("seed", "size"):
        if key in config:
            problems.add(f"`{prefix}config.{key}`: set `{key}` at the top of the spec, not in a task's config.")
    _unknown_keys(problems, f"{prefix}config.", {k: v for k, v in config.items() if k not in ("seed", "size")},
                  fields, f" of {name}")
    return dict(config)


def _checked_mix_entry(problems: Problems, prefix: str, entry: Any, registry: dict) -> dict:
    if not isinstance(entry, Mapping):
        problems.add(f"`{prefix[:-1]}` must be a mapping {{name, weight, config}}, got {entry!r}.")
        return {}
    _unknown_keys(problems, prefix, entry, MIX_KEYS)
    problems.number(f"{prefix}weight", entry.get("weight"), minimum=0, exclusive_minimum=True)
    return {"name": entry.get("name"), "weight": entry.get("weight"),
            "config": _checked_config(problems, prefix, entry, registry)}


def _unknown_keys(problems: Problems, prefix: str, values: Mapping, accepted: Sequence[str], owner: str = "") -> None:
    for key in sorted(set(values) - set(accepted), key=str):
        close = difflib.get_close_matches(str(key), list(accepted), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        problems.add(f"`{prefix}{key}` is not a setting{owner}; {hint}accepted: {', '.join(accepted)}.")


def _reasoning_gym() -> tuple[dict, dict[str, str]]:
    """reasoning-gym's registry of tasks (name -> (dataset class, config class)) and its system prompts."""
    try:
        from reasoning_gym.factory import DATASETS
        from reasoning_gym.utils import SYSTEM_PROMPTS
    except ImportError as error:
        raise ValueError(f"reasoning-gym tasks need the `reasoning-gym` package ({error}): "
                         "pip install 'itersft[reasoning-gym]'") from None
    return DATASETS, SYSTEM_PROMPTS


@functools.lru_cache(maxsize=16)
def _dataset(key: str):
    """The reasoning-gym dataset `key` (a `GymTask.key`) describes, built once per process."""
    import reasoning_gym

    spec = json.loads(key)
    if "datasets" in spec:
        from reasoning_gym.composite import DatasetSpec

        mix = [DatasetSpec(entry["name"], entry["weight"], entry["config"]) for entry in spec["datasets"]]
        return reasoning_gym.create_dataset("composite", size=spec["size"], seed=spec["seed"], datasets=mix)
    return reasoning_gym.create_dataset(spec["name"], size=spec["size"], seed=spec["seed"], **spec["config"])


@functools.lru_cache(maxsize=1 << 16)
def _entry(key: str, index: int) -> dict[str, Any]:
    """Entry `index` of the dataset `key` describes, generated once per process."""
    return _dataset(key)[index]


def _user_turns(prompts: Sequence[Any]) -> set[str]:
    """Every user turn of `prompts` (a string prompt is one)."""
    turns = set()
    for prompt in prompts:
        if isinstance(prompt, str):
            turns.add(prompt)
        else:
            turns.update(turn["content"] for turn in prompt if turn.get("role") == "user")
    return turns


# ---- scoring ----------------------------------------------------------------------------------------


def reasoning_gym_strict(prompts: Sequence[Any], completions: Sequence[str], reasoning_gym: Sequence[Any],
                         answer: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    """The task's `score_answer` on the last `<answer>...</answer>` of each completion; None without one.

    A scorer in the loop's sense (`itersft.scoring.scorers`); meta `reasoning_gym` (and `answer`, checked
    against the rebuilt entry) as `gym_prompts` writes it. Built-in name: `reasoning_gym`.
    """
    return _scores(completions, reasoning_gym, answer, fallback=False)


def reasoning_gym_fallback(prompts: Sequence[Any], completions: Sequence[str], reasoning_gym: Sequence[Any],
                           answer: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    """As `reasoning_gym_strict`, but a completion without the tag whose gold answer is a number is scored on
    its last number. Built-in name: `reasoning_gym_fallback`."""
    return _scores(completions, reasoning_gym, answer, fallback=True)


def _scores(completions: Sequence[str], references: Sequence[Any], answers: Sequence[Any] | None,
            fallback: bool) -> list[float | None]:
    from reasoning_gym.utils import extract_answer

    from itersft.scoring.final_answer import final_answer

    # Imported here: itersft.scoring.scorers lists these scorers among its built-ins, so it imports this module.
    from itersft.scoring.scorers import final_number_text

    if len(references) != len(completions) or (answers is not None and len(answers) != len(completions)):
        raise ValueError(f"meta `reasoning_gym` has {len(references)} entries but there are {len(completions)} "
                         "completions")
    scores: list[float | None] = []
    for position, (completion, reference) in enumerate(zip(completions, references)):
        key, index = _reference(reference)
        entry = _entry(key, index)
        if answers is not None and answers[position] != entry["answer"]:
            raise ValueError(f"reasoning-gym regenerated entry {index} of {key} with the answer {entry['answer']!r}, "
                             f"not the meta's {answers[position]!r}: the installed reasoning-gym does not draw it "
                             "as it did when the prompts were built")
        found = extract_answer(completion)
        if found is None and fallback and isinstance(entry["answer"], str) and _NUMBER.fullmatch(entry["answer"]):
            final = final_answer(completion)
            if final is not None and final.hedged:
                scores.append(0.0)  # alternatives offered: never right, whichever is the gold answer
                continue
            found = final_number_text(final) if final is not None else None
        scores.append(None if found is None else float(_dataset(key).score_answer(found, entry)))
    return scores


def _reference(reference: Any) -> tuple[str, int]:
    """(dataset key, entry index) from one meta `reasoning_gym` value, or ValueError."""
    if not (isinstance(reference, Mapping) and isinstance(reference.get("task"), Mapping)
            and isinstance(reference.get("index"), int)):
        raise ValueError(f"meta `reasoning_gym` must be {{task, index}} as itersft.tasks.reasoning_gym.gym_prompts "
                         f"writes it, got {reference!r}")
    return json.dumps(reference["task"], sort_keys=True), reference["index"]


def _meta_problems(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Rows without a usable `reasoning_gym` reference, checked before any model loads."""
    problems, keys = [], {}
    for number, row in enumerate(rows):
        try:
            keys.setdefault(_reference(row.get("reasoning_gym"))[0], number)
        except ValueError as error:
            problems.append(f"row {number}: {error} (build the prompts with the reasoning_gym source)")
    for key, number in keys.items():
        try:
            _dataset(key)
        except Exception as error:  # whatever reasoning-gym raises, these rows cannot be scored
            problems.append(f"row {number}: reasoning-gym cannot build {key}: {type(error).__name__}: {error}")
    return problems


def _warm_up() -> None:
    """Import reasoning-gym (about 2 s) once before the scoring workers fork, not in each against the timeout."""
    _reasoning_gym()


for _scorer in (reasoning_gym_strict, reasoning_gym_fallback):
    _scorer.check_meta = _meta_problems
    _scorer.warm_up = _warm_up
