"""How the command line reports a bad config or bad input: one message and exit status 2, no traceback.

A command runs the part of its work that reads and checks what the user gave it (the config, the files
it names, the library's checks before anything trains) inside `bad_input()`: a ValueError, TypeError,
OSError or YAML error raised there is the user's to fix, and `itersft.cli.main` prints it as
`itersft COMMAND: error: MESSAGE` and exits with status 2. Errors raised anywhere else (a bug, a failure
while training) keep their traceback; `--debug` shows the traceback of a bad-input error too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class BadInputError(ValueError):
    """The user's config or input failed a check; the message names what and why."""


@contextmanager
def bad_input() -> Iterator[None]:
    """Re-raise a ValueError, TypeError, OSError or YAML error from the block as a `BadInputError`."""
    import yaml

    try:
        yield
    except BadInputError:
        raise
    except (ValueError, TypeError, OSError, yaml.YAMLError) as error:
        raise BadInputError(str(error)) from error
