"""Prompt rows from a local file or folder (`path`), or from a `datasets` dataset by name (`dataset`).

`path` reads, by what it is:

* a `.parquet`, `.csv` or `.arrow` file: through `datasets.load_dataset` with that builder;
* any other file (`.jsonl`, `.json`): one JSON object per line, or one JSON array of objects, read as
  written (Python's `json`, not Arrow, so a column may mix strings and conversations, or numbers and
  text);
* a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`: `datasets.load_from_disk`;
* any other folder: `datasets.load_dataset(folder)` (data files found by their extension).

`split` picks the split for everything `datasets` loads (default `train`, the only split of a single
file; slices such as `train[:100]` work with `load_dataset`); a JSON file, a `save_to_disk` folder of
one `Dataset` hold one split and take no other. `dataset` is any name `datasets.load_dataset` takes (a
hub id, with its configuration as `name`), where the hub is reachable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
"""File suffix -> the `datasets` builder that reads it (any other file is read as JSON: see the module docstring)."""


def read_path(section: str, spec: dict[str, Any]) -> list[dict]:
    """The rows of the local file or folder `spec["path"]` (see the module docstring)."""
    path, split = Path(spec["path"]), spec.get("split")
    if path.is_file() and path.suffix not in BUILDERS:
        if split not in (None, "train"):
            raise ValueError(f"`{section}`: `split` {split!r} for the JSON file {str(path)!r}, which holds one split "
                             "(`train`); use `limit` to take fewer rows.")
        return _json_rows(section, path)
    if path.is_file():
        from datasets import load_dataset

        return _rows(load_dataset(BUILDERS[path.suffix], data_files=str(path), split=split or "train"))
    if path.is_dir():
        return _folder_rows(section, path, split)
    raise ValueError(f"`{section}`: `path` {str(path)!r} is no file or folder here; a dataset on the hub is given "
                     "as `dataset: <name>`.")


def read_dataset(section: str, spec: dict[str, Any]) -> list[dict]:
    """The rows of `datasets.load_dataset(spec["dataset"], spec.get("name"), split=...)` (a hub id, mostly)."""
    from datasets import load_dataset

    return _rows(load_dataset(spec["dataset"], spec.get("name"), split=spec.get("split", "train")))


def _folder_rows(section: str, path: Path, split: str | None) -> list[dict]:
    import datasets

    if (path / "dataset_dict.json").exists():  # DatasetDict.save_to_disk
        splits = datasets.load_from_disk(str(path))
        if (split or "train") not in splits:
            raise ValueError(f"`{section}`: the dataset saved in {str(path)!r} has no split {split or 'train'!r}; its "
                             f"splits: {sorted(splits)}. Set `split`.")
        return _rows(splits[split or "train"])
    if (path / "state.json").exists():  # Dataset.save_to_disk
        if split is not None:
            raise ValueError(f"`{section}`: {str(path)!r} holds one saved Dataset (no splits), so `split` {split!r} "
                             "cannot apply; leave it out.")
        return _rows(datasets.load_from_disk(str(path)))
    return _rows(datasets.load_dataset(str(path), split=split or "train"))


def _json_rows(section: str, path: Path) -> list[dict]:
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"`{section}`: {str(path)!r} line {number} is not JSON: {exc}") from exc
    bad = [i for i, row in enumerate(rows) if not isinstance(row, dict)]
    if bad:
        raise ValueError(f"`{section}`: {str(path)!r} rows {bad[:10]} are not JSON objects (one object per prompt).")
    return rows


def _rows(dataset) -> list[dict]:
    return dataset.to_list()
