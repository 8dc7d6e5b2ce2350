"""Scoring: turning (prompt, completion, metadata) into a number, safely.

`scorers` holds the scorer protocol, the built-in scorers by name and `score_samples`, the only place a
scorer is called; `pool` runs every scorer per sample in worker processes with a hard wall-clock
timeout; `math_verifier` and `code_verifier` are the `math` and `code` built-ins, the latter running
completions in `code_sandbox` (with `sandbox_child` as the process it starts).
"""
