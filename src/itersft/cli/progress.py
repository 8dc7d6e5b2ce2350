"""Progress bars for `itersft run`: one tqdm bar per sampling phase (a round's prompts, the held-out set)."""

from __future__ import annotations

from itersft.loop.callbacks import LoopCallback


class SamplingBars(LoopCallback):
    """Draws a bar while the loop samples; closed when the phase's last prompt is done."""

    def __init__(self):
        self.bar = None

    def on_sampling_progress(self, phase, round_index, done, total):
        from tqdm.auto import tqdm

        if self.bar is None:
            label = "held-out" if phase == "eval" else "sampling"
            self.bar = tqdm(total=total, desc=f"{label} round {round_index}", unit="prompt", leave=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None
