"""Rows of a prompt dataset -> the loop's prompts and per-prompt metadata, in TRL's prompt-only format.

A row holds a prompt column, `prompt` (TRL's name; `messages` is taken when there is no `prompt`, and
`prompt_field` names any other), whose cell is a string or a conversation (a list of `{role,
content}` turns: `itersft.sampling.prompts`), and any other columns. Every other column becomes the
prompt's metadata, which the scorer or reward functions receive as keyword lists (`answer=[...]`,
`solution=[...]`), without being listed; `meta_fields` restricts it to the columns named.

Rows read through Arrow (Parquet, CSV, `save_to_disk`, the hub) store a conversation's turns as
structs with every key any turn has, None where a turn had none; so a turn's keys whose value is None
(other than `role` and `content`) are dropped, and a chat template sees the turns as they were written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from itersft.sampling.prompts import Prompt, check_prompts

PROMPT_COLUMNS = ("prompt", "messages")
"""The prompt column when `prompt_field` is not given: the first of these a row has."""


def prompt_column(rows: Sequence[dict], prompt_field: str | None = None) -> str:
    """The column holding the prompts: `prompt_field`, else `prompt`, else `messages` (judged by the first row)."""
    if prompt_field:
        return prompt_field
    return next((name for name in PROMPT_COLUMNS if rows and name in rows[0]), PROMPT_COLUMNS[0])


def rows_to_prompts(section: str, rows: Sequence[dict], prompt_field: str | None = None,
                    meta_fields: Sequence[str] | None = None) -> tuple[list[Prompt], list[dict[str, Any]]]:
    """Prompts (checked) and per-prompt metadata from `rows`; `section` names them in errors."""
    field = prompt_column(rows, prompt_field)
    missing = [number for number, row in enumerate(rows) if field not in row]
    if missing:
        raise _no_prompt_column(f"`{section}` rows {missing[:10]} have", field,
                                f"the columns of row {missing[0]}: {sorted(rows[missing[0]])}")
    prompts = [_prompt(row[field]) for row in rows]
    check_prompts(prompts, section)
    meta = [{name: value for name, value in row.items() if name != field} for row in rows]
    if meta_fields is not None:
        meta = [{name: row[name] for name in meta_fields if name in row} for row in meta]
    return prompts, meta


def prompts_from_dataset(dataset, prompt_field: str | None = None, meta_fields: Sequence[str] | None = None,
                         argument: str = "prompts") -> tuple[list[Prompt], list[dict[str, Any]]]:
    """A `datasets.Dataset` in TRL's prompt-only format as (prompts, meta) for `ExpertIteration.run`.

    Refused, naming the columns it has: a dataset without the prompt column (`prompt`, else `messages`,
    or `prompt_field`).
    """
    field = prompt_field or next((name for name in PROMPT_COLUMNS if name in dataset.column_names), PROMPT_COLUMNS[0])
    if field not in dataset.column_names:
        raise _no_prompt_column(f"`{argument}`: the dataset has", field, f"its columns: {dataset.column_names}")
    return rows_to_prompts(argument, dataset.to_list(), field, meta_fields)


def _no_prompt_column(subject: str, field: str, columns: str) -> ValueError:
    return ValueError(f"{subject} no `{field}` column ({columns}): TRL's prompt-only format keeps the prompt in "
                      "`prompt` (a string, or a list of {role, content} messages); rename the column, or set "
                      "`prompt_field` to the column that holds it.")


def is_dataset(value: Any) -> bool:
    """Whether `value` is a `datasets.Dataset` (without importing `datasets` for anything else)."""
    if not type(value).__module__.startswith("datasets"):
        return False
    from datasets import Dataset

    return isinstance(value, Dataset)


def _prompt(cell: Any) -> Prompt:
    """A string stays a string (other scalars become one); a conversation loses the None keys Arrow added."""
    if isinstance(cell, list | tuple):
        return [{key: value for key, value in turn.items() if value is not None or key in ("role", "content")}
                if isinstance(turn, dict) else turn for turn in cell]
    return str(cell)
