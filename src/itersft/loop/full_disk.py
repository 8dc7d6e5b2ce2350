"""A full disk, reported as one: "No space left on device", the path and the space left.

The libraries that write a checkpoint do not all say so when the disk is full. torch's writer raises
`RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598` with no errno;
safetensors says `I/O error: No space left on device (os error 28)`; Python's own writes raise
`OSError(ENOSPC)`. `reporting_full_disk` wraps one write of the run directory: when it fails it
measures the space left *before* anything is cleaned up, removes the partial staging folder (on the
writing process), and, if the disk was full, raises `OSError(ENOSPC)` with a message that says what
was being written, where, how much space was left and how to go on; any other failure is re-raised
unchanged.

A failure counts as a full disk when any exception in its chain is an `OSError` with errno ENOSPC or
EDQUOT (quota), or its message says "No space left on device" or "Disk quota exceeded", or when less
than `FULL_BELOW_BYTES` were left on that file system at the moment it failed (torch's case: its
writer fills the disk to the last byte before it fails). Not detected: a quota whose error carries no
errno and no message (the file system still shows free space).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

FULL_BELOW_BYTES = 1 << 20
"""A write that fails with less than this left on its file system failed for lack of space."""

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_MESSAGES = ("No space left on device", "os error 28", "Disk quota exceeded")


@contextlib.contextmanager
def reporting_full_disk(target: str | Path, what: str, staging: str | Path | None = None, is_writer: bool = True,
                        then: str = "") -> Iterator[None]:
    """Run the write of `what` to `target`; a failure caused by a full disk becomes `OSError(ENOSPC)`.

    `staging`: the partial folder the write leaves behind on failure, removed (by `is_writer` only).
    `then`: what the user should do once space is freed (e.g. "rerun the same command: the run resumes
    after round 2"), appended to the message.
    """
    target = Path(target)
    try:
        yield
    except Exception as failure:
        left = free_bytes(target)
        if staging is not None and is_writer:
            shutil.rmtree(staging, ignore_errors=True)
        if not (is_out_of_space(failure) or (left is not None and left < FULL_BELOW_BYTES)):
            raise
        after = free_bytes(target)
        freed = f" ({format_bytes(after)} after removing the partial write)" if staging is not None and after else ""
        message = (f"No space left on device: writing {what} to {target} failed with "
                   f"{format_bytes(left) if left is not None else 'an unknown amount'} free on its file "
                   f"system{freed}. Free some space{' and ' + then if then else ''}. "
                   f"The error raised was {type(failure).__name__}: {failure}")
        raise OSError(errno.ENOSPC, message) from failure


def is_out_of_space(failure: BaseException) -> bool:
    """Whether `failure`, or an exception it was raised from or while handling, says the disk is full."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [failure]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in _FULL_MESSAGES):
            return True
        pending += [exc.__cause__, exc.__context__]
    return False


def free_bytes(path: str | Path) -> int | None:
    """Bytes this process may still write on the file system holding `path` (its nearest existing
    folder), or None when that cannot be measured."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def format_bytes(count: int) -> str:
    """`count` bytes for a person: "0 bytes", "12.0 KiB", "3.5 GiB"."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
