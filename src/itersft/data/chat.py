"""What the trainer and the sampler both need to know about a tokenizer's chat template.

Two things, shared so that sampling and training read a conversation the same way:

* `render_ids`: a conversation's token ids. The template is rendered to text and the text tokenised
  *without* the tokenizer's special tokens: a template that writes its own BOS (Llama 3, Gemma) would
  otherwise start with two, and one that writes none (ChatML: SmolLM2, Qwen) is rendered as the model
  was trained. This is what `apply_chat_template(..., tokenize=True)` does too.
* `end_of_turn_token_id`: the special token the template closes an assistant turn with (`<|im_end|>`
  for ChatML, `<|eot_id|>` for Llama 3, `<end_of_turn>` for Gemma, `</s>` for Mistral). Generation
  stops there, and training learns it as the turn's last token; template text after it (ChatML's
  newline) is never generated, so it is not learned either.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")

# Content no real conversation contains: the template text after it is the turn's closing text.
_SENTINEL = "\u2063itersft-end-of-turn-probe\u2063"


def render_ids(tokenizer, turns: list[dict], add_generation_prompt: bool) -> list[int]:
    """The ids of `turns` rendered with the tokenizer's chat template (no special tokens added on top)."""
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def end_of_turn_token_id(tokenizer) -> int | None:
    """The first special token the chat template writes after an assistant turn's content, or None.

    Found by rendering a user turn and an assistant turn holding a sentinel, then tokenising what the
    template writes after the sentinel. None when the tokenizer has no template, or the template closes
    a turn with plain text only (then EOS alone ends generation, and training keeps the whole turn).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    position = text.rfind(_SENTINEL)
    if position < 0:  # the template dropped the content (unusual): nothing to locate the turn's end by
        return None
    after = tokenizer(text[position + len(_SENTINEL):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    return next((token_id for token_id in after if token_id in special), None)


def turn_problems(conversation: Any) -> list[str]:
    """What is wrong with the turns of one conversation: each must be a dict with a `role` among `ROLES`
    and string `content` (other keys pass to the template untouched). Empty when all are fine."""
    if not isinstance(conversation, (list, tuple)) or not conversation:
        return [f"must be a non-empty list of {{'role', 'content'}} dicts, got {_short(conversation)}"]
    problems = []
    for position, turn in enumerate(conversation):
        if not isinstance(turn, dict) or not {"role", "content"} <= set(turn):
            problems.append(f"turn {position} must be a dict with `role` and `content`, got {_short(turn)}")
        elif turn["role"] not in ROLES:
            problems.append(f"turn {position} has unknown role {_short(turn['role'])} (use one of {list(ROLES)})")
        elif not isinstance(turn["content"], str):
            problems.append(f"turn {position} has non-string content {_short(turn['content'])}")
    return problems


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
