"""`itersft run CONFIG`: the loop on your model, prompts and scorer. Rerunning resumes.

A run config names code that this command imports and runs: a scorer or reward function
`module:function` is imported like any module of a Python script, from the working directory first (as
`python -m` would), so run only configs you trust.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from itersft.cli import run_config
from itersft.cli.bad_input import BadInputError, bad_input
from itersft.cli.progress import SamplingBars
from itersft.cli.table import RoundTable


def main(args) -> int:
    from itersft import IterativeSFTTrainer
    from itersft.loop.expert_iteration import ExpertIteration
    from itersft.loop.inputs import check_inputs
    from itersft.loop.run_dir import check_output_dir
    from itersft.loop.run_identity import RunIdentityError
    from itersft.model_sources import load_tokenizer_from, resolve_model_source

    # The installed `itersft` script starts with its own folder on sys.path, not the working directory:
    # put the working directory first, as `python -m itersft.cli.main` does, so `module:function`
    # scorers beside the config import the same way under both.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())

    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun / accelerate launch: rank 0 reports
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s")
    with bad_input():  # everything up to the loop's first round reads or checks what the user gave
        config = run_config.load_config(args.config)
        for key in ("output_dir", "model"):
            if getattr(args, key):
                config[key] = getattr(args, key)
        prompts, meta = run_config.read_prompts("prompts", config["prompts"])
        eval_prompts, eval_meta = (run_config.read_prompts("eval_prompts", config["eval_prompts"],
                                                           held_out_from=prompts)
                                   if config.get("eval_prompts") else (None, None))
        labelled = run_config.read_labelled(config["labelled"]) if config.get("labelled") else None
        sampling = run_config.build_sampling(config)
        training_args = run_config.build_training_args(config)
        loop_config = run_config.build_loop(config)
        if getattr(args, "resume_changed", False):
            loop_config = dataclasses.replace(loop_config, resume_changed=True)
        filters = run_config.build_filter(config)
        if main_process:  # before anything loads: a run that could not save its first checkpoint fails now
            check_output_dir(loop_config.output_dir)
        # Everything that can be checked without the model is checked before it loads: the scorer (or reward
        # functions); the model's name (a path with a typo is named as the user wrote it, `--model` or the
        # config's `model:`, not reported by transformers as a bad hub id once the tokenizer loads); then,
        # with the tokenizer (cheap to load), the loop's own checks of its inputs.
        scorer, reward_funcs = run_config.build_scoring(config)
        model_argument = "--model" if args.model else "model:"
        resolve_model_source(config["model"], training_args.model_init_kwargs, model_argument)
        tokenizer = load_tokenizer_from(config.get("tokenizer") or config["model"],
                                        None if config.get("tokenizer") else training_args.model_init_kwargs,
                                        "tokenizer:" if config.get("tokenizer") else model_argument)
        check_inputs(scorer or reward_funcs, sampling, loop_config, tokenizer, prompts, meta, eval_prompts, eval_meta,
                     labelled)
        trainer = IterativeSFTTrainer(config["model"], training_args, tokenizer=tokenizer,
                                      peft_config=run_config.build_peft(config))
        loop = ExpertIteration(trainer, sampling, scorer, filters, loop_config, labelled=labelled,
                               callbacks=[SamplingBars(), RoundTable(sys.stdout)],
                               sources=run_config.describe_sources(config), reward_funcs=reward_funcs)
    try:
        history = loop.run(prompts, meta, eval_prompts=eval_prompts, eval_meta=eval_meta)
    except RunIdentityError as error:  # a rerun with other settings: the user's to decide
        raise BadInputError(str(error)) from error
    trainer.end()
    if main_process:
        print(f"done: {len(history)} rounds in {loop_config.output_dir} (metrics.jsonl, curves.png, final/)")
    return 0
