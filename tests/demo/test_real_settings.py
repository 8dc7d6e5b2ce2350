"""`itersft demo-real --set NAME=VALUE` and the checks on the real-model demo's settings: both refuse bad
input by name before any model loads (these tests never load one)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from itersft.cli.demo_real import parse_settings
from itersft.demo.real import REAL_DEMO_HYPERPARAMETERS, RealDemoHyperparameters


def test_settings_convert_to_each_fields_type():
    assert parse_settings(["rounds=4", "learning_rate=2e-6", "precision=fp32", "system_prompt=Say a=b.",
                           "lora_rank=8"]) == {
        "rounds": 4, "learning_rate": 2e-6, "precision": "fp32", "system_prompt": "Say a=b.", "lora_rank": 8}
    assert parse_settings([]) == {}


@pytest.mark.parametrize("setting, named", [
    ("rounds", "expected NAME=VALUE"),
    ("epochs=2", "NAME one of model, system_prompt"),
    ("rounds=two", "rounds takes an integer, got 'two'"),
    ("rounds=1.5", "rounds takes an integer, got '1.5'"),
])
def test_a_bad_setting_is_refused_by_name(setting, named):
    with pytest.raises(SystemExit, match=named):
        parse_settings([setting])


def test_out_of_range_settings_are_refused_together():
    with pytest.raises(ValueError) as error:
        dataclasses.replace(REAL_DEMO_HYPERPARAMETERS, rounds=0, temperature=-1.0, lora_rank=-2, model="",
                            verifier="numeric", precision="float32")
    message = str(error.value)
    for name in ("`rounds` must be an int >= 1", "`temperature` must be a finite number >= 0",
                 "`lora_rank` must be an int >= 0", "`model` must be a non-empty string",
                 "`verifier` must be one of 'calculation', 'number', got 'numeric'",
                 "`precision` must be one of 'auto', 'bf16', 'fp32', got 'float32'"):
        assert name in message
    assert RealDemoHyperparameters(temperature=0.0).temperature == 0.0  # greedy sampling is allowed


def test_the_command_stops_before_loading_a_model(tmp_path):
    # `--model` names a folder that does not exist: were the settings checked after loading, the error
    # would be about the model instead.
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "demo-real", "--set", "batch_size=0",
                             "--model", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "`batch_size` must be an int >= 1, got 0" in result.stderr
    assert not (tmp_path / "run").exists()


def test_each_verifier_setting_names_a_scorer_the_loop_resolves():
    from itersft.demo.calculation_check import checked_calculation
    from itersft.demo.real import VERIFIERS
    from itersft.scoring.scorers import numeric, resolve_scorer

    assert resolve_scorer(VERIFIERS["calculation"]) is checked_calculation
    assert resolve_scorer(VERIFIERS["number"]) is numeric
    assert VERIFIERS[REAL_DEMO_HYPERPARAMETERS.verifier] == VERIFIERS["calculation"]  # the default


def test_a_verifier_that_is_not_a_name_is_refused_by_name_too():
    with pytest.raises(ValueError, match=r"`verifier` must be one of 'calculation', 'number', got \['x'\] \(list\)"):
        dataclasses.replace(REAL_DEMO_HYPERPARAMETERS, verifier=["x"])


def test_bf16_the_device_cannot_run_stops_the_demo_before_the_model_loads(tmp_path, monkeypatch):
    from itersft import precision
    from itersft.demo.real import run_real_demo

    monkeypatch.setattr(precision, "bf16_support", lambda device: precision.Bf16Support(False, False, "none here"))
    settings = dataclasses.replace(REAL_DEMO_HYPERPARAMETERS, precision="bf16", model=str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match=r"^`precision`='bf16', but cpu cannot run bfloat16 \(none here\)"):
        run_real_demo(0, tmp_path / "run", settings)


def test_every_setting_converts_from_text():
    """`parse_settings` converts by calling the field's type: right for str, int and float; a bool field would
    turn "false" into True, so none may be added without teaching it booleans."""
    assert {type(f.default) for f in dataclasses.fields(RealDemoHyperparameters)} == {str, int, float}
