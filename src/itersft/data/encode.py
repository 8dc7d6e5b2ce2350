"""Turn each `step()` input form into `Example`s: tokenise, build labels, mask what must not be learned.

The tokenizer is only called, never configured: truncation and padding are done by this package, so
the caller's tokenizer is never mutated (TRL 0.23 changed its `truncation_side`).
"""

from __future__ import annotations

from functools import cached_property

import torch

from itersft.data.chat import end_of_turn_token_id, render_ids
from itersft.data.example import IGNORE_INDEX, Example
from itersft.data.validate import InputError


class ExampleEncoder:
    """Turns `step()` input of one model type (causal or seq2seq) into `Example`s.

    `add_eos_token` appends EOS to texts, completions and seq2seq targets that lack it, so the model
    learns to stop.
    """

    def __init__(self, tokenizer, is_encoder_decoder: bool, add_eos_token: bool):
        self.tokenizer = tokenizer
        self.is_encoder_decoder = is_encoder_decoder
        self.add_eos_token = add_eos_token
        self.eos_token_id = tokenizer.eos_token_id

    def encode_input(self, form: str, lists: dict[str, list | None]) -> list[Example]:
        """The examples of one validated `step()` input (`validate.validate_step_input`'s result)."""
        if form == "tokens":
            return from_token_ids(lists["input_ids"], lists["attention_mask"], lists["labels"],
                                  self.is_encoder_decoder)
        if form == "texts":
            return self.from_texts(lists["texts"], lists["texts_labels"])
        if form == "prompts":
            return self.from_prompts(lists["prompts"], lists["completions"])
        return self.from_messages(lists["messages"])

    def encode(self, texts: list[str], add_special_tokens: bool = True, append_eos: bool = False) -> list[list[int]]:
        """Token ids of each of `texts`, with EOS appended when asked and configured and not already there.

        One tokenizer call for the whole list: a fast tokenizer encodes it in one pass, where a call per
        text pays the tokenizer's Python overhead once per text (about a third of tokenising a call's
        worth of short texts). The ids are those of separate calls.
        """
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
        return [self._with_eos(list(ids)) if append_eos else list(ids) for ids in encoded]

    def _with_eos(self, ids: list[int]) -> list[int]:
        if self.add_eos_token and self.eos_token_id is not None and (not ids or ids[-1] != self.eos_token_id):
            return ids + [self.eos_token_id]
        return ids

    def from_texts(self, texts: list[str], texts_labels: list[str] | None) -> list[Example]:
        """Causal: learn every token of each text. Seq2seq: `texts` are sources, `texts_labels` targets.

        For a causal model `texts_labels` may be given only when it tokenises to exactly as many tokens
        as `texts` (a token-aligned label string); otherwise use `prompts`/`completions`.
        """
        if self.is_encoder_decoder:
            if texts_labels is None:
                raise InputError("A seq2seq model needs targets: pass `texts_labels` with `texts` "
                                 "(or `prompts`/`completions`).")
            return [self._seq2seq(f"texts[{i}]", source, target) for i, (source, target)
                    in enumerate(zip(texts, texts_labels))]
        all_ids = self.encode(texts, append_eos=True)
        all_labels = all_ids if texts_labels is None else self.encode(texts_labels, append_eos=True)
        examples = []
        for index, (ids, labels) in enumerate(zip(all_ids, all_labels)):
            if len(labels) != len(ids):
                raise InputError(
                    f"`texts_labels[{index}]` tokenises to {len(labels)} tokens but `texts[{index}]` to "
                    f"{len(ids)}: for a causal LM they must align token for token. To learn only a "
                    "completion, pass `prompts=` and `completions=` instead."
                )
            examples.append(_causal(ids, labels))
        return examples

    def from_prompts(self, prompts: list[str], completions: list[str]) -> list[Example]:
        """Loss on completions only. Causal: prompt then completion in one sequence, prompt masked.
        Seq2seq: the prompt is the encoder source, the completion the target."""
        if self.is_encoder_decoder:
            return [self._seq2seq(f"prompts[{i}]", prompt, completion) for i, (prompt, completion)
                    in enumerate(zip(prompts, completions))]
        examples = []
        for prompt_ids, completion_ids in zip(self.encode(prompts),
                                              self.encode(completions, add_special_tokens=False, append_eos=True)):
            examples.append(_causal(prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids))
        return examples

    def from_messages(self, conversations: list[list[dict]]) -> list[Example]:
        """Render each conversation with the tokenizer's chat template; loss on assistant turns only.

        An assistant turn's tokens are found by rendering the conversation up to that turn with the
        generation prompt and up to the end of the turn: the tokens between the two are the turn, cut
        after the template's end-of-turn token (`itersft.data.chat`), so the loss covers the content and
        that token and not the text a template writes after it (ChatML's newline), which generation
        never produces. This needs a template whose renderings of prefixes are prefixes of the whole
        (true of common ones).
        """
        if self.is_encoder_decoder:
            raise InputError("`messages` needs a causal LM with a chat template; for seq2seq pass "
                             "`prompts`/`completions` or `texts`/`texts_labels`.")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise InputError("`messages` needs a tokenizer with a `chat_template`; this one has none.")
        return [self._conversation(index, turns) for index, turns in enumerate(conversations)]

    def _conversation(self, index: int, turns: list[dict]) -> Example:
        """One conversation checked by `validate.check_conversations`."""
        ids = render_ids(self.tokenizer, turns, add_generation_prompt=False)
        labels = [IGNORE_INDEX] * len(ids)
        for position, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            prompt_ids = render_ids(self.tokenizer, turns[:position], add_generation_prompt=True) if position else []
            end_ids = render_ids(self.tokenizer, turns[: position + 1], add_generation_prompt=False)
            if ids[: len(end_ids)] != end_ids:
                raise InputError(
                    f"`messages[{index}]`: the chat template does not render turn {position} as a prefix of "
                    "the conversation, so assistant tokens cannot be located. Use `prompts`/`completions`."
                )
            # Where the generation prompt's last token merges with the content's first, that token is learned.
            start = _common_prefix_length(prompt_ids, end_ids)
            end = len(end_ids)
            turn_end = self._end_of_turn_id
            if turn_end is not None and turn_end in end_ids[start:end]:
                end = max(i for i in range(start, end) if end_ids[i] == turn_end) + 1
            labels[start:end] = ids[start:end]
        return _causal(ids, labels)

    @cached_property
    def _end_of_turn_id(self) -> int | None:
        """Looked up once, on first use: only `messages` need it, and only a tokenizer with a template has one."""
        return end_of_turn_token_id(self.tokenizer)

    def _seq2seq(self, where: str, source: str, target: str) -> Example:
        source_ids = torch.tensor(self.encode([source])[0], dtype=torch.long)
        if not len(source_ids):
            raise InputError(f"`{where}` (the encoder's source) tokenizes to no tokens: the encoder needs at "
                             "least one. Give it text.")
        target_ids = self._with_eos(list(self.tokenizer(text_target=target)["input_ids"]))
        return Example(source_ids, torch.ones_like(source_ids), torch.tensor(target_ids, dtype=torch.long))


def from_token_ids(input_ids: list[torch.Tensor], attention_mask: list[torch.Tensor] | None,
                   labels: list[torch.Tensor] | None, is_encoder_decoder: bool) -> list[Example]:
    """Build examples from validated tensors.

    Causal: labels default to the input ids; a position whose attention mask is 0 is never a label token,
    given labels or not (`Example.causal`: the mask, not the pad id, decides, so a real EOS equal to the
    pad token is learned). This keeps the window's label-token count (the loss's divisor) equal to the
    tokens the loss sums over, e.g. for a padded generation batch passed with `labels=input_ids`.
    Seq2seq: `labels` are the targets and are required.
    """
    if is_encoder_decoder and labels is None:
        raise InputError("A seq2seq model needs targets: pass `labels` (or `texts_labels`, or "
                         "`prompts`/`completions`).")
    examples = []
    for index, ids in enumerate(input_ids):
        ids = _on_cpu(ids)
        mask = torch.ones_like(ids) if attention_mask is None else _on_cpu(attention_mask[index])
        target = None if labels is None else _on_cpu(labels[index])
        examples.append(Example(ids, mask, target) if is_encoder_decoder else Example.causal(ids, mask, target))
    return examples


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    """The caller's tensor itself when it is already `torch.long` on the CPU (a `data_collator` then gets
    the very tensors it was given, as TRL's trainer handed them), else a converted copy. Integer tensors
    never require grad, so nothing needs detaching."""
    return tensor.to("cpu", torch.long)


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def _causal(ids: list[int], labels: list[int]) -> Example:
    input_ids = torch.tensor(ids, dtype=torch.long)
    return Example.causal(input_ids, torch.ones_like(input_ids), torch.tensor(labels, dtype=torch.long))
