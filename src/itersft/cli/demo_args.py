"""Arguments of `itersft demo` (kept import-light for a fast `--help`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="Seeds the task, the model and every draw (default 0).")
    parser.add_argument("--output-dir", default="runs/demo",
                        help="Run directory: metrics.jsonl, curves.png, summary.json, final/ (default runs/demo). "
                             "Rerunning resumes after the last complete round.")
    parser.add_argument("--rounds", type=int, default=None, help="Expert-iteration rounds (default: the tuned value).")
    parser.add_argument("--quick", action="store_true",
                        help="A smaller, faster variant (fewer prompts and rounds) used by the tests.")
