"""`itersft export RUN_DIR --format sft|dpo|kto --out PATH`: a loop run's scored samples as a TRL dataset.

Prints the summary (rows made, prompt groups without a pair and why, samples left out). A problem with
the arguments or the run directory is one line on stderr and exit status 1, not a traceback.
"""

from __future__ import annotations

import sys


def main(args) -> int:
    from itersft.export import ExportConfig, export_run
    from itersft.export.run_export import summary_path

    try:
        config = ExportConfig(format=args.format, rounds=args.rounds, include_unfinished=args.include_unfinished,
                              pairs_per_prompt=args.pairs_per_prompt, min_margin=args.min_margin,
                              threshold=args.threshold)
        summary = export_run(args.run_dir, args.out, config)
    except (ValueError, OSError) as error:
        print(f"itersft export: {error}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(line)
    print(f"summary written to {summary_path(args.out)}")
    return 0
