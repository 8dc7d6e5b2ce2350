"""`itersft demo-gym`: expert iteration on SmolLM2-135M-Instruct with a reasoning-gym task, against a control.

The protocol is `itersft demo-real`'s (`itersft.demo.real`), the task and its settings are
`itersft.demo.gym`'s; this command runs the one with the other.
"""

from __future__ import annotations

from itersft.cli.demo_real import run_demo_command


def main(args) -> int:
    from itersft.demo.gym import GYM_DEMO_HYPERPARAMETERS

    return run_demo_command(args, "demo-gym", GYM_DEMO_HYPERPARAMETERS)
