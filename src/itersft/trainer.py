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
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.memory import clear_device_cache
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.optimization import get_scheduler
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint, rotate_checkpoints, set_seed

from itersft.checkpoint import atomic_directory
from itersft.data.batching import accumulation_windows, by_length, count_micro_batches, shuffled
from itersft.data.collate import ExampleCollator, collate
from itersft.data.encode import SampleEncoder
from itersft.data.eval_dataset import tokenize_eval_dataset
from itersft.data.example import Example
from itersft.data.packing import packing_pays, supports_packing
from itersft.data.step_input import step_examples
from itersft.data.truncate import truncate_example
from itersft.deepspeed_config import finalize_deepspeed_config, zero_stage
from itersft.distributed import Ranks
from itersft.loss import causal_summed_loss, label_positions, summed_token_loss
from itersft.model_loading import (
    is_encoder_decoder,
    is_tokenizer_like,
    load_model,
    load_tokenizer,
    text_tokenizer,
)
from itersft.step_stats import StepStats
from itersft.trainer_setup import (
    choose_pad_token_id,
    enable_activation_checkpointing,
    resolve_settings,
    wants_activation_checkpointing,
    wrap_with_peft,
)

logger = logging.getLogger(__name__)

# `state.max_steps` when no horizon is set: large enough that DefaultFlowCallback never ends training.
NO_HORIZON = 2**62


class IterativeSFTTrainer(Trainer):
    """Fine-tune a causal or seq2seq LM on samples handed to `step()` one call at a time.

    Args:
        model: a `PreTrainedModel` (or `PeftModel`), or a hub id / local path, loaded as a causal or
            seq2seq LM according to its config, with `args.model_init_kwargs`.
        args: `IterativeSFTConfig` or plain `TrainingArguments`. None: defaults that work on CPU and GPU.
            A tokenizer given here (the `IterativeSFTTrainer(model, tokenizer)` quickstart) is taken as
            the tokenizer.
        tokenizer: tokenizer or processor; loaded from the model's name when not given. Never modified.
        optimizers: `(optimizer, lr_scheduler)`; either may be None to get the default.
        data_collator: collator for `evaluate()` (`step()` batches its own samples).
        eval_dataset: a `datasets.Dataset` (or dict of them) with `input_ids` (and optionally
            `attention_mask`, `labels`), or with text columns: `text` (+ `text_label` for seq2seq),
            `prompt` + `completion`, or `messages`; text columns are tokenised as `step()` would.
        max_length, truncation_mode, optimize_device_cache: as the `IterativeSFTConfig` fields of the
            same name; setting one here and differently in `args` is an error. Left at their defaults
            (`None`, `"keep_end"`, `False`) they defer to `args`.
        preprocess_logits_for_metrics, compute_metrics: as in `transformers.Trainer`, for `evaluate()`.
        processing_class: TRL 0.23's name for `tokenizer`; give one or the other.
        peft_config: a `peft` config; the model is wrapped and only the adapters train.
        callbacks: extra `TrainerCallback`s; their step hooks fire once per optimizer update.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        tokenizer=None,
        optimizers: tuple = (None, None),
        data_collator=None,
        eval_dataset=None,
        max_length: int | None = None,
        truncation_mode: str = "keep_end",
        preprocess_logits_for_metrics=None,
        compute_metrics=None,
        optimize_device_cache: bool = False,
        *,
        processing_class=None,
        peft_config=None,
        callbacks=None,
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
        args, settings = resolve_settings(args, max_length, truncation_mode, optimize_device_cache)
        if model is None:
            raise ValueError("`model` is required: a PreTrainedModel, or a hub id or local path to load.")
        model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
        init_kwargs = getattr(args, "model_init_kwargs", None)
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

        self.is_encoder_decoder = is_encoder_decoder(model)
        self.max_length = settings["max_length"]
        self.truncation_mode = settings["truncation_mode"]
        self.optimize_device_cache = settings["optimize_device_cache"]
        self.shuffle_samples = settings["shuffle_samples"]
        self.batching = settings["batching"]
        words = text_tokenizer(tokenizer)
        self.encoder = SampleEncoder(words, self.is_encoder_decoder, settings["add_eos_token"])
        self.pad_token_id = choose_pad_token_id(words, model)
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.rows_collator = ExampleCollator(self.pad_token_id, self.is_encoder_decoder)
        if eval_dataset is not None:
            eval_dataset = tokenize_eval_dataset(eval_dataset, self.encoder, self._finish_examples)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator or self.rows_collator,
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
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.ranks.world_size == 1:
            raise ValueError(
                f"Launched as {launched} processes, but this trainer runs as one: each would train its own copy. "
                "On CPU pass `use_cpu=True` in the config (or launch with `accelerate launch --cpu`)."
            )
        self._prepare_optimization()

    # ---- set-up -------------------------------------------------------------------------------

    def _prepare_optimization(self) -> None:
        """Create the optimizer and LR schedule now (so `trainer.optimizer` exists) and prepare them.

        With `max_steps` set the configured schedule runs over that horizon; unset, the LR is constant
        after warmup (TRL 0.23 decayed to zero over a zero-length horizon, so nothing trained).
        """
        args = self.args
        horizon = args.max_steps if args.max_steps > 0 else None
        for name in ("logging_steps", "eval_steps", "save_steps", "warmup_steps"):
            value = getattr(args, name, None)
            if horizon is None and value is not None and 0 < value < 1:
                raise ValueError(f"`{name}`={value} is a fraction of the training horizon, but `max_steps` is "
                                 "not set. Give a whole number of updates or set `max_steps`.")
        self.state.max_steps = horizon or NO_HORIZON
        self.state.compute_steps(args, self.state.max_steps)
        self.state.train_batch_size = args.per_device_train_batch_size
        self._prepare_engine()
        if self.lr_scheduler is None:
            self._create_schedule()
        for name in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, name, getattr(self, name))

    def _prepare_engine(self) -> None:
        """Create the optimizer and hand model and optimizer to accelerate's engine (DDP, FSDP2, DeepSpeed)."""
        args = self.args
        if self.is_fsdp_enabled and not self.accelerator.is_fsdp2:
            raise ValueError("FSDP1 is not supported: use FSDP2, with `fsdp_version: 2` in the accelerate config file "
                             "or `fsdp_config={'version': 2}` in the training arguments (transformers' default).")
        if self.is_deepspeed_enabled:
            finalize_deepspeed_config(self.accelerator, args, self.model)
        if self.optimizer is None:
            self.create_optimizer()
        self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.is_deepspeed_enabled:
            self.deepspeed = self.model_wrapped  # the engine; transformers' saving code reads it here
        if self.is_fsdp_enabled:  # the sharded module is the model from now on (saving and loading expect it)
            self.model = self.model_wrapped
            # `generate` reads parameters outside `forward`: let FSDP gather them for it too (needed with LoRA).
            torch.distributed.fsdp.register_fsdp_forward_method(self.model, "generate")

    def _create_schedule(self) -> None:
        args = self.args
        if args.max_steps > 0:
            self.create_scheduler(num_training_steps=args.max_steps, optimizer=self.optimizer)
            return
        if args.lr_scheduler_type not in ("linear", "constant", "constant_with_warmup"):
            logger.warning("`lr_scheduler_type`=%s needs a horizon: set `max_steps`. Using a constant LR after "
                           "warmup.", args.lr_scheduler_type)
        self.lr_scheduler = get_scheduler("constant_with_warmup", self.optimizer,
                                          num_warmup_steps=int(args.warmup_steps))

    @property
    def shards_parameters(self) -> bool:
        """Whether each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3), so that every
        forward pass is a collective: code that runs the model outside `step()` (sampling, say) must keep
        the ranks in step."""
        return self.is_fsdp_enabled or zero_stage(self.accelerator) == 3

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and restart the LR schedule (warmup included).

        For loops that start each round with a fresh optimizer, a common choice when the data
        distribution shifts between rounds. `global_step` keeps counting.
        """
        self.optimizer.state.clear()
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", group["lr"])
        self.lr_scheduler = None
        self._create_schedule()
        self.callback_handler.lr_scheduler = self.lr_scheduler

    def train(self, *args, **kwargs):
        """Not supported: an iterative trainer receives its data through `step()`."""
        raise NotImplementedError(
            "IterativeSFTTrainer trains through step(): call `trainer.step(texts=...)` (or input_ids=, "
            "prompts=/completions=, messages=) from your loop, or use `itersft.loop.ExpertIteration`."
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
        (mean pre-clip norm), `updates`, `skipped_updates` (non-finite loss or gradient),
        `samples`, `skipped_samples` (no label token), `trained_tokens`, `total_tokens` (real
        tokens processed), `padded_tokens` (including padding), `step_time`, `tokens_per_second`,
        `global_step`.
        """
        stats = StepStats()
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "texts": texts,
                 "texts_labels": texts_labels, "prompts": prompts, "completions": completions,
                 "messages": messages}
        examples = self._finish_examples(step_examples(given, self.encoder, self.vocab_size,
                                                        allow_empty=self.ranks.is_distributed))
        trainable = [e for e in examples if e.num_loss_tokens(shifted=not self.is_encoder_decoder) > 0]
        stats.samples, stats.skipped_samples = len(trainable), len(examples) - len(trainable)
        if stats.skipped_samples:
            logger.warning("step(): skipped %d of %d samples with no label token left to learn (all -100, "
                           "or truncated away).", stats.skipped_samples, len(examples))
        if self.shuffle_samples:
            trainable = shuffled(trainable, self.args.seed, self.state.global_step)
        if not self._callbacks_started:
            self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
            self._callbacks_started = True
        self.model_wrapped.train()
        pending = {"should_log": False, "should_evaluate": False, "should_save": False}
        for window, window_tokens in self._windows(trainable):
            self._update(window, window_tokens, stats)
            for flag in pending:
                pending[flag] = pending[flag] or getattr(self.control, flag)
        stats.samples, stats.skipped_samples, stats.real_tokens, stats.padded_tokens = (int(v) for v in self.ranks.sum(
            [stats.samples, stats.skipped_samples, stats.real_tokens, stats.padded_tokens], self.args.device))
        self.state.num_input_tokens_seen += stats.real_tokens
        result = stats.as_dict(self.state.global_step)
        self._log_evaluate_save(result, pending)
        if self.optimize_device_cache:
            clear_device_cache(garbage_collection=True)
        return result

    def _finish_examples(self, examples: list[Example]) -> list[Example]:
        """Truncate every example along the sequence axis to `max_length`."""
        return [truncate_example(e, self.max_length, self.truncation_mode, self.is_encoder_decoder)
                for e in examples]

    def _windows(self, examples: list[Example]) -> list[tuple[list[list[Example]], int]]:
        """Accumulation windows of this rank's examples, each with its label-token count over all ranks.

        Ranks agree on the number of micro-batches before any collective (a rank with fewer samples
        runs empty micro-batches), and every window's token count is summed over ranks in one
        all-reduce: each rank then divides its summed loss by the same global count, so every token
        of every rank weighs the same however the samples are spread.
        """
        args, shift = self.args, not self.is_encoder_decoder
        num_micro_batches = self.ranks.max(count_micro_batches(len(examples), args.per_device_train_batch_size),
                                           args.device)
        windows = accumulation_windows(examples, args.per_device_train_batch_size, args.gradient_accumulation_steps,
                                       num_micro_batches)
        local = [sum(e.num_loss_tokens(shift) for batch in window for e in batch) for window in windows]
        return list(zip(windows, (int(tokens) for tokens in self.ranks.sum(local, args.device))))

    def _update(self, window: list[list[Example]], window_tokens: int, stats: StepStats) -> None:
        """Forward/backward every micro-batch of one window, then take (or skip) one optimizer update.

        `window_tokens` counts the window's label tokens over all ranks. The backward pass scales each
        rank's summed loss by world size / `window_tokens` because data parallelism averages gradients
        over ranks: the result is the gradient of the mean over every token of the window.
        """
        model = self.model_wrapped
        shift = not self.is_encoder_decoder
        scale = self.ranks.world_size / window_tokens
        # The window's loss is a mean over all its label tokens, so regrouping its samples by length (less
        # padding) or packing them (none) leaves the update unchanged; `batching="padded"` does neither.
        batching = self.batching
        if batching != "padded":
            window = by_length(window, (lambda e: len(e.input_ids)) if shift else
                               (lambda e: (len(e.input_ids), len(e.labels))))
        packable = batching in ("packed", "auto") and shift and supports_packing(self.model)
        self.control = self.callback_handler.on_step_begin(self.args, self.state, self.control)
        loss_sum = torch.zeros((), device=self.args.device)
        for index, batch_examples in enumerate(window):
            last = index == len(window) - 1
            if not batch_examples:  # this rank ran out of samples: take part in the gradient sync, weightless
                with self._accumulating(model, last):
                    self._backward(self._weightless_loss(model))
                continue
            packed = packable and (batching == "packed" or packing_pays([len(e.input_ids) for e in batch_examples],
                                                                         self.model))
            batch = self._device_batch(batch_examples, packed)
            stats.real_tokens += sum(e.num_real_tokens(self.is_encoder_decoder) for e in batch_examples)
            stats.padded_tokens += batch["input_ids"].numel() + (batch["labels"].numel() if not shift else 0)
            with self._accumulating(model, last), self.compute_loss_context_manager():
                loss = self._summed_loss(model, batch)
                self._backward(loss * scale)
            loss_sum += loss.detach()
            if not last:
                self.control = self.callback_handler.on_substep_end(self.args, self.state, self.control)
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm and self.args.max_grad_norm > 0 else float("inf")
        grad_norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        grad_norm = grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else torch.as_tensor(grad_norm)
        if self.ranks.is_distributed:
            loss_sum = self.accelerator.reduce(loss_sum, reduction="sum")
        loss_value, norm_value = torch.stack([loss_sum.float(), grad_norm.float().to(loss_sum.device)]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            if not self.is_deepspeed_enabled:  # DeepSpeed skipped the step itself and cleared the gradients
                model.zero_grad(set_to_none=True)
            stats.skipped_updates += 1
            logger.warning("step(): skipped an optimizer update: non-finite %s (loss sum %s, grad norm %s). "
                           "The weights were not changed.", "loss" if not math.isfinite(loss_value)
                           else "gradient", loss_value, norm_value)
            return
        self.control = self.callback_handler.on_pre_optimizer_step(self.args, self.state, self.control)
        if not self.is_deepspeed_enabled:  # DeepSpeed's engine clipped, stepped and cleared in the last backward
            self.optimizer.step()
            model.zero_grad(set_to_none=True)
        self.control = self.callback_handler.on_optimizer_step(self.args, self.state, self.control)
        learning_rate = self._get_learning_rate()
        self.lr_scheduler.step()
        self.state.global_step += 1
        stats.record_update(loss_value, window_tokens, norm_value, learning_rate)
        self.control = self.callback_handler.on_step_end(self.args, self.state, self.control)
        if self.state.global_step == self.args.max_steps + 1:
            logger.warning("global_step passed `max_steps`=%d: the LR schedule's horizon is over.", self.args.max_steps)

    def _accumulating(self, model, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward and backward: gradients are reduced over ranks on the
        window's last micro-batch only. DeepSpeed reads the same flag to take its step at that boundary."""
        if self.is_deepspeed_enabled:
            self.accelerator.sync_gradients = last
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.accelerator.no_sync(model)

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward of an already normalised loss (DeepSpeed must not divide it by its accumulation steps:
        a window may be shorter, and its normalisation is the window's token count)."""
        if self.is_deepspeed_enabled:
            self.accelerator.backward(loss, scale_wrt_gas=False)
        else:
            self.accelerator.backward(loss)

    def _device_batch(self, examples: list[Example], packed: bool) -> dict[str, torch.Tensor]:
        """Collate on the host and move the tensors to the device; causal label positions are found on the
        host, so the device never has to report a count back (a packed row's `packed_lengths` stay there)."""
        host = collate(examples, self.pad_token_id, self.is_encoder_decoder, packed)
        if not self.is_encoder_decoder:
            host["loss_positions"], host["loss_targets"] = label_positions(host["labels"])
        return {k: v.to(self.args.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in host.items()}

    def _weightless_loss(self, model) -> torch.Tensor:
        """A zero loss from a real forward pass through the (possibly DDP-wrapped) model.

        A rank with no samples left in a window still runs forward and backward, so the collective
        gradient reduction of the other ranks does not wait for it forever; its gradient is zero.
        """
        dummy = Example(torch.full((2,), self.pad_token_id), torch.ones(2, dtype=torch.long),
                        torch.full((2,), self.pad_token_id))
        batch = self._device_batch([dummy], packed=False)
        with self.compute_loss_context_manager():
            return self._summed_loss(model, batch) * 0.0

    def _summed_loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed token loss of one micro-batch (the caller divides by the window's token count)."""
        if not self.is_encoder_decoder:
            return causal_summed_loss(self.model, model, batch, self.accelerator.autocast)
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        if hasattr(base, "prepare_decoder_input_ids_from_labels"):
            decoder = {"decoder_input_ids": base.prepare_decoder_input_ids_from_labels(labels=batch["labels"])}
        else:  # the model shifts the labels itself; its own loss is ignored
            decoder = {"labels": batch["labels"]}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                       **decoder).logits
        return summed_token_loss(logits, batch["labels"], shift=False)

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
        """`Trainer.evaluation_loop` for predictions and `compute_metrics`; the loss is the token mean.

        transformers averages per-batch mean losses, so its `eval_loss` moves with the eval batch size
        and the number of processes. Here `{prefix}_loss` is the mean over every label token of the
        dataset, as `step()` defines its loss: the same for any batch size and any number of ranks.
        """
        dataset = dataloader.dataset
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"evaluate() needs a map-style dataset (a `datasets.Dataset` or a list of rows), got "
                            f"{type(dataset).__name__}.")
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        output.metrics[f"{metric_key_prefix}_loss"] = self._token_mean_loss(dataset)
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Predictions only: `evaluation_loop` computes the loss itself, over the whole dataset."""
        if prediction_loss_only:
            return None, None, None
        _, logits, labels = super().prediction_step(model, inputs, False, ignore_keys=ignore_keys)
        return None, logits, labels

    def _token_mean_loss(self, dataset) -> float:
        """Mean token loss over all label tokens of `dataset`'s rows, each row counted once.

        Each rank takes a contiguous share of the rows (accelerate's evaluation loader would repeat rows
        to even out the shares), sums its token losses, and one all-reduce adds sums and counts. Where
        the weights are sharded, ranks with fewer batches run weightless forward passes alongside.
        """
        _, indices = self.ranks.block(list(range(len(dataset))))
        examples = self.rows_collator.examples([dataset[i] for i in indices])
        shift = not self.is_encoder_decoder
        batch_size = self.args.per_device_eval_batch_size
        # Longest first: rows of similar length share a batch and pad little (the token mean does not care).
        examples.sort(key=(lambda e: len(e.input_ids)) if shift else (lambda e: (len(e.input_ids), len(e.labels))),
                      reverse=True)
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        if self.shards_parameters:
            batches += [[]] * (self.ranks.max(len(batches), self.args.device) - len(batches))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.args.device)
        self.model.eval()
        with torch.no_grad(), self.compute_loss_context_manager():
            for batch in batches:
                if batch:
                    loss_sum += self._summed_loss(self.model, self._device_batch(batch, packed=False)).double()
                else:
                    self._weightless_loss(self.model)
        tokens = sum(e.num_loss_tokens(shift) for e in examples)
        total, count = self.ranks.sum([loss_sum.item(), tokens], self.args.device)
        return total / count if count else math.nan

    # ---- checkpoints --------------------------------------------------------------------------

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-<global_step>` atomically and rotate old ones (`save_total_limit`)."""
        run_dir = self._get_output_dir(trial=trial)
        self.save_checkpoint(os.path.join(run_dir, f"checkpoint-{self.state.global_step}"))
        if self.args.should_save:
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (or adapters) so that `from_pretrained(output_dir)` loads it.

        Under FSDP with `SHARDED_STATE_DICT`, transformers writes no weights here (checkpoints carry the
        shards instead); for a call from user code (a final save, say) the full state dict is gathered
        and written. Every process must call it.
        """
        super().save_model(output_dir, _internal_call=_internal_call)
        if (self.is_fsdp_enabled and not _internal_call
                and "FULL_STATE_DICT" not in str(self.accelerator.state.fsdp_plugin.state_dict_type)):
            self._save(output_dir or self.args.output_dir, state_dict=self.accelerator.get_state_dict(self.model))

    def save_checkpoint(self, directory: str | os.PathLike, extra: Callable[[Path], None] | None = None) -> None:
        """Write a full checkpoint to `directory`, atomically.

        Holds the model (or adapters), optimizer, scheduler, RNG states and trainer state: everything
        `resume_from_checkpoint` needs. `extra(staging_dir)` may add files (the loop adds its own state)
        before the folder is renamed into place. Every process must call it.
        """
        with atomic_directory(directory, self.args.should_save, self.accelerator.wait_for_everyone) as staging:
            self.store_flos()
            self.save_model(str(staging), _internal_call=True)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(str(staging))
                self._save_scaler(str(staging))
                self._save_rng_state(str(staging))
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
                if extra is not None:
                    extra(staging)

    def resume_from_checkpoint(self, checkpoint: str | bool = True) -> str | None:
        """Restore model, optimizer, scheduler, RNG and trainer state from a checkpoint folder.

        `True` picks the latest `checkpoint-*` in `args.output_dir` and returns None when there is none
        (a fresh start); a path must exist. Returns the folder resumed from.
        """
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
            if checkpoint is None:
                return None
        if not os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME)):
            raise ValueError(f"`checkpoint`={checkpoint!r} is not a checkpoint folder (no {TRAINER_STATE_NAME}).")
        if self.is_deepspeed_enabled:  # the engine restores weights and optimizer shards from `global_step*/`
            # With adapters, the engine's checkpoint holds the trainable (adapter) weights only.
            adapters = getattr(self.model, "active_peft_config", None) is not None
            deepspeed_load_checkpoint(self.model_wrapped, checkpoint, load_module_strict=not adapters)
        else:
            self._load_from_checkpoint(checkpoint)
        self._load_optimizer_and_scheduler(checkpoint)
        self._load_scaler(checkpoint)
        state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
        state.is_local_process_zero = self.is_local_process_zero()
        state.is_world_process_zero = self.is_world_process_zero()
        self.state = state
        self._load_callback_state()
        self._load_rng_state(checkpoint)
        return checkpoint

    def end(self) -> None:
        """Close the run: fire `on_train_end` (flushes TensorBoard and other trackers), end trackers."""
        if self._callbacks_started:
            self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        super().end()

