"""`step()` tokenises each input list in one tokenizer call, to exactly the ids separate calls give."""

from __future__ import annotations

from itersft.data.encode import ExampleEncoder
from itersft.data.example import IGNORE_INDEX


class CountingTokenizer:
    """The tokenizer, counting its calls."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


TEXTS = ["the cat sat", "", "ends with its own EOS</s>", "a much longer text, with punctuation: 1, 2, 3."]


def test_texts_take_one_tokenizer_call_and_the_ids_of_separate_calls(tokenizer):
    counting = CountingTokenizer(tokenizer)
    examples = ExampleEncoder(counting, False, True).from_texts(TEXTS, None)
    eos = tokenizer.eos_token_id
    expected = [tokenizer(text)["input_ids"] for text in TEXTS]
    expected = [ids if ids and ids[-1] == eos else ids + [eos] for ids in expected]
    assert counting.calls == 1
    assert [e.input_ids.tolist() for e in examples] == expected
    assert [e.labels.tolist() for e in examples] == expected


def test_prompts_and_completions_take_one_call_each(tokenizer):
    counting = CountingTokenizer(tokenizer)
    examples = ExampleEncoder(counting, False, True).from_prompts(TEXTS, TEXTS[::-1])
    assert counting.calls == 2
    for example, prompt, completion in zip(examples, TEXTS, TEXTS[::-1]):
        prompt_ids = tokenizer(prompt)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        if not completion_ids or completion_ids[-1] != tokenizer.eos_token_id:
            completion_ids = completion_ids + [tokenizer.eos_token_id]
        assert example.input_ids.tolist() == prompt_ids + completion_ids
        assert example.labels.tolist() == [IGNORE_INDEX] * len(prompt_ids) + completion_ids
