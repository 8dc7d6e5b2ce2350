"""Prompt sets from every kind of file `datasets` reads, in TRL's prompt-only format, and what is refused.

The same rows are written as JSONL, a JSON array, Parquet, CSV, a `save_to_disk` Dataset, a
`save_to_disk` DatasetDict and a plain folder of Parquet files; each must read back as the same
prompts and metadata. String prompts and conversations go in separate files (Arrow keeps one type per
column; CSV holds strings only), and the solutions are LaTeX, since CSV reads "4" back as a number.
"""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, DatasetDict

from itersft.tasks import SOURCES, PromptSource, prompts_from_dataset, read_labelled, read_prompts

TURNS = [{"role": "system", "content": "Think first."}, {"role": "user", "content": "What is 2+2?"}]
CHAT_ROWS = [{"prompt": TURNS, "solution": "$4$", "level": 1},
             {"prompt": [{"role": "user", "content": "And 3+3?"}], "solution": "$6$", "level": 2}]
TEXT_ROWS = [{"prompt": "What is 2+2?", "solution": "$4$", "level": 1},
             {"prompt": "And 3+3?", "solution": "$6$", "level": 2}]
EXPECTED_META = [{"solution": "$4$", "level": 1}, {"solution": "$6$", "level": 2}]


def write(kind: str, rows: list[dict], directory) -> dict:
    """`rows` written as `kind`; returns the prompt set's config mapping."""
    dataset = Dataset.from_list(rows)
    if kind == "jsonl":
        path = directory / "prompts.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif kind == "json":
        path = directory / "prompts.json"
        path.write_text(json.dumps(rows, indent=2))
    elif kind == "parquet":
        path = directory / "prompts.parquet"
        dataset.to_parquet(str(path))
    elif kind == "csv":
        path = directory / "prompts.csv"
        dataset.to_csv(str(path), index=False)
    elif kind == "save_to_disk":
        path = directory / "saved"
        dataset.save_to_disk(str(path))
    elif kind == "dataset_dict":
        path = directory / "saved_dict"
        DatasetDict({"train": Dataset.from_list(rows[:1]), "test": dataset}).save_to_disk(str(path))
        return {"path": str(path), "split": "test"}
    elif kind == "folder":
        path = directory / "folder"
        path.mkdir()
        dataset.to_parquet(str(path / "train.parquet"))
    return {"path": str(path)}


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "save_to_disk", "dataset_dict", "folder"])
def test_every_source_reads_the_same_string_prompts_and_every_column_as_metadata(kind, tmp_path):
    assert read_prompts("prompts", write(kind, TEXT_ROWS, tmp_path)) == (["What is 2+2?", "And 3+3?"], EXPECTED_META)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "save_to_disk", "dataset_dict", "folder"])
def test_conversations_read_back_as_written(kind, tmp_path):
    """Arrow stores the turns as structs: a turn without a key another turn has gets it back as None; those
    are dropped, so the turns equal what was written."""
    rows = [dict(CHAT_ROWS[0], prompt=[{"role": "user", "content": "hi", "name": "ann"}, *TURNS[1:]]), CHAT_ROWS[1]]
    prompts, meta = read_prompts("prompts", write(kind, rows, tmp_path))
    assert prompts == [rows[0]["prompt"], rows[1]["prompt"]] and meta == EXPECTED_META


def test_a_dataset_in_the_python_api():
    assert prompts_from_dataset(Dataset.from_list(CHAT_ROWS)) == ([r["prompt"] for r in CHAT_ROWS], EXPECTED_META)
    assert prompts_from_dataset(Dataset.from_list(TEXT_ROWS), meta_fields=["solution"])[1] == [
        {"solution": "$4$"}, {"solution": "$6$"}]


def test_prompt_field_and_meta_fields_still_work(tmp_path):
    rows = [{"question": "2+2?", "answer": "4", "hint": "add"}]
    spec = write("jsonl", rows, tmp_path)
    assert read_prompts("prompts", dict(spec, prompt_field="question")) == (["2+2?"], [{"answer": "4", "hint": "add"}])
    assert read_prompts("prompts", dict(spec, prompt_field="question", meta_fields=["answer"]))[1] == [{"answer": "4"}]


def test_limit_takes_the_first_rows_and_a_split_slice_works(tmp_path):
    spec = write("parquet", TEXT_ROWS, tmp_path)
    assert read_prompts("prompts", dict(spec, limit=1))[0] == ["What is 2+2?"]
    assert read_prompts("prompts", dict(spec, split="train[1:]"))[0] == ["And 3+3?"]


def test_labelled_pairs_from_parquet(tmp_path):
    spec = write("parquet", [{"prompt": "2+2?", "completion": "4"}], tmp_path)
    (sample,) = read_labelled(spec)
    assert (sample.prompt, sample.completion) == ("2+2?", "4")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_prompt_set_without_a_prompt_column_names_the_columns_it_has(kind, tmp_path):
    spec = write(kind, [{"question": "2+2?", "answer": "4"}], tmp_path)
    with pytest.raises(ValueError, match=r"no `prompt` column \(the columns of row 0: \['answer', 'question'\]\)"):
        read_prompts("prompts", spec)
    with pytest.raises(ValueError, match=r"dataset has no `prompt` column \(its columns: \['question', 'answer'\]\)"):
        prompts_from_dataset(Dataset.from_list([{"question": "2+2?", "answer": "4"}]))


@pytest.mark.parametrize("spec, message", [
    ({"path": "x.jsonl", "sheet": 1}, r"unknown key\(s\) \['sheet'\]; accepted with `path`"),
    ({"path": "x.jsonl", "name": "main"}, r"unknown key\(s\) \['name'\]"),
    ({"path": "x.jsonl", "dataset": "gsm8k"}, "exactly one of"),
    ({"prompt_field": "q"}, "exactly one of"),
    ({"path": "no/such/file.jsonl"}, "is no file or folder here"),
])
def test_bad_prompt_sets_are_refused(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.jsonl").write_text(json.dumps(TEXT_ROWS[0]) + "\n")
    with pytest.raises(ValueError, match=message):
        read_prompts("prompts", spec)


def test_splits_that_do_not_exist_are_refused(tmp_path):
    with pytest.raises(ValueError, match="holds one split"):
        read_prompts("prompts", dict(write("jsonl", TEXT_ROWS, tmp_path), split="test"))
    with pytest.raises(ValueError, match="no split 'validation'; its splits: \\['test', 'train'\\]"):
        read_prompts("prompts", dict(write("dataset_dict", TEXT_ROWS, tmp_path), split="validation"))
    with pytest.raises(ValueError, match="holds one saved Dataset"):
        read_prompts("prompts", dict(write("save_to_disk", TEXT_ROWS, tmp_path), split="train"))


def test_a_new_kind_of_source_is_one_entry(monkeypatch):
    monkeypatch.setitem(SOURCES, "inline", PromptSource(lambda section, spec: spec["inline"], frozenset({"seed"}),
                                                        lambda spec: "inline"))
    assert read_prompts("prompts", {"inline": TEXT_ROWS, "seed": 1, "limit": 1}) == (["What is 2+2?"],
                                                                                     EXPECTED_META[:1])
