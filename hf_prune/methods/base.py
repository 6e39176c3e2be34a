"""The plug-in interface every pruning method implements."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..gates import HEADS, NEURONS, UnitGate
from ..selection import select_to_sparsity


if TYPE_CHECKING:
    from ..configs import OneShotConfig, PruningConfig
    from ..gates import PruningState


class PruningMethod:
    """A pruning method: its gate, optional loss term, optional per-step work, periodic decisions and final rule.

    Nothing outside a method's own module names the method. The trainer and callbacks call these hooks:

    * `create_gate` when the model is prepared (one gate per layer and unit kind);
    * `on_train_begin` with the run's step counts;
    * `loss` once per optimizer step, added to the task loss (e.g. a KL term);
    * `after_backward` after every training micro-batch (e.g. extra probe passes, gradient statistics);
    * `on_optimizer_step` after every optimizer step, with the step counts from `TrainerState` (periodic decisions);
    * `keep_masks` at finalize time: the final keep/prune rule;
    * `metrics` whenever the trainer logs.

    State that must survive a checkpoint belongs in gate parameters or buffers.
    """

    config_class: ClassVar[type[PruningConfig]]
    title: ClassVar[str | None] = None  # display name for model cards, e.g. "BMRS (Bayesian model reduction)"
    paper: ClassVar[str | None] = None  # reference shown in model cards
    citation: ClassVar[str | None] = None  # BibTeX

    def __init__(self, config: PruningConfig):
        self.config = config
        self.model: nn.Module | None = None
        self.state: PruningState | None = None

    def attach(self, model: nn.Module, state: PruningState) -> None:
        """Called once the gates are installed."""
        self.model, self.state = model, state

    def create_gate(self, kind: str, layer: int, num_units: int) -> UnitGate:
        """The gate for `num_units` units of `kind` (`"heads"` or `"neurons"`) in block `layer`."""
        return UnitGate(num_units)

    def loss(self, num_training_examples: int | None) -> torch.Tensor | None:
        """Extra loss term for one optimizer step, or `None`."""
        return None

    def on_train_begin(self, max_steps: int, steps_per_epoch: int) -> None:
        """Called when training starts, with the step counts of this run (from `TrainerState`)."""

    def gate_learning_rate(self, max_steps: int) -> float | None:
        """The method's recommended learning rate for its gate parameters in a run of `max_steps`, if any."""
        return None

    def after_backward(self, trainer, model: nn.Module, inputs: dict[str, Any]) -> None:
        """Per micro-batch hook, run after the backward pass (gradients of the gates are available)."""

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        """Periodic decisions (update gate masks)."""

    def keep_masks(self) -> dict[str, list[torch.Tensor | None]]:
        """The final rule: per kind, per layer, a boolean tensor of the units to keep. Defaults to the current masks."""
        return {
            kind: [m.clone() if m is not None else None for m in self.state.masks(kind)] for kind in (HEADS, NEURONS)
        }

    def metrics(self) -> dict[str, float]:
        """Method-specific metrics, logged as `pruning/<name>`."""
        return {}


class OneShotMethod(PruningMethod):
    """A method that scores units and prunes once, to `target_sparsity`, by a global ranking."""

    config: OneShotConfig

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer: a score per unit; lower scores are pruned first."""
        raise NotImplementedError

    def keep_masks(self) -> dict[str, list[torch.Tensor | None]]:
        return select_to_sparsity(self.model, self.state, self.scores(), self.config.target_sparsity)
