"""Run-time helpers shared by hf_prune's scripts: logging set-up and the output-folder check."""

from __future__ import annotations

import logging
import os
import sys

import datasets
import transformers
from transformers import TrainingArguments


def check_output_dir(training_args: TrainingArguments, overwrite: bool = False) -> None:
    """Refuse to write over a non-empty output folder unless asked to (or resuming a run in it)."""
    folder = training_args.output_dir
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite and not training_args.resume_from_checkpoint:
        raise ValueError(
            f"Output directory {folder!r} already exists and is not empty. Pass --overwrite_output_dir to write over "
            "it, or choose another --output_dir."
        )


def setup_logging(training_args: TrainingArguments) -> None:
    """transformers-style logging: hf_prune logs at INFO on the main process (or at --log_level); transformers and
    datasets at their own level unless --log_level is given."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    library_level = training_args.get_process_log_level()
    own_level = library_level if training_args.log_level != "passive" or not training_args.should_log else logging.INFO
    for name in ("hf_prune", "__main__"):  # `python -m hf_prune.scripts...` logs as __main__
        logging.getLogger(name).setLevel(own_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
