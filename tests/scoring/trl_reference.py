"""TRL 1.16's own reward computation, run on our samples, as the reference the reward-function tests compare with.

`trl_rewards_per_function` calls `GRPOTrainer._calculate_rewards` itself, the method TRL's GRPO scores
with, on a trainer object that holds only what that method reads (the device, the reward functions,
their names and tokenizers, the trainer state, the log hooks, the async loop). Its inputs are built
as TRL builds them: one dataset row per completion (`prompt` and every other column), the prompts,
the completions (a string, or `[{"role": "assistant", "content": ...}]` for a conversation) and the
completion ids up to and including the stop token. `trl_weighted_sum` is TRL's combination: the
weighted `nansum` over functions, NaN where no function scored.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch
from transformers import TrainerState


def trl_inputs(samples):
    """(inputs, prompts, completions, completion_ids) as GRPOTrainer hands them to `_calculate_rewards`."""
    inputs = [{"prompt": s.prompt, **s.meta} for s in samples]
    prompts = [s.prompt for s in samples]
    completions = [s.completion if isinstance(s.prompt, str) else [{"role": "assistant", "content": s.completion}]
                   for s in samples]
    ids = [list(s.completion_ids) + ([s.stop_token_id] if s.stop_token_id is not None else []) for s in samples]
    return inputs, prompts, completions, ids


def trl_rewards_per_function(reward_funcs, samples, tokenizers=None, trainer_state=None,
                             logged: dict | None = None) -> torch.Tensor:
    """The [samples, functions] float32 rewards TRL computes (NaN where a function returned None); `logged`,
    if given, receives the columns the functions logged with `log_extra`."""
    from accelerate import PartialState
    from trl import GRPOTrainer
    from trl.trainer.utils import get_callable_name, is_async_callable, start_event_loop_in_daemon

    PartialState()  # TRL logs (a row no function scored) through accelerate's logger, which needs it

    trainer = object.__new__(GRPOTrainer)
    trainer.accelerator = SimpleNamespace(device=torch.device("cpu"), is_main_process=True)
    trainer.args = SimpleNamespace(device=torch.device("cpu"), report_to=[])
    trainer.is_deepspeed_enabled = False
    trainer.state = trainer_state if trainer_state is not None else TrainerState()
    trainer.reward_funcs = list(reward_funcs)
    trainer.reward_func_names = [get_callable_name(f) for f in reward_funcs]
    trainer.reward_processing_classes = list(tokenizers or [None] * len(reward_funcs))
    trainer._pending_extra_logs, trainer._pending_metrics = defaultdict(list), defaultdict(list)
    trainer.environments, trainer.chat_template_kwargs = None, {}
    if any(is_async_callable(f) for f in reward_funcs):
        _, trainer.async_loop, ready = start_event_loop_in_daemon(name="trl-reference")
        ready.wait()
    rewards = trainer._calculate_rewards(*trl_inputs(samples))
    if logged is not None:
        logged.update(trainer._pending_extra_logs)
    return rewards


def trl_weighted_sum(rewards_per_function: torch.Tensor, weights) -> torch.Tensor:
    """TRL's reward per completion: weighted nansum over the functions, NaN where none scored."""
    rewards = (rewards_per_function * torch.tensor(weights, dtype=torch.float32).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_function).all(dim=1)] = torch.nan
    return rewards


def trl_reward_model(path):
    """A reward model and its tokenizer, loaded and prepared as `GRPOTrainer.__init__` prepares a string reward
    function: `num_labels=1`, the pad token (EOS when there is none) set on the model's config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
