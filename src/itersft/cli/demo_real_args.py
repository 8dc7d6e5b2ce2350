"""Arguments of `itersft demo-real` and `itersft demo-gym` (kept import-light for a fast `--help`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_demo_arguments(parser, "runs/demo-real", "itersft.demo.real.RealDemoHyperparameters")


def add_demo_arguments(parser: argparse.ArgumentParser, output_dir: str, settings: str) -> None:
    """The arguments every real-model demo takes; `settings` names its hyperparameters class for `--set`."""
    parser.add_argument("--seed", type=int, default=0,
                        help="Seeds the task's split, every draw and the training order (default 0).")
    parser.add_argument("--output-dir", default=output_dir,
                        help=f"Run directory: metrics.jsonl, curves.png, summary.json, final/ (default {output_dir}). "
                             "The demo always runs whole: a previous run's round checkpoints there are deleted.")
    parser.add_argument("--model", default=None,
                        help="The instruct model to start from (default smollm2-135m-instruct, which needs "
                             "`make smollm2`): a short name, hub id, folder or .gguf file.")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every CPU this process may use; pass 1 on a machine other "
                             "jobs keep busy, where threads contending for cores run slower than one).")
    parser.add_argument("--quick", action="store_true",
                        help="A test-sized run (a handful of questions, one round): checks the plumbing, not the lift.")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                        help=f"Change one setting of `{settings}` (repeatable), e.g. "
                             "--set rounds=5 --set samples_per_prompt=8 --set learning_rate=2e-6; applied after "
                             "--quick and --model. The defaults are the measured ones the README quotes.")
