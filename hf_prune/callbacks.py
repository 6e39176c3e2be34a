"""Trainer callbacks: the pruning schedule. Usable with a plain `transformers.Trainer` too."""

from __future__ import annotations

import math

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .distributed import is_fsdp2
from .mapping import get_pruning_state, is_prepared


def _unwrap(model):
    return getattr(model, "module", model)


class PruningScheduleCallback(TrainerCallback):
    """Drives the method's periodic decisions from the Trainer's own step counts.

    After every optimizer step it calls the method's `on_optimizer_step(global_step, max_steps)`; the total number
    of steps is read from `TrainerState`, never from the pruning config. With `finalize_on_train_end=True` it also
    finalizes the model (bakes gates in and removes pruned units) when training ends; `PruningTrainer.finalize()`
    does the same on demand and also resets the optimizer.
    """

    def __init__(self, finalize_on_train_end: bool = False):
        self.finalize_on_train_end = finalize_on_train_end

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ):
        model = _unwrap(model)
        if self.finalize_on_train_end and model is not None and is_fsdp2(model):
            raise ValueError(
                "finalize_on_train_end=True cannot hand the finalized (unsharded) copy of an FSDP2 model back to the "
                "trainer; set it to False and call `trainer.finalize()` after `train()` on every process."
            )
        if model is not None and is_prepared(model):
            epochs = max(1, math.ceil(state.num_train_epochs or 1))
            steps_per_epoch = max(1, math.ceil(state.max_steps / epochs))
            get_pruning_state(model).method.on_train_begin(state.max_steps, steps_per_epoch)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        model = _unwrap(model)
        if model is not None and is_prepared(model):
            get_pruning_state(model).method.on_optimizer_step(state.global_step, state.max_steps)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ):
        model = _unwrap(model)
        if self.finalize_on_train_end and model is not None and is_prepared(model):
            from .finalize import finalize_model

            finalize_model(model)
