"""`ExportConfig`: which dataset `itersft export` builds from a run, every setting checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from itersft.checks import Problems, is_integer

FORMATS = ("sft", "dpo", "kto")


@dataclass(frozen=True)
class ExportConfig:
    """What to export from a run directory's scored samples (`samples/round-NNNN.jsonl`).

    Attributes:
        format: the dataset, in TRL's formats:
            `"sft"`: prompt-completion rows `{prompt, completion}` of the samples the loop kept (SFTTrainer);
            `"dpo"`: preference rows `{prompt, chosen, rejected, chosen_score, rejected_score}`, pairs of one
            prompt's samples from one round with different scores (DPOTrainer);
            `"kto"`: unpaired preference rows `{prompt, completion, label}`, `label` = score >= `threshold`
            (KTOTrainer).
        rounds: the rounds to read; None: every complete round that has a samples file.
        include_unfinished: let samples cut off at `max_new_tokens` into DPO pairs and KTO rows (by default
            they are left out: they would teach the model where a truncation fell). Not with `"sft"`: the
            loop never keeps an unfinished sample.
        pairs_per_prompt: `"dpo"` only (default 1): the most pairs made from one prompt's samples of one round.
            The samples are ranked by score and paired from the outside in (best with worst, second best
            with second worst, ...), each used once, while the two scores still differ by `min_margin`.
        min_margin: `"dpo"` only (default 0.0): the least score difference between chosen and rejected. Tied
            scores are never paired, whatever the margin.
        threshold: `"kto"` only: a sample is desirable when its score is at least this; default: the run's
            `pass_score` (from its `run_identity.json`).
    """

    format: str
    rounds: list[int] | None = None
    include_unfinished: bool = False
    pairs_per_prompt: int | None = None
    min_margin: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        problems = Problems("ExportConfig")
        problems.choice("format", self.format, FORMATS)
        if self.rounds is not None:
            if not isinstance(self.rounds, (list, tuple)) or not self.rounds or not all(
                    is_integer(r) and r >= 0 for r in self.rounds):
                problems.add(f"`rounds` must be a non-empty list of round numbers (ints >= 0) or None, "
                             f"got {self.rounds!r}.")
            elif len(set(self.rounds)) != len(self.rounds):
                problems.add(f"`rounds` names a round twice: {list(self.rounds)!r}.")
        problems.boolean("include_unfinished", self.include_unfinished)
        problems.integer("pairs_per_prompt", self.pairs_per_prompt, minimum=1, optional=True)
        problems.number("min_margin", self.min_margin, minimum=0.0, optional=True)
        problems.number("threshold", self.threshold, optional=True)
        only = {"pairs_per_prompt": "dpo", "min_margin": "dpo", "threshold": "kto"}
        for name, owner in only.items():
            if getattr(self, name) is not None and self.format in FORMATS and self.format != owner:
                problems.add(f"`{name}` applies to format {owner!r} only; format is {self.format!r}: leave it out.")
        if self.include_unfinished is True and self.format == "sft":
            problems.add("`include_unfinished` does not apply to format 'sft': it exports the samples the loop kept, "
                         "and the loop never keeps an unfinished one.")
        problems.raise_if_any()
