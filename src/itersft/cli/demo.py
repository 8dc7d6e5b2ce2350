"""`itersft demo`: expert iteration on two-digit addition, from scratch, against a control.

The protocol lives in `itersft.demo.protocol`; this command picks the settings, pins torch to one
thread and prints the phases as they finish.
"""

from __future__ import annotations

import dataclasses
import sys

from itersft.cli.table import RoundTable
from itersft.demo.protocol import DemoCallback

# `--quick`: the same protocol at a size the test suite can afford.
QUICK = {"rounds": 3, "num_eval": 150}


class DemoPrinter(RoundTable, DemoCallback):
    """The round table, plus the seed SFT's line before it and the verdict after the control."""

    def on_phase_end(self, phase, info):
        print(f"seed SFT: {info['updates']} updates on {info['labelled']} labelled examples, "
              f"held-out accuracy {info['accuracy']:.1%} ({info['seconds']:.0f}s)", file=self.out, flush=True)


def main(args) -> int:
    import torch

    from itersft.demo.addition import DEMO_HYPERPARAMETERS
    from itersft.demo.protocol import run_demo

    # A model this small gains nothing from a second thread, and two threads contending with any other
    # process on a 2-core machine run 20-40x slower.
    torch.set_num_threads(1)
    hp = DEMO_HYPERPARAMETERS
    if args.quick:
        hp = dataclasses.replace(hp, **QUICK)
    if args.rounds is not None:
        hp = dataclasses.replace(hp, rounds=args.rounds)
    summary = run_demo(args.seed, args.output_dir, hp, callbacks=[DemoPrinter(sys.stdout)])
    print(f"\nheld-out accuracy: seed model {summary['accuracy_before_loop']:.1%} -> expert iteration "
          f"{summary['accuracy_after_loop']:.1%}; control (seed SFT for the same {summary['loop_updates']} updates) "
          f"{summary['accuracy_control']:.1%}; unfiltered control (the same loop without the verifier) "
          f"{summary['accuracy_control_unfiltered']:.1%}")
    print(f"lift over control: {summary['lift_over_control_points']:+.1f} points, over the unfiltered control "
          f"{summary['lift_over_unfiltered_points']:+.1f}; "
          f"wall time {summary['seconds']['total']:.0f}s; run directory {args.output_dir} "
          "(metrics.jsonl, curves.png, summary.json, final/)")
    return 0
