"""A reward model as a reward function, scored as TRL's GRPO scores one (TRL 1.16, `_calculate_rewards`).

A reward model is a sequence classifier with one label: `AutoModelForSequenceClassification` loaded
with `num_labels=1` from a local folder or a hub id, or a `PreTrainedModel` you loaded. Each completion
is scored on its prompt and completion as one text: for a conversation, the tokenizer's chat template
over the prompt's turns followed by the assistant turn (no generation prompt); for a string prompt, the
prompt and the completion concatenated. Texts are tokenized without special tokens (the template
writes its own), padded on the right, and the reward is `logits[:, 0]`, the model's one output at the
last real token (the model finds it through `config.pad_token_id`, set here to the tokenizer's pad
token, the EOS when it has none: what TRL sets).

It runs in this process, on the model's device, with no timeout and no crash isolation (the one
exception to the scoring pool, `reward_functions`): a model is too large to fork into workers, and
a forked worker cannot use the parent's GPU. It scores `batch_size` texts per forward pass (TRL scores
its whole per-device batch at once), under `torch.inference_mode`, in the model's current train/eval
mode (`from_pretrained` leaves it in eval mode), as TRL does.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RewardModel"]


class RewardModel:
    """`model` (a sequence classifier with one label) and its `tokenizer` as a reward function.

    Without `tokenizer`, it is loaded from `model.config._name_or_path`, as TRL loads it. The function's
    name (its key in `Sample.rewards`) is the last part of that path, as in TRL's logs (the model's class
    name when it has none).
    """

    runs_in_process = True

    def __init__(self, model, tokenizer=None, batch_size: int = 32):
        from itersft.checks import Problems

        problems = Problems("RewardModel")
        for problem in model_problems(model):
            problems.add(f"`model` {problem}")
        problems.integer("batch_size", batch_size, minimum=1)
        problems.raise_if_any()
        source = getattr(model.config, "_name_or_path", "") or ""
        if tokenizer is None:
            tokenizer = _load_tokenizer(source)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.__name__ = source.rstrip("/").split("/")[-1] or type(model).__name__

    @classmethod
    def from_pretrained(cls, path: str, batch_size: int = 32) -> RewardModel:
        """Load `AutoModelForSequenceClassification(num_labels=1)` and its tokenizer from a folder or hub id."""
        from transformers import AutoModelForSequenceClassification

        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        except (OSError, ValueError) as exc:
            raise ValueError(f"reward model {path!r} could not be loaded as a sequence classifier with one label "
                             f"(AutoModelForSequenceClassification, num_labels=1): {exc}") from exc
        return cls(model, _load_tokenizer(path), batch_size)

    def texts(self, prompts: list[Any], completions: list[Any]) -> list[str]:
        """What the model reads for each (prompt, completion), as TRL builds it."""
        return [p + c if isinstance(p, str) else self.tokenizer.apply_chat_template(list(p) + list(c), tokenize=False)
                for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        import torch

        texts = self.texts(prompts, completions)
        rewards: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            inputs = self.tokenizer(text=texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                    padding_side="right", add_special_tokens=False).to(self.model.device)
            with torch.inference_mode():
                rewards.extend(self.model(**inputs).logits[:, 0].float().tolist())
        return rewards


def model_problems(model) -> list[str]:
    """What keeps `model` from being a reward model (a sequence classifier with one label), if anything."""
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    if labels == 1:
        return []
    return [f"must be a sequence classifier with one label (num_labels=1), the reward; got {type(model).__name__} "
            f"with num_labels={labels!r}."]


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"the reward model's tokenizer could not be loaded from {source!r} (its "
                         "config's `_name_or_path`): pass `RewardModel(model, tokenizer)`") from exc
