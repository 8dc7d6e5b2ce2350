"""What an export made and left out: printed by `itersft export`, written beside the dataset as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from itersft.export.run_samples import round_span

REASONS = {"not_kept": "not kept by the loop", "unfinished": "unfinished", "unscored": "unscored",
           "duplicate": "duplicates of a completion in their group"}
NO_PAIR = {"all_tied": "all samples tied", "fewer_than_two": "fewer than two usable samples",
           "below_margin": "scores closer than min_margin"}
TITLES = {"sft": "SFT rows (prompt-completion)", "dpo": "DPO pairs (preference)",
          "kto": "KTO rows (unpaired preference)"}


@dataclass
class ExportSummary:
    """Counts of one export. A prompt group is one prompt's samples in one round (a prompt sampled in two
    rounds is two groups)."""

    format: str
    run_dir: str
    rounds: list[int]
    samples_read: int
    rows: int
    left_out: dict[str, int]
    """Samples that took no part, by reason: not_kept, unfinished, unscored, duplicate."""
    conversational: bool | None
    """Whether the rows are conversations (chat template) or strings; None without rows."""
    out: str | None = None
    rounds_without_samples: list[int] = field(default_factory=list)
    rounds_incomplete: list[int] = field(default_factory=list)
    prompt_groups: int | None = None
    """dpo: the prompt groups read."""
    prompt_groups_with_pairs: int | None = None
    prompt_groups_without_pair: dict[str, int] | None = None
    """dpo: groups with no pair, by reason: all_tied, fewer_than_two, below_margin."""
    mean_margin: float | None = None
    """dpo: the mean of chosen_score - rejected_score over the pairs."""
    pairs_per_prompt: int | None = None
    min_margin: float | None = None
    threshold: float | None = None
    desirable: int | None = None
    """kto: rows whose score is at least `threshold`."""
    undesirable: int | None = None

    def lines(self) -> list[str]:
        """The summary for a person, a few lines."""
        kind = {True: "conversational", False: "standard text", None: "none"}[self.conversational]
        where = f" to {self.out}" if self.out else ""
        lines = [f"{self.rows} {TITLES[self.format]}, {kind}, from {self.run_dir} (rounds {round_span(self.rounds)}: "
                 f"{self.samples_read} samples){where}"]
        if self.format == "dpo":
            reasons = ", ".join(f"{NO_PAIR[k]} {self.prompt_groups_without_pair.get(k, 0)}" for k in NO_PAIR)
            without = sum(self.prompt_groups_without_pair.values())
            lines.append(f"prompt groups: {self.prompt_groups}, with a pair {self.prompt_groups_with_pairs}, "
                         f"without {without} ({reasons}); pairs per prompt at most {self.pairs_per_prompt}, "
                         f"min_margin {self.min_margin:g}")
            if self.mean_margin is not None:
                lines.append(f"mean score margin (chosen - rejected): {self.mean_margin:.4g}")
        if self.format == "kto":
            lines.append(f"desirable {self.desirable}, undesirable {self.undesirable} (score >= {self.threshold:g})")
        left_out = ", ".join(f"{self.left_out[k]} {text}" for k, text in REASONS.items() if self.left_out.get(k))
        lines.append(f"samples left out: {left_out or 'none'}")
        if self.rounds_without_samples:
            lines.append(f"rounds with no scored samples (written with write_samples off, or by an older itersft): "
                         f"{round_span(self.rounds_without_samples)}")
        if self.rounds_incomplete:
            lines.append(f"samples of rounds that did not complete, left out (the run stopped before their "
                         f"checkpoint; resuming it draws them again): {round_span(self.rounds_incomplete)}")
        return lines
