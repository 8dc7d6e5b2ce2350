"""What each format exports: pairs and labels on hand-made scored samples (expected rows written out by
hand), then the exports of real loop runs checked against the loop's own files (`accepted/`, `samples/`),
and the command line's summary.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path

import pytest

from itersft.cli.main import main as itersft
from itersft.export import ExportConfig, ExportError, export_rows, export_run
from itersft.export.pairs import preference_pairs
from itersft.export.rows import is_conversational, kto_rows, select, sft_rows
from itersft.loop.scored_samples import ScoredSample

SYSTEM = {"role": "system", "content": "Be brief."}


def scored(prompt_index, sample_index, completion, score, finished=True, kept=False, round=0, chat=False):
    prompt = f"q{prompt_index}:"
    return ScoredSample(round=round, prompt_index=prompt_index, sample_index=sample_index, prompt=prompt,
                        messages=[SYSTEM, {"role": "user", "content": prompt}] if chat else None,
                        completion=completion, finished=finished, score=score, rewards=None, kept=kept)


def pairs(samples, include_unfinished=False, **options):
    selection = select(samples, kept_only=False, scored_only=True, include_unfinished=include_unfinished)
    return preference_pairs(selection, **options), selection


def row(prompt, chosen, rejected, chosen_score, rejected_score):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_score": chosen_score,
            "rejected_score": rejected_score}


# ---- DPO pairs on hand-made samples -----------------------------------------------------------------

GROUP = [scored(0, 0, "a", 1.0), scored(0, 1, "b", 0.0), scored(0, 2, "c", 0.5), scored(0, 3, "d", 1.0)]


def test_best_against_worst_by_default_then_from_the_outside_in():
    pairing, _ = pairs(GROUP)
    assert pairing.rows == [row("q0:", "a", "b", 1.0, 0.0)]
    pairing, _ = pairs(GROUP, pairs_per_prompt=2)
    assert pairing.rows == [row("q0:", "a", "b", 1.0, 0.0), row("q0:", "d", "c", 1.0, 0.5)]
    assert pairing.mean_margin == 0.75
    pairing, _ = pairs(GROUP, pairs_per_prompt=5)  # each sample in one pair at most: 4 samples, 2 pairs
    assert len(pairing.rows) == 2


def test_min_margin_stops_the_pairing_and_is_counted_when_no_pair_is_left():
    pairing, _ = pairs(GROUP, pairs_per_prompt=2, min_margin=0.6)
    assert pairing.rows == [row("q0:", "a", "b", 1.0, 0.0)]
    pairing, _ = pairs(GROUP, min_margin=1.5)
    assert pairing.rows == [] and pairing.without_pair == {"below_margin": 1}


def test_ties_are_never_paired_whatever_the_margin():
    tied = [scored(1, j, text, 1.0) for j, text in enumerate("abc")]
    three_and_one = [scored(2, 0, "a", 1.0), scored(2, 1, "b", 1.0), scored(2, 2, "c", 1.0), scored(2, 3, "d", 0.0)]
    pairing, _ = pairs(tied + three_and_one, pairs_per_prompt=2, min_margin=0.0)
    # (a, d) pairs; (b, c) would be the second pair of group 2, but it is a tie: never made.
    assert pairing.rows == [row("q2:", "a", "d", 1.0, 0.0)]
    assert pairing.groups == 2 and pairing.groups_with_pairs == 1 and pairing.without_pair == {"all_tied": 1}
    assert all(r["chosen_score"] > r["rejected_score"] for r in pairing.rows)


def test_duplicates_unfinished_and_unscored_samples_are_left_out_and_counted():
    samples = [scored(0, 0, "x", 1.0), scored(0, 1, "x", 0.0), scored(0, 2, "y", None), scored(0, 3, "z", 0.0, False)]
    pairing, selection = pairs(samples)
    # x twice is one completion (the first, 1.0): two usable samples, one completion, no pair.
    assert pairing.rows == [] and pairing.without_pair == {"all_tied": 1}
    assert selection.left_out == {"duplicate": 1, "unscored": 1, "unfinished": 1}
    pairing, selection = pairs(samples, include_unfinished=True)
    assert pairing.rows == [row("q0:", "x", "z", 1.0, 0.0)]
    assert selection.left_out == {"duplicate": 1, "unscored": 1}


def test_a_group_with_fewer_than_two_usable_samples_says_so():
    samples = [scored(0, 0, "x", 1.0), scored(1, 0, "x", 1.0, False), scored(1, 1, "y", 0.0, False)]
    pairing, _ = pairs(samples)
    assert pairing.rows == [] and pairing.groups == 2 and pairing.without_pair == {"fewer_than_two": 2}


def test_groups_are_one_prompt_in_one_round():
    """The same prompt in two rounds is two groups: its best of round 0 is not paired with round 1's worst."""
    pairing, _ = pairs([scored(0, 0, "a", 1.0), scored(0, 0, "b", 0.0, round=1)])
    assert pairing.rows == [] and pairing.without_pair == {"fewer_than_two": 2}


# ---- SFT, KTO and the two kinds of rows ----------------------------------------------------------------


def test_sft_takes_the_kept_samples_once_each_and_kto_labels_by_threshold():
    samples = [scored(0, 0, "x", 1.0, kept=True), scored(0, 1, "x", 1.0, kept=True), scored(0, 2, "y", 0.0),
               scored(1, 0, "x", 0.5, kept=True, chat=True)]
    selection = select(samples, kept_only=True, scored_only=False, include_unfinished=False)
    assert sft_rows(selection.groups) == [
        {"prompt": "q0:", "completion": "x"},
        {"prompt": [SYSTEM, {"role": "user", "content": "q1:"}], "completion": [{"role": "assistant", "content": "x"}]}]
    assert selection.left_out == {"not_kept": 1, "duplicate": 1}
    with pytest.raises(ExportError, match=r"two kinds: 1 drawn through the chat template \(conversations\) and 1 as "
                                          r"raw text"):
        is_conversational(selection.groups)
    selection = select(samples[:3], kept_only=False, scored_only=True, include_unfinished=False)
    assert kto_rows(selection.groups, 0.5) == [{"prompt": "q0:", "completion": "x", "label": True},
                                               {"prompt": "q0:", "completion": "y", "label": False}]


# ---- exports of loop runs ---------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_files(run_dir: Path, folder: str) -> list[dict]:
    """Every line of `folder`'s round files, each with its round (`accepted/` lines do not say it)."""
    return [{**r, "round": int(path.stem.removeprefix("round-"))}
            for path in sorted((run_dir / folder).glob("round-*.jsonl")) for r in read_jsonl(path)]


@pytest.mark.parametrize("kind", ["standard", "chat"])
def test_sft_export_is_what_the_loop_trained_on(request, tmp_path, kind):
    """Checked against `accepted/` (written by the loop, not the export): its samples, each completion once per
    prompt and round, as strings or, for chat, as the conversation the model answered plus the assistant turn."""
    run_dir = request.getfixturevalue(f"{kind}_run")
    summary = export_run(run_dir, tmp_path / "sft.jsonl", ExportConfig("sft"))
    expected, seen = [], set()
    for accepted in sorted(run_files(run_dir, "accepted"), key=lambda a: (a["round"], a["prompt_index"],
                                                                          a["sample_index"])):
        key = (accepted["round"], accepted["prompt_index"], accepted["completion"])
        if key not in seen:
            seen.add(key)
            expected.append(accepted)
    if kind == "chat":
        assert all(a["messages"][0] == {"role": "system", "content": "Answer with one letter."} for a in expected)
        want = [{"prompt": a["messages"], "completion": [{"role": "assistant", "content": a["completion"]}]}
                for a in expected]
    else:
        want = [{"prompt": a["prompt"], "completion": a["completion"]} for a in expected]
    assert read_jsonl(tmp_path / "sft.jsonl") == want and summary.rows == len(want) > 0
    assert summary.conversational is (kind == "chat")
    assert summary.rows + summary.left_out.get("not_kept", 0) + summary.left_out.get("duplicate", 0) == 36


@pytest.mark.parametrize("kind", ["standard", "chat"])
def test_dpo_export_of_a_run_pairs_best_against_worst_and_never_ties(request, tmp_path, kind):
    """The run's scorer gives ties (every answer of a prompt right) and differences: checked group by group
    against the samples file, read here by hand."""
    run_dir = request.getfixturevalue(f"{kind}_run")
    summary = export_run(run_dir, tmp_path / "dpo.jsonl", ExportConfig("dpo"))
    rows = read_jsonl(tmp_path / "dpo.jsonl")
    groups: dict[tuple, list[dict]] = {}
    for s in sorted(run_files(run_dir, "samples"), key=lambda s: (s["round"], s["prompt_index"], s["sample_index"])):
        groups.setdefault((s["round"], s["prompt_index"]), [])
        if s["finished"] and s["score"] is not None:
            groups[(s["round"], s["prompt_index"])].append(s)
    paired = [g for g in groups.values() if len({s["score"] for s in g}) > 1]
    tied = [g for g in groups.values() if len(g) >= 2 and len({s["score"] for s in g}) == 1]
    assert len(rows) == len(paired) > 0 and len(tied) > 0  # the run has both, or this test proves nothing
    assert summary.prompt_groups_without_pair["all_tied"] == len(tied)
    assert summary.prompt_groups == len(groups) == 12 and summary.prompt_groups_with_pairs == len(paired)
    for row, group in zip(rows, paired):
        scores = [s["score"] for s in group]
        assert (row["chosen_score"], row["rejected_score"]) == (max(scores), min(scores))
        best = next(s for s in group if s["score"] == max(scores))
        assert row["prompt"] == (best["messages"] if kind == "chat" else best["prompt"])
        assert row["chosen"] == ([{"role": "assistant", "content": best["completion"]}] if kind == "chat"
                                 else best["completion"])
        assert row["chosen"] != row["rejected"]
    assert summary.mean_margin == pytest.approx(sum(r["chosen_score"] - r["rejected_score"] for r in rows) / len(rows))


def test_kto_export_labels_by_the_runs_pass_score_or_the_threshold_given(standard_run, tmp_path):
    summary = export_run(standard_run, tmp_path / "kto.jsonl", ExportConfig("kto"))
    rows = read_jsonl(tmp_path / "kto.jsonl")
    distinct = {(s["round"], s["prompt_index"], s["completion"]): s["score"]
                for s in run_files(standard_run, "samples") if s["finished"]}
    assert summary.threshold == 1.0 and len(rows) == len(distinct) == summary.rows
    assert summary.desirable == sum(score >= 1.0 for score in distinct.values()) > 0 and summary.undesirable > 0
    assert sorted(r["label"] for r in rows) == sorted(score >= 1.0 for score in distinct.values())
    lowered = export_run(standard_run, tmp_path / "kto-half.jsonl", ExportConfig("kto", threshold=0.5))
    assert lowered.desirable == sum(score >= 0.5 for score in distinct.values()) > summary.desirable


def test_rounds_choose_what_is_read(standard_run):
    _, summary = export_rows(standard_run, ExportConfig("kto", rounds=[1]))
    assert summary.rounds == [1] and summary.samples_read == 18
    _, summary = export_rows(standard_run, ExportConfig("kto"))
    assert summary.rounds == [0, 1] and summary.samples_read == 36


def test_itersft_export_prints_the_summary_and_writes_it_beside_the_dataset(standard_run, tmp_path, capsys):
    out = tmp_path / "data" / "pairs.jsonl"
    assert itersft(["export", str(standard_run), "--format", "dpo", "--out", str(out), "--pairs-per-prompt", "2",
                    "--min-margin", "0.25"]) == 0
    printed = capsys.readouterr().out
    rows, summary = export_rows(standard_run, ExportConfig("dpo", pairs_per_prompt=2, min_margin=0.25))
    summary.out = str(out)
    assert read_jsonl(out) == rows
    assert json.loads((tmp_path / "data" / "pairs.summary.json").read_text()) == asdict(summary)
    assert printed.splitlines() == summary.lines() + [f"summary written to {tmp_path / 'data' / 'pairs.summary.json'}"]
    assert printed.startswith(f"{summary.rows} DPO pairs (preference), standard text, from {standard_run} (rounds 0-1: "
                              f"36 samples) to {out}\n")
    assert f"mean score margin (chosen - rejected): {summary.mean_margin:.4g}" in printed


def test_the_readme_export_commands_run(standard_run, tmp_path, capsys):
    """Each `itersft export` line of the README's export section (the same block in both languages), on this
    test's run in place of `runs/example`."""
    root = Path(__file__).resolve().parents[2]
    blocks = []
    headings = {"README.md": "## Export to DPO / SFT / KTO", "README.zh-CN.md": "## 导出为 DPO / SFT / KTO"}
    for name, heading in headings.items():
        section = (root / name).read_text().split(heading, 1)[1]
        blocks.append(section.split("```bash\n", 1)[1].split("```", 1)[0])
    assert blocks[0] == blocks[1]
    commands = [shlex.split(line.split("#")[0]) for line in blocks[0].splitlines() if " export " in line]
    assert {c[c.index("--format") + 1] for c in commands} == {"sft", "dpo", "kto"}
    for command in commands:
        arguments = [str(standard_run) if a == "runs/example" else a for a in command[command.index("export"):]]
        out = arguments.index("--out") + 1
        arguments[out] = str(tmp_path / Path(arguments[out]).name)
        assert itersft(arguments) == 0, capsys.readouterr().err
        assert Path(arguments[out]).stat().st_size > 0
