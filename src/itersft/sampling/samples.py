"""The unit the loop passes between its phases: one sampled completion for one prompt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One completion drawn for one prompt.

    `prompt` is the prompt as given (a string, or chat messages) and is what scorers receive.
    `messages` is the conversation the model answered when the prompt went through the chat template
    (system prompt included, assistant turn not), None when it went in as raw text: training then uses
    `step(messages=messages + [assistant completion])`, else `step(prompts=, completions=)`
    (`itersft.sampling.prompts`). `completion` is the answer's text (for chat, the assistant turn's content).
    `prompt_index` is the prompt's position in the whole prompt list given to the loop or the sampler
    (not its text), so duplicate prompts stay distinct groups and a prompt keeps its index whichever
    round or rank samples it; `sample_index` numbers the k completions of that prompt.
    `stop_token_id` is the token that ended the completion (an EOS or end-of-turn id; it is in neither
    `completion` nor `completion_ids`), None when no stop token ended it (cut at `max_new_tokens`, or
    at a stop string). `score` is filled in by scoring: a float, or None when the scorer could not
    score the sample. With reward functions (`itersft.scoring.reward_functions`) `score` is their
    weighted sum and `rewards` holds each function's own reward, `{function name: value}`, None where
    that function did not score the sample (it returned None, NaN or inf, raised, or its worker died;
    a timeout is 0.0); `reward_logs` holds the columns the functions logged for the sample with TRL's
    `log_extra(column, values)`, None when none did. Both stay None with a plain scorer.
    `meta` carries per-prompt metadata (e.g. the reference answer) through to the scorer.
    """

    prompt: str | list[dict[str, str]]
    completion: str
    prompt_index: int
    sample_index: int
    completion_ids: list[int] = field(default_factory=list)
    finished: bool = True
    score: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, str]] | None = None
    stop_token_id: int | None = None
    rewards: dict[str, float | None] | None = None
    reward_logs: dict[str, Any] | None = None

    def training_conversation(self) -> list[dict[str, str]] | None:
        """`messages` followed by the completion as the assistant turn; None for a raw-text sample."""
        if self.messages is None:
            return None
        return [*self.messages, {"role": "assistant", "content": self.completion}]

    def passes(self, pass_score: float) -> bool:
        """Whether the sample counts as correct: scored, and at least `pass_score` (unscorable fails)."""
        return self.score is not None and self.score >= pass_score
