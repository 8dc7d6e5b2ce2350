"""Cut-off samples leave before the filter: a per-prompt cap never spends its slot on a sample the loop
will not train, and the metrics count what is trained.

The scenario a new user met (issue 22): the toy model from `save_toy`, 36 prompts, 6 samples each, 3
new tokens, a scorer that prefers longer completions and `BestOfK(1)`. Almost every sample is cut off
at 3 tokens and so scores highest; a few finish earlier. Filtering before dropping the cut-off ones
trained nothing at all.
"""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.loop import BestOfK, ExpertIteration, LoopConfig, Sampler, SamplingConfig
from itersft.toy import save_toy

PROMPTS = [f"q{i}:" for i in range(36)]


def longer_is_better(prompts, completions, **meta):
    return [float(len(c)) for c in completions]


def test_best_of_k_trains_the_best_finished_sample_not_a_cut_off_one(tmp_path):
    path = save_toy(tmp_path / "toy")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    sampling = SamplingConfig(num_samples=6, max_new_tokens=3, temperature=1.0, chat_template=False)
    # The reference: round 0's draws (seeded per round, prompt and sample) and, by hand, the best finished
    # sample of each prompt (ties to the lower sample_index, as `BestOfK` breaks them).
    drawn = Sampler(model, tokenizer, sampling).sample(PROMPTS, 0, prompt_indices=list(range(len(PROMPTS))))
    best = {}
    for s in sorted((s for s in drawn if s.finished), key=lambda s: (-len(s.completion), s.sample_index)):
        best.setdefault(s.prompt_index, s)
    longest_cut_off = {}
    for s in drawn:
        if not s.finished:
            longest_cut_off[s.prompt_index] = max(longest_cut_off.get(s.prompt_index, 0), len(s.completion))
    # Every prompt with a finished sample also has a longer cut-off one: filtering first would keep none.
    assert best and all(longest_cut_off.get(i, 0) > len(s.completion) for i, s in best.items())

    trainer = IterativeSFTTrainer(model, IterativeSFTConfig(output_dir=str(tmp_path / "trainer"), report_to="none",
                                                            save_strategy="no"), tokenizer=tokenizer)
    trained = []
    step = trainer.step
    trainer.step = lambda **inputs: trained.extend(inputs["completions"]) or step(**inputs)
    loop = ExpertIteration(trainer, sampling, longer_is_better, BestOfK(1),
                           LoopConfig(output_dir=str(tmp_path / "run"), rounds=1, score_in_process=True,
                                      score_timeout=None))
    (metrics,) = loop.run(PROMPTS)

    accepted = [json.loads(line) for line in (tmp_path / "run" / "accepted" / "round-0000.jsonl").read_text()
                .splitlines()]
    assert sorted((s["prompt_index"], s["sample_index"]) for s in accepted) == sorted(
        (s.prompt_index, s.sample_index) for s in best.values())
    assert sorted(trained) == sorted(s["completion"] for s in accepted)
    assert metrics["samples_kept"] == metrics["train_samples"] == len(best)
    assert metrics["samples_unfinished"] == sum(not s.finished for s in drawn)
    assert metrics["acceptance_rate"] == len(best) / len(drawn)
