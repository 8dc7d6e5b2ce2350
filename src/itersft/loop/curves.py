"""`curves.png`: the loop's per-round metrics drawn as small panels.

Drawn with matplotlib's object API on its own Agg canvas: the user's global matplotlib state (the
backend, pyplot's current figure) is never touched, so importing the library or running the loop in a
notebook changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# One panel per entry: (title, metric keys drawn on it).
CURVES = (("held-out accuracy", ("eval_accuracy",)), ("acceptance rate", ("acceptance_rate",)),
          ("train loss", ("train_loss",)), ("diversity of kept", ("distinct_1", "distinct_2")))


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """One small panel per metric group, x = round. Metrics a run did not record are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(title, [k for k in keys if any(m.get(k) is not None for m in history)]) for title, keys in CURVES]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return
    figure = Figure(figsize=(3.2 * len(panels), 2.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)
    for axis, (title, keys) in zip(axes[0], panels):
        for key in keys:
            points = [(m["round"], m[key]) for m in history if m.get(key) is not None]
            axis.plot([r for r, _ in points], [v for _, v in points], marker="o", label=key)
        if len(keys) > 1:
            axis.legend(fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
