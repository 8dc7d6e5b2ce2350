"""The texts the training benchmark trains on: letters (one token each) or English prose through a BPE tokenizer.

Two kinds of text, each with its tokenizer (`tokenizer_for`, saved beside the model so every process,
TRL's included, reads the same one):

* `letters`: random lowercase letters through the byte-level toy tokenizer (`itersft.toy`): one token
  per letter, 27 distinct ids in use (26 letters and EOS).
* `prose`: English prose through a byte-level BPE tokenizer of 8,192 tokens (the model's vocabulary)
  trained here with the `tokenizers` library. No hub is reachable, so both the prose and the
  tokenizer's training text come from this Python installation: the reference topics of
  `pydoc_data/topics.py` (the language reference, as `help()` shows it) and the docstrings of the
  standard library's modules, classes and functions. Each text is a run of whole words cut from that
  corpus, so it reads as written; consecutive texts never overlap.

`call_texts` draws the texts of one `step()` call: lengths uniform in [16, 512] tokens counting the EOS
that `step()` appends, from (seed, call index). For `prose` the length is met within a few tokens
(a text is cut at word boundaries); the benchmark counts the real tokens each system trains on and
checks them equal, so no system is credited with tokens it did not see. Every call gets texts no call
before it had (`new`), or the texts of a fixed set of calls cycle (`same`, the earlier benchmark's setting,
where every round repeats the same texts).
"""

from __future__ import annotations

import ast
import json
import sysconfig
from functools import cache
from pathlib import Path

import torch
from _common import MIN_LENGTH, text_workload

KINDS = ("letters", "prose")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # the toy tokenizer's, so EOS is "</s>" in both kinds
VOCAB_SIZE = 8192


@cache
def corpus() -> str:
    """English prose from this Python's standard library: the help topics, then module docstrings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    from pydoc_data.topics import topics

    parts = [topics[name] for name in sorted(topics)]
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[len(stdlib.parts):][0] or path.name.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]
        parts.extend(doc for node in nodes if (doc := ast.get_docstring(node)) and len(doc) > 200)
    return "\n\n".join(" ".join(part.split()) for part in parts)  # one space between words: plain prose


def train_bpe(directory: Path) -> Path:
    """Train the prose tokenizer on `corpus()` and save it (`tokenizer.json` and transformers' files).

    It splits text as Qwen2's tokenizer does (NFC, Qwen2's pre-tokenisation pattern, then bytes): the
    benchmark's models are Qwen2 models, and transformers 5 loads any tokenizer saved beside one with
    that pipeline, while TRL's transformers 4 reads the pipeline from `tokenizer.json`; the two read the
    same texts as the same tokens only when the file holds that pipeline.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(corpus().split("\n\n"), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    return directory


def tokenizer_for(kind: str):
    """A transformers tokenizer for `kind` (`prose` trains one: a few seconds)."""
    from itersft.toy import build_tokenizer

    if kind == "letters":
        return build_tokenizer()
    if kind == "prose":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(_trained_bpe())
    raise ValueError(f"unknown kind of text {kind!r}; one of {KINDS}")


@cache
def _trained_bpe() -> Path:
    import tempfile

    return train_bpe(Path(tempfile.mkdtemp()) / "bpe")


@cache
def _prose_words(tokenizer_dir: str) -> tuple[list[str], list[int]]:
    """The corpus as words (each with its leading space) and the tokens each word holds in the corpus's
    tokenisation (a token belongs to the word it starts in)."""
    from bisect import bisect_right

    from transformers import AutoTokenizer

    text = corpus()
    words = text.split(" ")
    starts, position = [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    counts = [0] * len(words)
    encoded = AutoTokenizer.from_pretrained(tokenizer_dir)(text, add_special_tokens=False, return_offsets_mapping=True)
    for start, _ in encoded["offset_mapping"]:
        counts[bisect_right(starts, start) - 1] += 1
    return [" " + word for word in words], counts


def call_texts(kind: str, call: int, samples: int, max_length: int, seed: int = 0, tokenizer_dir: str | None = None,
               reading: dict | None = None) -> list[str]:
    """The texts of `step()` call number `call` (see the module docstring). `reading` holds where the
    prose read so far ends, shared by the calls of one run, so no text repeats."""
    if kind == "letters":
        return text_workload(call, samples, seed, MIN_LENGTH, max_length)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + call)
    lengths = torch.randint(MIN_LENGTH, max_length + 1, (samples,), generator=generator).tolist()
    words, counts = _prose_words(tokenizer_dir)
    reading = reading if reading is not None else {"word": 0}
    texts = []
    for length in lengths:
        start = end = reading["word"] % len(words)
        tokens = 0
        while tokens + counts[end] < length - 1 and end + 1 < len(words):  # EOS takes the last token
            tokens += counts[end]
            end += 1
        texts.append("".join(words[start:end]).lstrip())
        reading["word"] = end
    return texts


def write_calls(path: Path, kind: str, calls: int, samples: int, max_length: int, texts: str,
                tokenizer_dir: Path, cycle: int) -> Path:
    """Write the texts of `calls` step() calls to `path` (JSON: a list per call). `texts="new"`: every call
    its own texts; `"same"`: the texts of calls 1..`cycle` repeat (call 0 is the warm-up)."""
    reading = {"word": 0}
    drawn = [call_texts(kind, index, samples, max_length, tokenizer_dir=str(tokenizer_dir), reading=reading)
             for index in range(calls if texts == "new" else cycle + 1)]
    if texts == "same":
        drawn = [drawn[0]] + [drawn[1 + (index - 1) % cycle] for index in range(1, calls)]
    path.write_text(json.dumps(drawn))
    return path
