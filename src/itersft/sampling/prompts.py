"""How the loop's prompts reach the model: raw text, or a conversation rendered with the chat template.

A prompt is either a string or a chat conversation: a list of `{"role": ..., "content": ...}` dicts
with roles `system`, `user` and `assistant` (earlier assistant turns make a few-shot or multi-turn
prompt), string contents, at least one user turn, and a user turn last (the model answers it). Other
keys of a turn are passed to the template untouched.

**Which prompts get the chat template** (`SamplingConfig.chat_template`):

* a conversation always does (the tokenizer must have a template);
* a string does with `chat_template=True` (it becomes the user turn), never with `False` (it is fed
  as raw text, as before chat support), and with the default `"auto"` exactly when the tokenizer has
  a template *and* the model stops at the end of an assistant turn: the template's end-of-turn token
  (`itersft.data.chat`) is the tokenizer's EOS or one of the model's `generation_config` EOS ids.
  Encoder-decoder models never get the template (`step(messages=)` needs a causal LM).

Why that signal: a template on the tokenizer proves little, since many base checkpoints ship one
(Qwen2.5, Gemma 2, Llama 3.2, SmolLM2 base). What marks a model tuned to chat is that its turns end on
a token it was trained to stop at: SmolLM2- and Qwen2.5-Instruct end turns on `<|im_end|>`, their EOS;
Llama-3-Instruct and Gemma-it list `<|eot_id|>` / `<end_of_turn>` among their generation EOS ids; the
base models of all four stop on an end-of-text token that their templates never write. It is wrong for
a base model whose template closes turns with its own EOS (a Mistral base given a template, the
`itersft.toy` models): pass `chat_template=False` there. Model names are not read: a fine-tuned local
checkpoint has none worth trusting.

`system_prompt` is put first in every conversation that has no system turn of its own (a prompt's own
system turn wins); it needs the chat template, so it is refused when strings go in as raw text.

A chat prompt is sampled from `render(conversation, add_generation_prompt=True)` and trained on with
`trainer.step(messages=conversation + [assistant completion])`, which puts the loss on the assistant
turn and its end-of-turn token only. Left out: tool calls, multimodal content, templates with extra
arguments (`enable_thinking` and the like).
"""

from __future__ import annotations

import logging
from typing import Any

from itersft.checks import Problems
from itersft.data.chat import end_of_turn_token_id, render_ids, turn_problems

logger = logging.getLogger(__name__)

Prompt = str | list[dict[str, str]]


def add_prompt_problems(prompts: Any, problems: Problems, argument: str = "prompts") -> None:
    """Record every problem with a list of prompts, each naming the prompt's position."""
    if not isinstance(prompts, (list, tuple)):
        problems.add(f"`{argument}` must be a list of prompts (strings or chat messages), "
                     f"got {type(prompts).__name__}.")
        return
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            continue
        where = f"`{argument}[{index}]`"
        turns = turn_problems(prompt)
        if turns:
            problems.add(f"{where}: " + "; ".join(turns) + ".")
            continue
        roles = [turn["role"] for turn in prompt]
        if "user" not in roles:
            problems.add(f"{where} has no user turn: a chat prompt needs a question, e.g. "
                         "[{'role': 'user', 'content': '...'}].")
        elif roles[-1] != "user":
            problems.add(f"{where} ends with a turn of role {roles[-1]!r}: the last turn must be the user's, "
                         "the one the model answers.")


def check_prompts(prompts: Any, argument: str = "prompts") -> None:
    """Raise one ValueError listing every malformed prompt, or return."""
    problems = Problems(f"`{argument}`")
    add_prompt_problems(prompts, problems, argument)
    problems.raise_if_any()


def is_chat_template_choice(value: Any) -> bool:
    """True, False or "auto" (and not 1 or 0, which compare equal to the booleans)."""
    return value is True or value is False or value == "auto"


def is_conversation(prompt: Prompt) -> bool:
    return not isinstance(prompt, str)


def check_format(chat_template: Any, system_prompt: Any, prompts: list[Prompt], tokenizer) -> None:
    """What can be checked with the tokenizer alone, before any model loads (the CLI calls it early).

    Refused: a conversation, `chat_template=True` or a `system_prompt` with a tokenizer that has no
    template; conversations with `chat_template=False`.
    """
    problems = Problems("prompt format")
    conversations = sum(is_conversation(p) for p in prompts)
    has_template = getattr(tokenizer, "chat_template", None) is not None
    wanted = [reason for reason, asked in (("`chat_template` is true", chat_template is True),
                                           (f"{conversations} prompt(s) are chat messages", conversations > 0),
                                           ("`system_prompt` is set", system_prompt is not None)) if asked]
    if wanted and not has_template:
        problems.add(f"{' and '.join(wanted)}, but the tokenizer has no chat template: use a chat model's "
                        "tokenizer, set `tokenizer.chat_template`, or give plain string prompts with "
                        "`chat_template` false.")
    if chat_template is False and conversations:
        problems.add(f"{conversations} prompt(s) are chat messages but `chat_template` is false: messages need "
                        "the template. Set `chat_template` to true or auto, or give plain strings.")
    problems.raise_if_any()


def model_stop_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus the ids the model's `generation_config` names as EOS, in that order."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(model_eos, int):
        model_eos = [model_eos]
    for token in model_eos or []:
        if int(token) not in ids:
            ids.append(int(token))
    return ids


class PromptRenderer:
    """Turns prompts into the token ids the model is sampled from, and into the conversation trained on.

    Built from the sampling settings and the model (for `chat_template="auto"`, see the module
    docstring); `strings_as_chat` says how plain strings were resolved, `reason` why.
    `stop_token_ids` are the ids that end a completion: the model's EOS ids, plus the template's
    end-of-turn token unless `chat_template` is False (a conversation may come in even when plain
    strings stay raw text; a raw completion then also ends there, a token such a model rarely writes).
    """

    def __init__(self, tokenizer, model, chat_template: bool | str = "auto", system_prompt: str | None = None):
        if not is_chat_template_choice(chat_template):
            raise ValueError(f"`chat_template` must be true, false or 'auto', got {chat_template!r}.")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self.has_template = getattr(tokenizer, "chat_template", None) is not None
        self.end_of_turn_id = end_of_turn_token_id(tokenizer) if self.has_template else None
        model_stops = model_stop_token_ids(model, tokenizer)
        self.is_encoder_decoder = bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
        self.strings_as_chat, self.reason = _resolve(chat_template, self.has_template, self.end_of_turn_id,
                                                     model_stops, self.is_encoder_decoder)
        if system_prompt is not None and not self.strings_as_chat:
            raise ValueError(f"`system_prompt` is set but plain string prompts go in as raw text ({self.reason}), so "
                             "it could not be used. Set `chat_template` to true, or drop `system_prompt`.")
        self.stop_token_ids = list(model_stops)
        if chat_template is not False and self.end_of_turn_id not in (None, *self.stop_token_ids):
            self.stop_token_ids.append(self.end_of_turn_id)
        logger.debug("prompts: %s", self.describe())

    def describe(self) -> str:
        """One line for the log: how plain strings are resolved and why."""
        return (f"plain string prompts {'get the chat template' if self.strings_as_chat else 'go in as raw text'} "
                f"({self.reason}); generation stops at token ids {self.stop_token_ids}")

    def conversation(self, prompt: Prompt) -> list[dict[str, str]] | None:
        """The turns the model sees for `prompt` (system prompt included), or None for raw text."""
        if not is_conversation(prompt):
            if not self.strings_as_chat:
                return None
            turns = [{"role": "user", "content": prompt}]
        else:
            check_format(self.chat_template, None, [prompt], self.tokenizer)
            if self.is_encoder_decoder:
                raise ValueError("A prompt is chat messages, but the model is an encoder-decoder: chat templates "
                                 "render prompts for decoder-only models. Give plain string prompts.")
            turns = [dict(turn) for turn in prompt]
        if self.system_prompt is not None and turns[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": self.system_prompt})
        return turns

    def encode(self, prompts: list[Prompt]) -> list[list[int]]:
        """Token ids to generate from: raw strings with the tokenizer's special tokens (as `step(prompts=)`
        trains on them), conversations rendered with the generation prompt (as `step(messages=)` does)."""
        conversations = [self.conversation(p) for p in prompts]
        raw = [p for p, c in zip(prompts, conversations) if c is None]
        raw_ids = iter(self.tokenizer(raw, add_special_tokens=True)["input_ids"] if raw else [])
        return [list(next(raw_ids)) if c is None else render_ids(self.tokenizer, c, add_generation_prompt=True)
                for c in conversations]


def _resolve(chat_template, has_template: bool, end_of_turn_id: int | None, model_stops: list[int],
             is_encoder_decoder: bool) -> tuple[bool, str]:
    """(whether plain strings get the template, why)."""
    if chat_template is True:
        problems = ["the tokenizer has no chat template" if not has_template else "",
                    "the model is an encoder-decoder (chat templates render decoder-only prompts)"
                    if is_encoder_decoder else ""]
        if any(problems):
            raise ValueError(f"`chat_template` is true but {' and '.join(p for p in problems if p)}: use a chat "
                             "model and its tokenizer, or set `chat_template` false.")
        return True, "`chat_template` is true"
    if chat_template is False:
        return False, "`chat_template` is false"
    if is_encoder_decoder:
        return False, "auto: an encoder-decoder model"
    if not has_template:
        return False, "auto: the tokenizer has no chat template"
    if end_of_turn_id is None:
        return False, "auto: the chat template closes turns with no special token, so no sign of a chat model"
    if end_of_turn_id in model_stops:
        return True, f"auto: the template's end-of-turn token {end_of_turn_id} is one the model stops at"
    return False, (f"auto: the template's end-of-turn token {end_of_turn_id} is not among the model's EOS ids "
                   f"{model_stops}, as in a base model; set `chat_template` true to apply it anyway")

