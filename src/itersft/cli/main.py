"""`itersft` entry point: a table of subcommands; each imports its heavy dependencies only when run,
so `itersft --help` answers instantly. A bad config or bad input (`cli.bad_input`) is one message on
stderr and exit status 2; `--debug` shows its traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from itersft.cli.bad_input import BadInputError

# name -> (module with `add_arguments(parser)` and `main(args)`, one-line help)
COMMANDS = {
    "demo": ("itersft.cli.demo", "Expert iteration on a built-in addition task, from scratch, with a control."),
    "demo-real": ("itersft.cli.demo_real", "Expert iteration on SmolLM2-135M-Instruct, word problems, with a control."),
    "demo-gym": ("itersft.cli.demo_gym", "The same with questions from reasoning-gym, a task nobody here wrote."),
    "run": ("itersft.cli.run", "Run the generate -> score -> filter -> train loop from a YAML/JSON config."),
    "export": ("itersft.cli.export", "Export a loop run's scored samples as a TRL dataset (SFT, DPO or KTO)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itersft",
        description="Iterative supervised fine-tuning: generate, score, filter, train, repeat.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        # Argument definitions live beside each command but import nothing heavy.
        importlib.import_module(f"{module}_args").add_arguments(sub)
        sub.add_argument("--debug", action="store_true",
                         help="Show the traceback of a bad-config or bad-input error, not just its message.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The terminal is the CLI's: it prints its own table and bars, so transformers' bar for every model
    # load and save is noise; and scoring workers fork, which the tokenizers library warns about unless
    # its thread pool is off.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return module.main(args) or 0
    except BadInputError as error:  # the user's config or input failed a check: the message says which
        if args.debug:
            raise
        print(f"itersft {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
