"""`curves.png` is drawn without touching the caller's matplotlib state (backend, pyplot)."""

from __future__ import annotations

import subprocess
import sys


def test_plot_curves_leaves_the_global_matplotlib_state_alone(tmp_path):
    script = (
        "import sys, matplotlib; from pathlib import Path; matplotlib.use('svg');"
        "from itersft.loop.curves import plot_curves;"
        "plot_curves([{'round': 0, 'eval_accuracy': 0.2}, {'round': 1, 'eval_accuracy': 0.5}], Path(sys.argv[1]));"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    path = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["svg", "False"]  # the user's backend stands; pyplot never imported
    assert path.read_bytes()[:4] == b"\x89PNG"
