"""Arguments of `itersft demo-gym`: those of `itersft demo-real` (kept import-light for a fast `--help`)."""

from __future__ import annotations

import argparse

from itersft.cli.demo_real_args import add_demo_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_demo_arguments(parser, "runs/demo-gym", "itersft.demo.gym.GymDemoHyperparameters")
