"""Prints one row per finished loop round, as the rounds finish (the CLI's view of the run)."""

from __future__ import annotations

from itersft.loop.callbacks import LoopCallback

COLUMNS = (("round", "round", "{:>5.0f}"), ("samples_drawn", "drawn", "{:>6.0f}"), ("samples_kept", "kept", "{:>6.0f}"),
           ("acceptance_rate", "accept", "{:>6.2f}"), ("train_loss", "loss", "{:>6.3f}"),
           ("distinct_1", "dist-1", "{:>6.2f}"), ("eval_accuracy", "eval acc", "{:>8.3f}"),
           ("round_seconds", "secs", "{:>6.1f}"))


def header() -> str:
    return "  ".join(f"{title:>{max(5, len(title))}}" for _, title, _ in COLUMNS)


def row(metrics: dict) -> str:
    cells = []
    for key, title, pattern in COLUMNS:
        value = metrics.get(key)
        width = max(5, len(title))
        cells.append(pattern.format(value).rjust(width) if value is not None else "-".rjust(width))
    return "  ".join(cells)


class RoundTable(LoopCallback):
    """A loop callback that prints a table row when each round ends (the header before the first)."""

    def __init__(self, out):
        self.out = out
        self.printed_header = False

    def on_round_end(self, metrics):
        if not self.printed_header:
            print(header(), file=self.out, flush=True)
            self.printed_header = True
        print(row(metrics), file=self.out, flush=True)
