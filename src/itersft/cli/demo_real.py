"""`itersft demo-real`: expert iteration on SmolLM2-135M-Instruct with arithmetic word problems, against a control.

The protocol lives in `itersft.demo.real`; this command picks the settings, sets torch's thread count
(`--threads`) and prints the phases as they finish. `itersft demo-gym` runs it too, with its own settings
(`run_demo_command`).
"""

from __future__ import annotations

import dataclasses
import os
import sys

from itersft.cli.table import RoundTable
from itersft.demo.protocol import DemoCallback

# `--quick`: the same protocol at a size a test can afford (about a minute, most of it loading the model).
# Answers as long as the real demo's (a cut-off one is never trained) and 32 of them, so that some pass.
QUICK = {"num_eval": 6, "rounds": 1, "prompts_per_round": 8, "samples_per_prompt": 4, "max_new_tokens": 48,
         "eval_max_new_tokens": 24, "batch_size": 4}

PRECISION_NAMES = {"bf16": "bfloat16 autocast", "fp32": "float32"}
_PHASES = {"base_eval": "base model", "loop_eval": "after expert iteration", "control_eval": "control"}


class RealDemoPrinter(RoundTable, DemoCallback):
    """The round table, plus one line per phase of the demo's own (loading, evaluations, the control)."""

    def on_phase_end(self, phase, info):
        if phase == "load":
            line = f"loaded {info['model']}"
        elif phase == "control":
            line = f"control: {updates(info['updates'])} on as many unverified samples from the same rounds"
        else:
            line = f"{_PHASES[phase]}: held-out accuracy {info['accuracy']:.1%}"
            also = [f"{key.removeprefix('accuracy_')} {value:.1%}" for key, value in info.items()
                    if key.startswith("accuracy_")]
            line += f" ({', '.join(also)})" if also else ""
        print(f"{line} ({info['seconds']:.0f}s)", file=self.out, flush=True)
        if phase == "load":  # which precision runs the demo, and why: it changes what the demo shows
            print(f"precision: {PRECISION_NAMES[info['precision']]}; {info['precision_reason']}", file=self.out,
                  flush=True)


def main(args) -> int:
    from itersft.demo.real import REAL_DEMO_HYPERPARAMETERS

    return run_demo_command(args, "demo-real", REAL_DEMO_HYPERPARAMETERS)


def run_demo_command(args, command: str, defaults) -> int:
    """Run the real-model protocol with `defaults` (a `RealDemoHyperparameters`) changed by the arguments."""
    import torch

    from itersft.demo.real import run_real_demo
    from itersft.model_sources import resolve_model_source

    # Every usable core by default: the model's matrix products dominate, and the scoring workers
    # (one thread each, see the Makefile's OMP_NUM_THREADS=1) are idle while the model runs.
    torch.set_num_threads(args.threads if args.threads is not None else len(os.sched_getaffinity(0)))
    overrides = {**(QUICK if args.quick else {}), **({"model": args.model} if args.model is not None else {}),
                 **parse_settings(args.settings, type(defaults), command)}
    try:
        hyperparameters = dataclasses.replace(defaults, **overrides)
        if args.model is not None:
            resolve_model_source(args.model, argument="--model")
    except ValueError as error:  # checked before the model loads
        raise SystemExit(f"itersft {command}: {error}") from None
    summary = run_real_demo(args.seed, args.output_dir, hyperparameters, callbacks=[RealDemoPrinter(sys.stdout)])
    print(f"\n{verdict(summary)}; run directory {args.output_dir} (metrics.jsonl, curves.png, summary.json, final/)")
    return 0


def parse_settings(settings: list[str], hyperparameters_class=None, command: str = "demo-real") -> dict:
    """`--set NAME=VALUE` pairs as overrides of `hyperparameters_class` (default `RealDemoHyperparameters`),
    each VALUE converted to its field's type.

    Raises SystemExit naming the setting when NAME is not a field or VALUE does not convert, before any
    model loads.
    """
    from itersft.demo.real import RealDemoHyperparameters

    fields = dataclasses.fields(hyperparameters_class or RealDemoHyperparameters)
    types = {field.name: type(field.default) for field in fields}
    overrides = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals or name not in types:
            raise SystemExit(f"itersft {command}: --set {setting!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(types)}.")
        kind = types[name]
        try:
            overrides[name] = kind(value)
        except ValueError:
            expected = {int: "an integer", float: "a number"}.get(kind, "text")
            raise SystemExit(f"itersft {command}: --set {setting!r}: {name} takes {expected}, "
                             f"got {value!r}.") from None
    return overrides


def updates(count: int) -> str:
    """"1 update", "24 updates": the control's update count as both printed lines say it."""
    return f"{count} update{'' if count == 1 else 's'}"


def verdict(summary: dict) -> str:
    """The demo's result: the three accuracies, the same by each other scorer of held-out answers (a
    line each), then the lifts and the wall time."""
    also = [f"{key.removeprefix('accuracy_')} accuracy: base model {value['before_loop']:.1%} -> expert iteration "
            f"{value['after_loop']:.1%}; control {value['control']:.1%}\n"
            for key, value in summary.items() if key.startswith("accuracy_") and isinstance(value, dict)]
    return (f"held-out greedy accuracy: base model {summary['accuracy_before_loop']:.1%} -> expert iteration "
            f"{summary['accuracy_after_loop']:.1%}; control (as many unverified samples, the same "
            f"{updates(summary['control_updates'])}) {summary['accuracy_control']:.1%}\n"
            + "".join(also)
            + f"lift: {summary['lift_over_base_points']:+.1f} points over the base model, "
            f"{summary['lift_over_control_points']:+.1f} over the control; "
            f"wall time {summary['seconds']['total']:.0f}s")
