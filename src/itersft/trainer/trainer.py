"""`IterativeSFTTrainer`: supervised fine-tuning driven one `step()` at a time by the caller's loop.

Between two `step()` calls the caller may generate with the model, score and filter the samples, and
then hand over whatever survived. Each call trains on exactly the samples given:

* the samples are tokenised (texts, prompt/completion pairs or chat messages) or taken as token
  tensors, truncated along the sequence axis, shuffled reproducibly and cut into micro-batches of
  `per_device_train_batch_size`;
* every `gradient_accumulation_steps` micro-batches make one optimizer update, and the last update of
  a call may use fewer, so no gradient is left pending;
* the loss of an update is the mean over *all* label tokens of its window, so how the samples are
  split into micro-batches does not change the gradient;
* `global_step` counts optimizer updates, and logging, evaluation and checkpointing follow
  `logging_steps`, `eval_steps` and `save_steps` in those units, at the end of the call.

It subclasses `transformers.Trainer`, so callbacks, `report_to`, `evaluate()`, `save_model()` and
`push_to_hub()` work as usual. `train()` does not apply: training data arrives through `step()`.
The parts live beside this module: `setup` (what the constructor was given), `model_facts` (what the model
allows); one update: `micro_batch` (the unit of work), `context` (what an update works with), `update`,
`engine` (DDP/FSDP2/DeepSpeed), `loss`, `hooks` (the user's collator and overrides); `evaluation`,
`checkpoint`, `transformers_private` (the adapter to transformers' private `Trainer` methods), `stats`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils.memory import clear_device_cache
from transformers import (
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import set_seed

from itersft.config import setting
from itersft.data.batching import shuffled
from itersft.data.collate import ExampleCollator
from itersft.data.encode import ExampleEncoder
from itersft.data.eval_dataset import tokenize_eval_dataset
from itersft.data.truncate import truncate_examples
from itersft.data.user_collator import TensorFeatures, check_collator, samples_carry_labels
from itersft.data.validate import validate_step_input
from itersft.distributed import Ranks
from itersft.precision import check_trainer_precision
from itersft.trainer import checkpoint as checkpoints
from itersft.trainer import hooks, optimization, transformers_private
from itersft.trainer.context import trainer_loss, update_context
from itersft.trainer.engine import Engine
from itersft.trainer.evaluation import eval_micro_batches, token_mean_loss
from itersft.trainer.guard import UpdateGuard
from itersft.trainer.loss import SummedLoss
from itersft.trainer.micro_batch import Collation, Layout, may_pack, plan_windows
from itersft.trainer.model_facts import inspect_model
from itersft.trainer.setup import (
    Default,
    choose_pad_token_id,
    enable_activation_checkpointing,
    is_tokenizer_like,
    load_model,
    load_tokenizer,
    resolve_settings,
    text_tokenizer,
    wants_activation_checkpointing,
    wrap_with_peft,
)
from itersft.trainer.stats import StepStats
from itersft.trainer.update import own_micro_step, run_update

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import PeftConfig, PeftModel

logger = logging.getLogger(__name__)


class IterativeSFTTrainer(Trainer):
    """Fine-tune a causal or seq2seq LM on samples handed to `step()` one call at a time.

    Args:
        model: a `PreTrainedModel` (or `PeftModel`), or a hub id / local path, loaded as a causal or
            seq2seq LM according to its config, with `args.model_init_kwargs`.
        args: `IterativeSFTConfig` or plain `TrainingArguments`. None: defaults that work on CPU and GPU.
            A tokenizer or processor given here (the `IterativeSFTTrainer(model, tokenizer)` quickstart)
            is taken as the tokenizer, with the default arguments.
        tokenizer: tokenizer or processor; loaded from the model's name when not given. Never modified.
        optimizers: `(optimizer, lr_scheduler)`; either may be None to get the default.
        data_collator: builds every micro-batch of `step()` and of `evaluate()` from per-sample dicts of
            1-D `torch.long` tensors (the caller's own where `step()` got tensors), `input_ids`,
            `attention_mask` (and `labels` when the samples carry their own), and the loss follows the
            `labels` it returns. None: the trainer pads (`batching` may also pack). See `user_collator`.
        eval_dataset: a `datasets.Dataset` (or dict of them) with `input_ids` (and optionally
            `attention_mask`, `labels`), or with text columns: `text` (+ `text_label` for seq2seq),
            `prompt` + `completion`, or `messages`; text columns are tokenised as `step()` would.
        max_length, truncation_mode, optimize_device_cache: as the `IterativeSFTConfig` fields of the
            same name. Left out, they take the value in `args`; passed, they win over `args`' defaults,
            and passing one that `args` sets to a different value is an error.
        preprocess_logits_for_metrics, compute_metrics: as in `transformers.Trainer`, for `evaluate()`.
        processing_class: TRL 0.23's name for `tokenizer`; give one or the other.
        peft_config: a `peft` config; the model is wrapped and only the adapters train.
        callbacks: extra `TrainerCallback`s; their step hooks fire once per optimizer update.

    A subclass may override `compute_loss` and `training_step`, as for `transformers.Trainer`; `step()`
    calls them for every micro-batch (the contract is in `itersft.trainer.hooks`).
    """

    # transformers' hooks, with its signatures, called for every micro-batch of `step()` (see `hooks`). Our
    # `compute_loss` divides by `num_items_in_batch` (the window's label tokens over all ranks): a subclass
    # whose loss is a per-micro-batch mean sets `loss_is_scaled_for_ga = False` (None: as transformers decides).
    training_step = hooks.training_step
    compute_loss = hooks.compute_loss
    loss_is_scaled_for_ga: bool | None = True
    # transformers' private hook for a numbered checkpoint, called by `step()` at `save_steps` (see
    # `transformers_private`): written atomically, as `save_checkpoint` writes.
    _save_checkpoint = transformers_private.save_numbered_checkpoint

    def __init__(
        self,
        model: PreTrainedModel | PeftModel | str | os.PathLike | None = None,
        args: TrainingArguments | PreTrainedTokenizerBase | ProcessorMixin | None = None,
        tokenizer: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LRScheduler | None] = (None, None),
        data_collator: Callable[[list[dict[str, torch.Tensor]]], Mapping[str, Any]] | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        max_length: int | None = None,
        truncation_mode: str = Default("keep_end"),
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        compute_metrics: Callable[[EvalPrediction], dict[str, float]] | None = None,
        optimize_device_cache: bool = Default(False),
        *,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        peft_config: PeftConfig | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
    ):
        if is_tokenizer_like(args):
            if tokenizer is not None or processing_class is not None:
                raise ValueError("A tokenizer was given both in second position (`args`) and as "
                                 "`tokenizer`/`processing_class`: give it once.")
            tokenizer, args = args, None
        if tokenizer is not None and processing_class is not None:
            raise ValueError("Both `tokenizer` and `processing_class` were given: they are the same argument "
                             "(`processing_class` is TRL 0.23's name). Give one.")
        tokenizer = tokenizer if tokenizer is not None else processing_class
        args, self.settings = resolve_settings(args, max_length=max_length, truncation_mode=truncation_mode,
                                               optimize_device_cache=optimize_device_cache)
        check_trainer_precision(args)  # before the model loads: bf16 that cannot run is refused, slow bf16 warned of
        if model is None:
            raise ValueError("`model` is required: a PreTrainedModel, or a hub id or local path to load.")
        model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
        init_kwargs = setting(args, "model_init_kwargs")
        if model_name is not None:
            model = load_model(model_name, init_kwargs)
        elif init_kwargs:
            raise ValueError("`model_init_kwargs` only applies when `model` is a hub id or path; the model "
                             "given is already built. Drop `model_init_kwargs` or pass the model's name.")
        if tokenizer is None:
            tokenizer = load_tokenizer(model, model_name)
        if peft_config is not None:
            set_seed(args.seed)  # the adapters' random initialisation follows `args.seed`, like the rest of the run
            model = wrap_with_peft(model, peft_config)
        if wants_activation_checkpointing(args):
            enable_activation_checkpointing(model, args)

        self.facts = inspect_model(model)
        self.is_encoder_decoder = self.facts.is_encoder_decoder
        self.tokenizer = text_tokenizer(tokenizer)
        self.encoder = ExampleEncoder(self.tokenizer, self.is_encoder_decoder, self.settings.add_eos_token)
        self.pad_token_id = choose_pad_token_id(self.tokenizer, model)
        self.rows_collator = ExampleCollator(self.pad_token_id, self.is_encoder_decoder)
        self.user_collator = check_collator(data_collator, self.settings.batching)
        # Every sample, of step() and of a text eval set, cut along the sequence axis (`truncate_examples`).
        self._truncate = partial(truncate_examples, max_length=self.settings.max_length,
                                 mode=self.settings.truncation_mode, max_positions=self.facts.max_positions,
                                 is_encoder_decoder=self.is_encoder_decoder)
        if eval_dataset is not None:
            eval_dataset = tokenize_eval_dataset(eval_dataset, self.encoder, self._truncate)

        super().__init__(
            model=model,
            args=args,
            data_collator=self.rows_collator if data_collator is None else TensorFeatures(data_collator),
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        # step() is called from the user's own loop: tqdm bars and printed logs belong to the caller.
        self.remove_callback(ProgressCallback)
        self.remove_callback(PrinterCallback)
        self._callbacks_started = False
        self.ranks = Ranks(self.accelerator)
        self.ranks.check_launch()
        self.engine = Engine(self.accelerator, self.is_deepspeed_enabled, self.is_fsdp_enabled)
        optimization.prepare_optimization(self)
        self.summed_loss = SummedLoss(self.model, self.facts, self.accelerator.autocast)
        # DeepSpeed steps inside backward on its own float32 master weights: nothing here could undo that.
        self.guard = None if self.is_deepspeed_enabled else UpdateGuard(self.optimizer, self.settings.guard_updates)

    # ---- set-up -------------------------------------------------------------------------------

    @property
    def shards_parameters(self) -> bool:
        """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3), so that every
        forward pass is a collective: code that runs the model outside `step()` (sampling, say) must keep
        the ranks in step."""
        return self.engine.shards_parameters

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and restart the LR schedule (warmup included).

        For loops that start each round with a fresh optimizer, a common choice when the data
        distribution shifts between rounds. `global_step` keeps counting.
        """
        optimization.reset_optimizer(self)

    def train(self, *args, **kwargs):
        """Not supported: an iterative trainer receives its data through `step()`."""
        raise NotImplementedError(
            "IterativeSFTTrainer.train() does not apply: data arrives through `IterativeSFTTrainer.step`. Call "
            "`trainer.step(texts=...)` (or input_ids=, prompts=/completions=, messages=) from your own loop, or "
            "let `itersft.loop.ExpertIteration` run the generate -> score -> filter -> train loop."
        )

    # ---- step ---------------------------------------------------------------------------------

    def step(
        self,
        input_ids: list[torch.Tensor] | None = None,
        attention_mask: list[torch.Tensor] | None = None,
        labels: list[torch.Tensor] | None = None,
        texts: list[str] | None = None,
        texts_labels: list[str] | None = None,
        *,
        prompts: list[str] | None = None,
        completions: list[str] | None = None,
        messages: list[list[dict[str, str]]] | None = None,
    ) -> dict[str, Any]:
        """Optimise on the given samples and return statistics.

        Give one input form: `input_ids` (list of 1-D integer tensors, with optional per-sample
        `attention_mask` and `labels`, -100 = no loss), `texts` (list of str, with `texts_labels` as
        the targets for seq2seq), `prompts` + `completions` (loss on completions only), or `messages`
        (chat conversations; loss on assistant turns only).

        Returns a dict: `loss` (mean token loss of the updates taken), `learning_rate`, `grad_norm`
        (mean pre-clip norm), `updates`, `skipped_updates` (non-finite loss or gradient, or no label
        token left by the collator), `samples`, `skipped_samples` (no label token; none with a
        `data_collator`, which decides the labels), `trained_tokens`, `real_tokens` (non-padding tokens
        processed), `padded_tokens` (including padding), `step_time`, `tokens_per_second`, `global_step`.
        """
        stats = StepStats()
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "texts": texts,
                 "texts_labels": texts_labels, "prompts": prompts, "completions": completions,
                 "messages": messages}
        form, lists = validate_step_input(given, self.is_encoder_decoder, self.facts.vocab_size,
                                          allow_empty=self.ranks.is_distributed)
        examples = self._truncate(self.encoder.encode_input(form, lists))
        # A user's collator decides the labels, so no sample is dropped for lacking any beforehand.
        trainable = [e for e in examples if self.user_collator is not None
                     or e.num_loss_tokens(shifted=not self.is_encoder_decoder) > 0]
        stats.samples, stats.skipped_samples = len(trainable), len(examples) - len(trainable)
        if stats.skipped_samples:
            logger.warning("step(): skipped %d of %d samples with no label token left to learn (all -100, "
                           "or truncated away).", stats.skipped_samples, len(examples))
        if self.settings.shuffle_samples:
            trainable = shuffled(trainable, self.args.seed, self.state.global_step)
        if not self._callbacks_started:
            self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
            self._callbacks_started = True
        self.model_wrapped.train()
        # Looked up on every call, so that an override set on the instance after construction counts too.
        overridden = hooks.overridden(self, IterativeSFTTrainer)
        windows = plan_windows(trainable, self._layout(overridden),
                               self._collation(samples_carry_labels(form, lists, self.is_encoder_decoder), overridden),
                               self.ranks, self.args.device)
        context = update_context(self)
        micro_step = hooks.OverrideMicroStep(self) if overridden else own_micro_step
        pending = {"should_log": False, "should_evaluate": False, "should_save": False}
        try:
            for window in windows:
                run_update(context, window, stats, micro_step)
                for flag in pending:
                    pending[flag] = pending[flag] or getattr(context.callbacks.control, flag)
        finally:
            self.control = context.callbacks.control
        stats.samples, stats.skipped_samples, stats.real_tokens, stats.padded_tokens = (int(v) for v in self.ranks.sum(
            [stats.samples, stats.skipped_samples, stats.real_tokens, stats.padded_tokens], self.args.device))
        self.state.num_input_tokens_seen += stats.real_tokens
        result = stats.as_dict(self.state.global_step)
        self._log_evaluate_save(result, pending)
        if self.settings.optimize_device_cache:
            clear_device_cache(garbage_collection=True)
        return result

    # ---- what one update works with -----------------------------------------------------------

    def _collation(self, carries_labels: bool, overridden: bool) -> Collation:
        """How this trainer's micro-batches are collated (`micro_batch.Collation`)."""
        return Collation(self.pad_token_id, self.is_encoder_decoder, self.user_collator, carries_labels,
                         own_loss=not overridden)

    def _layout(self, overridden: bool) -> Layout:
        """How `step()`'s samples are cut and laid out (`micro_batch.Layout`)."""
        args, facts, batching = self.args, self.facts, self.settings.batching
        return Layout(args.per_device_train_batch_size, args.gradient_accumulation_steps, batching,
                      may_pack(facts.packs, batching, self.user_collator, overridden), facts.hidden_size,
                      self.summed_loss.attends_per_sample(self.model_wrapped))

    def _log_evaluate_save(self, result: dict[str, Any], pending: dict[str, bool]) -> None:
        """Act on the log/eval/save requests that the updates of this call raised."""
        if pending["should_log"]:
            self.log({k: float(v) for k, v in result.items() if v is not None and k != "global_step"})
        if pending["should_evaluate"] and self.eval_dataset is not None:
            self.evaluate()
        if pending["should_save"]:
            self._save_checkpoint(self.model_wrapped, trial=None)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    # ---- evaluation ---------------------------------------------------------------------------

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        """`Trainer.evaluation_loop` for predictions and `compute_metrics`; `{prefix}_loss` is the mean over
        every label token of the dataset (`evaluation.token_mean_loss`)."""
        overridden = hooks.overridden(self, IterativeSFTTrainer)
        micro_batches = eval_micro_batches(dataloader.dataset, self.rows_collator, self._collation(False, overridden),
                                           self.args.per_device_eval_batch_size, self.ranks)
        self.model.eval()
        loss = token_mean_loss(micro_batches, trainer_loss(self), self.model, self.ranks, self.shards_parameters,
                               partial(hooks.override_eval_loss, self) if overridden else None)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        output.metrics[f"{metric_key_prefix}_loss"] = loss
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Predictions only: `evaluation_loop` computes the loss itself, over the whole dataset."""
        if prediction_loss_only:
            return None, None, None
        _, logits, labels = super().prediction_step(model, inputs, False, ignore_keys=ignore_keys)
        return None, logits, labels

    # ---- checkpoints --------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (or adapters) so that `from_pretrained(output_dir)` loads it.

        Under FSDP with `SHARDED_STATE_DICT`, transformers writes no weights here (checkpoints carry the
        shards instead); for a call from user code (a final save, say) the full state dict is gathered
        and written. Every process must call it.
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        if (self.is_fsdp_enabled and not _internal_call
                and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)):
            transformers_private.save_weights(self, output_dir or self.args.output_dir,
                                              self.accelerator.get_state_dict(self.model))

    def save_checkpoint(self, directory: str | os.PathLike, extra: Callable[[Path], None] | None = None) -> None:
        """Write a full checkpoint to `directory`, atomically (`checkpoint.save_checkpoint`).

        `extra(staging_dir)` may add files before the folder is renamed into place. Every process must call it.
        """
        checkpoints.save_checkpoint(self, directory, extra)

    def resume_from_checkpoint(self, checkpoint: str | bool = True) -> str | None:
        """Restore model, optimizer, scheduler, RNG and trainer state (`checkpoint.resume_from_checkpoint`).

        `True` picks the latest `checkpoint-*` in `args.output_dir` (None: there is none, a fresh start).
        """
        return checkpoints.resume_from_checkpoint(self, checkpoint)

    def finish_run(self) -> None:
        """Fire `on_train_end` (trackers such as TensorBoard flush), as the end of `Trainer.train()` does.

        The loop calls it when a run finishes; a later `step()` starts a new run for the callbacks
        (`on_train_begin` fires again). The processes stay up: call `end()` at the very end of a script.
        """
        if self._callbacks_started:
            self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
            self._callbacks_started = False

    def end(self) -> None:
        """Finish the run (`finish_run`), end the trackers and destroy the process group: once, at the very
        end of a script (the CLI calls it after the loop)."""
        self.finish_run()
        super().end()
