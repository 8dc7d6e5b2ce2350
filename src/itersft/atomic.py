"""Atomic files and folders: written under a hidden staging name, then renamed into place.

A process killed mid-write (kill -9, OOM, pre-emption) leaves a staging folder that nothing reads,
never a half-written checkpoint that a resume would pick up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, is_writer: bool = True, barrier=lambda: None) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces `final` in one rename.

    Every process writes its share into the staging folder; `barrier` (e.g. accelerate's
    `wait_for_everyone`) separates the writes from the rename, which only `is_writer` performs.
    """
    final = Path(final)
    staging = staging_path(final)
    if is_writer and staging.exists():
        shutil.rmtree(staging)
    barrier()
    if is_writer:
        staging.mkdir(parents=True)
    barrier()
    yield staging
    barrier()
    if is_writer:
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    barrier()


def staging_path(final: str | os.PathLike) -> Path:
    """The hidden folder `atomic_directory` writes `final` into before renaming it into place."""
    final = Path(final)
    return final.with_name(f".staging-{final.name}")


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """Write JSON to a temporary file and rename it over `path`."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to a temporary file beside `path` and rename it over `path`; a failed write (a full
    disk) removes the temporary file and leaves `path` as it was."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    try:
        staging.write_text(text)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, path)
