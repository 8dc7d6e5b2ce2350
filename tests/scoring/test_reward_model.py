"""A reward model as a reward function, compared with TRL 1.16 scoring the same model on the same samples.

The reward model is a tiny Llama sequence classifier with one label, built from a config with random
weights and saved with `save_pretrained` (the toy tokenizer, with its chat template, beside it), then
named by its folder as a config names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification
from trl.rewards import think_format_reward

from itersft.sampling.samples import Sample
from itersft.scoring.pool import ScoringOptions
from itersft.scoring.reward_functions import RewardFunctions
from itersft.scoring.reward_model import RewardModel
from itersft.scoring.scorers import score_samples
from itersft.toy import build_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trl_reference import trl_reward_model, trl_rewards_per_function, trl_weighted_sum  # noqa: E402

POOL = ScoringOptions(timeout=20, workers=2)


def build_reward_model(num_labels: int = 1) -> tuple[LlamaForSequenceClassification, object]:
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    torch.manual_seed(0)
    return LlamaForSequenceClassification(config), tokenizer


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    model, tokenizer = build_reward_model()
    directory = tmp_path_factory.mktemp("reward-model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def samples(conversational: bool):
    completions = ["<think>4</think> 4", "5", "I think it is four, because two and two make four.", ""]
    prompt = [{"role": "user", "content": "What is 2+2?"}] if conversational else "What is 2+2? "
    return [Sample(prompt=prompt, completion=c, prompt_index=i // 2, sample_index=i % 2) for i, c in
            enumerate(completions)]


@pytest.mark.parametrize("conversational", [True, False], ids=["conversational", "standard"])
def test_a_reward_model_by_path_scores_what_trl_scores(reward_model_dir, conversational):
    batch = samples(conversational)
    functions = RewardFunctions([str(reward_model_dir)])
    score_samples(functions, batch, options=POOL)
    model, tokenizer = trl_reward_model(reward_model_dir)
    expected = trl_rewards_per_function([model], batch, tokenizers=[tokenizer])
    assert functions.names == [reward_model_dir.name]  # TRL's name: the folder
    got = torch.tensor([[s.rewards[reward_model_dir.name]] for s in batch])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert len(set(got[:, 0].tolist())) == len(batch)  # the texts differ, and so do their rewards


def test_batches_give_the_rewards_of_one_batch(reward_model_dir):
    whole, pieces = samples(True), samples(True)
    model, tokenizer = trl_reward_model(reward_model_dir)
    score_samples(RewardFunctions([RewardModel(model, tokenizer, batch_size=4)]), whole, options=POOL)
    score_samples(RewardFunctions([RewardModel(model, tokenizer, batch_size=1)]), pieces, options=POOL)
    name = RewardModel(model, tokenizer).__name__
    for a, b in zip(whole, pieces):
        assert a.rewards[name] == pytest.approx(b.rewards[name], abs=1e-5)


def test_a_loaded_model_beside_a_function_in_the_pool(reward_model_dir):
    """A model loaded by the caller (with the tokenizer from its folder, as TRL loads it) runs in this process,
    the function in the pool; their weighted sum is TRL's."""
    model, tokenizer = trl_reward_model(reward_model_dir)
    batch = samples(True)
    score_samples(RewardFunctions([model, think_format_reward], [0.5, 2.0]), batch, options=POOL)
    expected = trl_rewards_per_function([model, think_format_reward], batch, tokenizers=[tokenizer, None])
    got = torch.tensor([list(s.rewards.values()) for s in batch])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor([s.score for s in batch]), trl_weighted_sum(expected, [0.5, 2.0]),
                               rtol=0, atol=1e-6)


def test_a_model_with_more_than_one_label_is_refused():
    model, tokenizer = build_reward_model(num_labels=2)
    with pytest.raises(ValueError, match=r"reward_funcs\[0\]` must be a sequence classifier .* num_labels=2"):
        RewardFunctions([model])


def test_a_model_without_a_tokenizer_to_find_says_how_to_give_one():
    model, tokenizer = build_reward_model()
    with pytest.raises(ValueError, match=r"pass `RewardModel\(model, tokenizer\)`"):
        RewardFunctions([model])
    assert RewardFunctions([RewardModel(model, tokenizer)]).names == ["LlamaForSequenceClassification"]
