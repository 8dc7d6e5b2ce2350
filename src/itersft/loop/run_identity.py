"""What a loop run is, written to `<output_dir>/run_identity.json`, so a rerun cannot resume as something else.

Rerunning `itersft run` (or `ExpertIteration.run`) resumes after the last complete round. Resumed with
another model, other prompts or another sampling seed, the run would silently continue the old
checkpoint under new settings: a result that no configuration describes. So when a run starts, its
identity is written to `run_identity.json`, and a rerun that would resume compares its own identity
with it field by field: any difference stops it with a ValueError naming every changed field, old and
new value. `LoopConfig.resume_changed` (`itersft run --resume-changed`) resumes anyway; the changes are
then logged as a warning and recorded in the file (`changes`), and the new identity becomes the one
later reruns are compared with. A rerun that finds no round checkpoint starts afresh and simply writes
its identity.

The identity's fields:

* `model.weights`: a fingerprint of the model's weights as the loop received them (before any resume):
  the name, shape, dtype and exact values of up to 1024 evenly spaced entries of every parameter (with
  adapters: of every frozen base parameter; the adapters' initialisation follows `training.seed`).
  None when the parameters are sharded (FSDP, ZeRO-3): then it is not compared. `model.config`: a
  hash of the model's config (private `_` keys and `transformers_version` left out). `model.source`:
  where the model came from (`config._name_or_path`; a local path as its real path, so `./m`, `m/`
  and `/abs/m` are the same), compared only when either side has no weights fingerprint: a model
  folder moved elsewhere is the same model.
* `tokenizer`: a hash of the vocabulary, the special tokens, the chat template and the padding and
  truncation sides.
* `prompts`, `eval_prompts`, `labelled`: a hash and the count of the prompts with their metadata (the
  answers the scorer compares against), the held-out prompts, the labelled samples.
* `scorer` and `filter`: the scorer's name or import path, and the filter's description.
* `sampling.*`, `loop.*`, `training.*`: every field of the `SamplingConfig`, the `LoopConfig` and the
  trainer's settings (`trainer.args.to_dict()`), but those that do not change what the run samples,
  keeps or trains (where files go, what is logged, how scoring runs, how many rounds: more rounds
  continue a run). Each such field says so where it is declared, `metadata={"identity": False}`
  (`outside_identity`); `transformers.TrainingArguments`' own fields cannot, so the ones that only say
  where files go, what is logged or reported and how evaluation or data loading would run are named
  here (`TRAINING_ARGUMENTS_OUTSIDE_IDENTITY`, `..._PREFIXES`). Plus `training.world_size` (the number
  of processes sets the batch).

Never compared: a field that only one side has (a setting that a newer version added), and the
`sources` the caller describes (where the prompts were read from: their hash is what counts).
Deliberately not caught: a scorer or filter changed in its code but not its name, and a model whose
weights change between loads (parts initialised at random without a seed): pass `resume_changed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from itersft.atomic import write_json_atomic

logger = logging.getLogger(__name__)

IDENTITY_FILE = "run_identity.json"
TRAINING_ARGUMENTS_OUTSIDE_IDENTITY = {
    "output_dir", "report_to", "run_name", "project", "disable_tqdm", "resume_from_checkpoint", "overwrite_output_dir",
    "local_rank", "skip_memory_metrics", "per_device_eval_batch_size", "prediction_loss_only", "do_train", "do_eval",
    "do_predict", "batch_eval_metrics", "metric_for_best_model", "greater_is_better", "load_best_model_at_end",
    "fp16_full_eval", "bf16_full_eval", "restore_callback_states_from_checkpoint", "ignore_data_skip", "debug",
    "label_names", "length_column_name", "remove_unused_columns", "torch_empty_cache_steps", "use_cpu", "ddp_timeout"}
"""`transformers.TrainingArguments` fields outside a run's identity (itersft's own fields say so themselves)."""
TRAINING_ARGUMENTS_OUTSIDE_IDENTITY_PREFIXES = ("logging_", "log_", "save_", "push_to_hub", "hub_", "eval_",
                                                "dataloader_", "include_", "trackio_")
_SAMPLED_VALUES = 1024  # entries of each parameter in the weights fingerprint


class RunIdentityError(ValueError):
    """A rerun would resume a run that was started with other settings (the message names each change)."""


def weights_fingerprint(trainer) -> str | None:
    """A fingerprint of the model's weights as they are now (see the module docstring); None when the
    parameters are sharded over processes, whose shards differ."""
    if trainer.shards_parameters:
        return None
    model = trainer.model
    adapters = hasattr(model, "peft_config")
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if adapters and parameter.requires_grad:
                continue
            digest.update(f"{name}|{tuple(parameter.shape)}|{parameter.dtype}|".encode())
            if parameter.is_meta:  # offloaded by a device map: no values here to read
                continue
            flat = parameter.detach().reshape(-1)
            picked = flat[:: max(1, flat.numel() // _SAMPLED_VALUES)][:_SAMPLED_VALUES]
            digest.update(picked.to("cpu", torch.float64).numpy().tobytes())  # exact for every float and int dtype
    return digest.hexdigest()


def describe_run(trainer, weights: str | None, scorer, filter, sampling, config, prompts, meta, eval_prompts,
                 eval_meta, labelled) -> dict[str, Any]:
    """The run's identity: field name -> a JSON value (see the module docstring)."""
    model_config = getattr(trainer.model, "config", None)
    config_dict = model_config.to_dict() if model_config is not None else {}
    identity: dict[str, Any] = {
        "model.weights": weights,
        "model.config": _hash({k: v for k, v in config_dict.items()
                               if not k.startswith("_") and k != "transformers_version"}),
        "model.source": _source(config_dict.get("_name_or_path")),
        "tokenizer": _tokenizer_hash(trainer.tokenizer),
        "prompts": _hash([prompts, meta]), "prompts.count": len(prompts),
        "eval_prompts": _hash([eval_prompts, eval_meta]) if eval_prompts else None,
        "eval_prompts.count": len(eval_prompts or []),
        "labelled": _hash([asdict(sample) for sample in labelled]) if labelled else None,
        "labelled.count": len(labelled),
        "scorer": scorer if isinstance(scorer, str) else _callable_name(scorer),
        "filter": _described(filter),
        "training.world_size": trainer.ranks.world_size,
    }
    identity.update({f"sampling.{f.name}": _plain(getattr(sampling, f.name)) for f in fields(sampling)
                     if f.name not in outside_identity(sampling)})
    identity.update({f"loop.{f.name}": _plain(getattr(config, f.name)) for f in fields(config)
                     if f.name not in outside_identity(config)})
    for name, value in trainer.args.to_dict().items():
        if name not in outside_identity(trainer.args):
            identity[f"training.{name}"] = _source(value) if name == "deepspeed" else _plain(value)
    return identity


def outside_identity(settings) -> set[str]:
    """The fields of the dataclass `settings` that are not part of a run's identity: those declared with
    `metadata={"identity": False}`, and for trainer settings also `TrainingArguments`' own such fields."""
    names = {f.name for f in fields(settings) if f.metadata.get("identity", True) is False}
    if isinstance(settings, TrainingArguments):
        names |= {f.name for f in fields(settings) if f.name in TRAINING_ARGUMENTS_OUTSIDE_IDENTITY
                  or f.name.startswith(TRAINING_ARGUMENTS_OUTSIDE_IDENTITY_PREFIXES)}
    return names


def check_run_identity(root: str | Path, identity: dict[str, Any], resuming_after: int | None,
                       allow_changes: bool, is_main: bool, sources: dict[str, str] | None = None) -> dict:
    """Compare `identity` with the one recorded in `root` when the run resumes (after round
    `resuming_after`; None: a fresh start) and record it. Returns the changed fields ({} when none).

    Raises `RunIdentityError` (a ValueError) naming every changed field unless `allow_changes`. Every
    process calls it and decides alike (each computes the same identity); only `is_main` writes.
    """
    path = Path(root) / IDENTITY_FILE
    recorded = _read(path)
    changes = compare(recorded["identity"], identity) if recorded and resuming_after is not None else {}
    if changes and not allow_changes:
        listed = "\n".join(f"- {name}: {_shown(old)} -> {_shown(new)}" for name, (old, new) in changes.items())
        raise RunIdentityError(
            f"Refusing to resume the run in {str(root)!r} (after round {resuming_after}): it was started as a "
            f"different run, and resuming would continue its checkpoint under the new settings. Changed "
            f"({len(changes)}):\n{listed}\nRerun with the original settings, choose a new `output_dir` for a new run, "
            "or resume anyway with `LoopConfig.resume_changed=True` (`itersft run --resume-changed`).")
    if changes:
        logger.warning("Resuming the run in %s after round %d with %d changed field(s) (resume_changed): %s",
                       root, resuming_after, len(changes), ", ".join(changes))
    if recorded is not None and resuming_after is not None and not changes:
        return {}
    if recorded is None and resuming_after is not None:
        logger.info("%s has no readable %s (a run started before itersft recorded it): recording this run's "
                    "identity now, without comparing", root, IDENTITY_FILE)
    if is_main:
        history = (recorded or {}).get("changes", []) if resuming_after is not None else []
        if changes:
            history = history + [{"after_round": resuming_after,
                                  "fields": {name: list(pair) for name, pair in changes.items()}}]
        write_json_atomic(path, {"identity": identity, "sources": sources or {}, "changes": history})
    return changes


def compare(recorded: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields whose values differ, as name -> (recorded, current); see the module docstring for what
    is never compared."""
    weights_known = recorded.get("model.weights") is not None and current.get("model.weights") is not None
    changes = {}
    for name in recorded.keys() & current.keys():
        if (name == "model.source" and weights_known) or (name == "model.weights" and not weights_known):
            continue
        if recorded[name] != current[name]:
            changes[name] = (recorded[name], current[name])
    return dict(sorted(changes.items()))


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("%s cannot be read (%s): the run's identity is recorded afresh, not compared", path, exc)
        return None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("identity"), dict) else None


def _plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, other objects their repr)."""
    return json.loads(json.dumps(value, default=repr))


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _source(value: Any) -> Any:
    """A local path as its real path (any spelling of one folder compares equal); anything else as is."""
    if isinstance(value, str | os.PathLike) and os.path.exists(value):
        return os.path.realpath(value)
    return _plain(value)


def _tokenizer_hash(tokenizer) -> str:
    return _hash({"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
                  "special": tokenizer.special_tokens_map, "chat_template": getattr(tokenizer, "chat_template", None),
                  "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side})


def _callable_name(function) -> str:
    from itersft.scoring.scorers import BUILTIN_SCORERS

    for name, builtin in BUILTIN_SCORERS.items():
        if function is builtin:
            return name
    qualified = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{getattr(function, '__module__', None) or type(function).__module__}:{qualified}"


def _described(filter) -> str:
    """The filter's repr when it describes it (the built-ins'), else its type (an address is no identity)."""
    text = repr(filter)
    return text if " at 0x" not in text else _callable_name(filter)


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
