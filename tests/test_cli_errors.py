"""`itersft run` with a bad config or bad input: one message on stderr naming the problem, exit status 2,
no traceback (`--debug` shows it). Through the CLI's entry point, `itersft.cli.main.main`; the checks
run before any model loads, so most cases name a model that does not exist and never reach it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from itersft.cli.bad_input import BadInputError
from itersft.cli.main import main


def _config(tmp_path, **changes) -> str:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "q0:", "answer": "x"}) + "\n")
    config = {"model": str(tmp_path / "no-such-model"), "output_dir": str(tmp_path / "run"),
              "prompts": {"path": str(prompts)}, "scorer": "exact_match", **changes}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _error(capsys, argv) -> str:
    """Run the CLI; it must exit 2 with one `itersft run: error:` message and no traceback. Returns it."""
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (message,) = [line for line in stderr.splitlines() if line.startswith("itersft run: error: ")]
    return message


def test_an_unknown_config_key(tmp_path, capsys):
    message = _error(capsys, ["run", _config(tmp_path, scorers="numeric")])
    assert message.startswith("itersft run: error: `config`: unknown key(s) ['scorers']; accepted: [")


def test_a_missing_config_file_and_a_missing_prompts_file(tmp_path, capsys):
    message = _error(capsys, ["run", str(tmp_path / "missing.yaml")])
    assert message == f"itersft run: error: [Errno 2] No such file or directory: '{tmp_path / 'missing.yaml'}'"
    message = _error(capsys, ["run", _config(tmp_path, prompts={"path": str(tmp_path / "missing.jsonl")})])
    assert message == (f"itersft run: error: `prompts`: `path` '{tmp_path / 'missing.jsonl'}' is no file or folder "
                       "here; a dataset on the hub is given as `dataset: <name>`.")


def test_a_bad_scorer_name(tmp_path, capsys):
    message = _error(capsys, ["run", _config(tmp_path, scorer="no_such_scorer")])
    assert message.startswith("itersft run: error: `scorer` must be ") and "got 'no_such_scorer'" in message


def test_the_loops_own_input_checks_run_before_the_model_loads(tmp_path, capsys, causal_dir):
    """`labelled_ratio` without labelled data is the loop's check (`check_inputs`); the model's folder holds
    an empty config.json, so an error about anything else would mean the CLI had skipped the check or tried
    to load the model first."""
    (tmp_path / "unloadable").mkdir()
    (tmp_path / "unloadable" / "config.json").write_text("{}")
    message = _error(capsys, ["run", _config(tmp_path, model=str(tmp_path / "unloadable"), tokenizer=str(causal_dir),
                                             loop={"labelled_ratio": 0.5})])
    assert message == "itersft run: error: `labelled_ratio` > 0 needs `labelled` samples to mix in."


def test_a_rerun_with_other_settings_is_one_message(tmp_path, capsys, causal_dir):
    """The run identity's refusal (a multi-line message) comes out whole, without a traceback."""
    round_dir = tmp_path / "run" / "rounds" / "round-0000"
    round_dir.mkdir(parents=True)
    (round_dir / "loop_state.json").write_text(json.dumps({"round": 0}))
    (tmp_path / "run" / "run_identity.json").write_text(json.dumps({"identity": {"sampling.seed": 99}}))
    assert main(["run", _config(tmp_path, model=str(causal_dir), sampling={"chat_template": False})]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    assert f"itersft run: error: Refusing to resume the run in {str(tmp_path / 'run')!r} (after round 0)" in stderr
    assert "- sampling.seed: 99 -> 0" in stderr


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(BadInputError) as error:
        main(["run", _config(tmp_path, scorer="no_such_scorer"), "--debug"])
    assert isinstance(error.value.__cause__, ValueError)  # the check's own error, chained


def test_the_installed_entry_point_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "run", str(tmp_path / "missing.yaml")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"itersft run: error: [Errno 2] No such file or directory: "
                                     f"'{tmp_path / 'missing.yaml'}'")
