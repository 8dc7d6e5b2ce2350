"""Arguments of `itersft export` (kept import-light for a fast `--help`)."""

from __future__ import annotations

import argparse

from itersft.export.config import FORMATS  # light: no torch, no datasets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="The output_dir of a loop run (`itersft run`, "
                        "`ExpertIteration`) whose rounds wrote samples/round-NNNN.jsonl.")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="sft: prompt-completion rows of the kept samples (SFTTrainer); dpo: preference "
                        "pairs {prompt, chosen, rejected, chosen_score, rejected_score} of one prompt's samples, best "
                        "against worst, never a tie (DPOTrainer); kto: {prompt, completion, label} with label = "
                        "score >= --threshold (KTOTrainer).")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="The .jsonl file to write; its summary goes beside it as NAME.summary.json.")
    parser.add_argument("--rounds", type=int, nargs="+", metavar="N",
                        help="Rounds to read (default: every complete round with scored samples).")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="dpo, kto: let samples cut off at max_new_tokens take part (default: left out).")
    parser.add_argument("--pairs-per-prompt", type=int, metavar="N",
                        help="dpo: the most pairs from one prompt's samples of one round, paired from the outside in "
                        "(best-worst, second best-second worst, ...; default 1).")
    parser.add_argument("--min-margin", type=float, metavar="X",
                        help="dpo: the least score difference of a pair (default 0: any difference; ties never pair).")
    parser.add_argument("--threshold", type=float, metavar="X",
                        help="kto: desirable when the score is at least X (default: the run's pass_score).")
