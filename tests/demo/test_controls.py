"""What the demos' controls are built from: a seeded random pick that ignores scores, a recorder of what
the loop's filter was given, and the control's `step()` calls, which must be the loop's own."""

from __future__ import annotations

from transformers import AutoModelForCausalLM, AutoTokenizer

from itersft import IterativeSFTConfig, IterativeSFTTrainer
from itersft.demo.controls import RandomPick, RecordRounds, control_step_calls
from itersft.filters import BestOfK, Threshold
from itersft.loop import ExpertIteration, LoopConfig, SamplingConfig
from itersft.sampling.samples import Sample


def _samples(scores: list[float]) -> list[Sample]:
    return [Sample("q", f"c{i}", prompt_index=0, sample_index=i, score=s) for i, s in enumerate(scores)]


def test_random_pick_takes_each_rounds_count_of_samples_whatever_their_scores():
    samples = _samples([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    pick = RandomPick([2, 10, 0], seed=3)
    first, second, third = pick(samples), pick(samples), pick(samples)
    assert len(first) == 2
    assert second == samples  # only 6: all of them, in order
    assert third == []
    again = RandomPick([2, 10, 0], seed=3)(samples)
    assert again == first
    assert any(RandomPick([2], seed=s)(samples) != first for s in range(10))  # the seed matters


def test_record_rounds_keeps_what_each_round_gave_the_filter_and_passes_it_on():
    samples = _samples([1.0, 0.5, 0.0])
    record = RecordRounds(BestOfK(1))
    assert [s.completion for s in record(samples)] == ["c0"]
    record(samples[1:])
    assert [[s.completion for s in given] for given in record.rounds] == [["c0", "c1", "c2"], ["c1", "c2"]]
    assert repr(record) == "RecordRounds(BestOfK(n=1, min_score=None))"


def test_a_control_that_picks_every_sample_makes_the_loops_step_calls_in_the_loops_order(tmp_path, answering_dir):
    """Several `step()` calls per round (`step_size` 4, two epochs): the control's calls must hold the same
    samples in the same order as the loop's, call for call, not only as many updates."""
    trainer = IterativeSFTTrainer(AutoModelForCausalLM.from_pretrained(answering_dir),
                                  IterativeSFTConfig(output_dir=str(tmp_path / "trainer"), report_to="none",
                                                     save_strategy="no", per_device_train_batch_size=2),
                                  AutoTokenizer.from_pretrained(answering_dir))
    calls = []
    step = trainer.step
    trainer.step = lambda **arguments: calls.append(arguments) or step(**arguments)
    record = RecordRounds(Threshold(0.0))  # keeps every finished sample: the control's pick of all is the same set
    loop = ExpertIteration(trainer, SamplingConfig(num_samples=3, max_new_tokens=4, seed=3, chat_template=False),
                           "exact_match", record,
                           LoopConfig(output_dir=str(tmp_path / "run"), rounds=2, prompts_per_round=6, step_size=4,
                                      train_epochs=2, seed=7))
    prompts = [f"q{i}:" for i in range(12)]
    history = loop.run(prompts, [{"answer": "x"} for _ in prompts])
    assert all(m["train_samples"] > 4 for m in history)  # more than one call per epoch

    control = control_step_calls(loop, record.rounds, RandomPick([m["train_samples"] for m in history], seed=0))
    assert control == calls
    assert len(calls) == sum(2 * -(-m["train_samples"] // 4) for m in history)
