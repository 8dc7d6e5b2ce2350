"""`itersft` entry point: a table of subcommands; each imports its heavy dependencies only when run,
so `itersft --help` answers instantly."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with `add_arguments(parser)` and `main(args)`, one-line help)
COMMANDS = {
    "demo": ("itersft.cli.demo", "Expert iteration on a built-in addition task, from scratch, with a control."),
    "run": ("itersft.cli.run", "Run the generate -> score -> filter -> train loop from a YAML/JSON config."),
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
