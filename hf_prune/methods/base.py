"""The plug-in interface every pruning method implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..constants import HEADS, NEURONS
from ..gates import UnitGate
from ..reconstruction import Reconstruction
from ..selection import select_to_sparsity


if TYPE_CHECKING:
    from ..configs import PruningConfig, TargetConfig
    from ..mapping import PruningState


@dataclass(frozen=True)
class StepContext:
    """What a method sees of the training run at one training micro-batch (instead of the `Trainer`).

    Args:
        global_step (`int`): optimizer steps done so far; max_steps (`int`): optimizer steps planned.
        seed (`int`): the run's seed; process_index (`int`): this process's rank.
        compute_loss (`Callable`): `(model, inputs) -> (loss, outputs)`, the run's own loss on a raw training batch
            (moved to the device, under the run's autocast). For extra passes, call it under `torch.no_grad()` in eval
            mode.
        evaluator (`MaskEvaluator`, *optional*): the evaluation metric under other keep-masks, for methods that
            search over sparsity; `None` when the run has no evaluation split.
    """

    global_step: int
    max_steps: int
    seed: int
    process_index: int
    compute_loss: Callable[[nn.Module, dict[str, Any]], tuple[torch.Tensor, Any]]
    evaluator: Any = None  # a `hf_prune.methods.search.MaskEvaluator`


class PruningMethod:
    """A pruning method: its gate, optional loss term, optional per-step work, periodic decisions and final rule.

    Nothing outside a method's own module names the method. The trainer and callbacks call these hooks:

    * `create_gate` when the model is prepared (one gate per layer and unit kind);
    * `on_train_begin` with the run's step counts;
    * `loss` once per optimizer step, added to the task loss (e.g. a KL term);
    * `after_backward` after every training micro-batch, with a `StepContext` (e.g. extra probe passes, gradient
      statistics);
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

    def check_model(self, model: nn.Module) -> None:
        """Raise `ValueError` if the method cannot prune `model`; called before any gate is installed."""

    def attach(self, model: nn.Module, state: PruningState) -> None:
        """Called once the gates are installed."""
        self.model, self.state = model, state

    def create_gate(self, kind: str, layer: int, num_units: int) -> UnitGate:
        """The gate for `num_units` units of `kind` (`"heads"` or `"neurons"`) in block `layer`."""
        return UnitGate(num_units)

    def loss(self, num_likelihood_terms: float | None) -> torch.Tensor | None:
        """Extra loss term for one optimizer step, or `None`. `num_likelihood_terms` is the training set's size in
        the terms the task loss averages over: examples, or label tokens for token-level heads such as causal LMs
        (`None` for a dataset without a length)."""
        return None

    def on_train_begin(self, max_steps: int, steps_per_epoch: int) -> None:
        """Called when training starts, with the step counts of this run (from `TrainerState`)."""

    def gate_learning_rate(self, max_steps: int) -> float | None:
        """The method's recommended learning rate for its gate parameters in a run of `max_steps`, if any."""
        return None

    def observe_training_loss(self, loss: torch.Tensor) -> None:
        """Per micro-batch hook, run before the backward pass when the loss trained is more than the model's own
        (the task loss mixed with a distillation KL): methods that read loss gradients take them for this loss."""

    def after_backward(self, step: StepContext, model: nn.Module, inputs: dict[str, Any]) -> None:
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

    def process_state(self) -> dict[str, Any] | None:
        """State this process holds outside the model (not reduced across processes yet), saved in each checkpoint
        per process and handed back to `load_process_state` on resume; `None` when there is none."""
        return None

    def load_process_state(self, state: dict[str, Any]) -> None:
        """Restore what `process_state` returned."""


class TargetMethod(PruningMethod):
    """A method that ranks units and prunes to `target_sparsity` on the config's schedule.

    A subclass supplies `scores` (or overrides `select`). With the `"cubic"` and `"one_shot"` schedules the masks
    tighten at the scheduled optimizer steps, inside training; with `"final"` the whole target is taken at finalize.
    """

    config: TargetConfig
    reconstruction: Reconstruction | None = None
    _refitted_final = False

    def attach(self, model: nn.Module, state: PruningState) -> None:
        super().attach(model, state)
        if self.config.reconstruct:
            self.reconstruction = Reconstruction(model, state, damping=self.config.reconstruct_damping)

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer: a score per unit; lower scores are pruned first."""
        raise NotImplementedError

    def select(self, sparsity: float) -> dict[str, list[torch.Tensor | None]]:
        """Keep-masks removing `sparsity` of the prunable parameters, the units masked so far included, with the
        config's guard rails."""
        return select_to_sparsity(self.model, self.state, self.scores(), sparsity)

    def scheduled_sparsity(self, step: int, max_steps: int) -> float | None:
        """The sparsity the schedule asks for after optimizer step `step`, or `None` when no event is due then."""
        config = self.config
        if config.schedule == "final" or max_steps <= 0:
            return None
        end = max(1, round(config.prune_end * max_steps))
        if config.schedule == "one_shot":
            return config.target_sparsity if step == end else None
        start = min(round(config.prune_start * max_steps), end - 1)
        interval = config.prune_interval or max(1, (end - start) // 10)
        if step <= start or step > end or ((step - start) % interval and step != end):
            return None
        progress = (step - start) / (end - start)
        return config.target_sparsity * (1.0 - (1.0 - progress) ** 3)

    def collection_steps(self, max_steps: int) -> tuple[int, int]:
        """With `reconstruct`: the inputs of the micro-batches of optimizer steps `first + 1 ... last` are collected
        (from `prune_start` to the last event for `"cubic"`; for `"one_shot"` and `"final"` the `prune_interval` steps
        before the event, by default the last tenth of the steps before it)."""
        config = self.config
        end = max(1, round(config.prune_end * max_steps))
        if config.schedule == "cubic":
            return min(round(config.prune_start * max_steps), end - 1), end
        last = max_steps if config.schedule == "final" else end
        return max(0, last - (config.prune_interval or max(1, max_steps // 10))), last

    def on_train_begin(self, max_steps: int, steps_per_epoch: int) -> None:
        super().on_train_begin(max_steps, steps_per_epoch)
        self._collect_after(0, max_steps)

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        sparsity = self.scheduled_sparsity(global_step, max_steps)
        if sparsity is not None:
            self.apply_masks(self.select(sparsity))
        self._collect_after(global_step, max_steps)

    def _collect_after(self, global_step: int, max_steps: int) -> None:
        # the statistics cost a d_in x d_in product per micro-batch: only the steps that an event will use
        if self.reconstruction is not None:
            first, last = self.collection_steps(max_steps)
            self.reconstruction.collecting = first <= global_step < last

    @torch.no_grad()
    def apply_masks(self, masks: dict[str, list[torch.Tensor | None]]) -> None:
        """Tighten the gates' keep-masks (a unit removed once stays removed); with `reconstruct`, refit the kept
        weights of the projections that lost units."""
        before = {
            kind: [None if m is None else m.clone() for m in self.state.masks(kind)] for kind in (HEADS, NEURONS)
        }
        for kind in (HEADS, NEURONS):
            for gate, keep in zip(self.state.gates(kind), masks[kind]):
                if gate is not None and keep is not None:
                    gate.mask &= keep.to(gate.mask.device)
        if self.reconstruction is not None:
            self.reconstruction.update(before, {kind: self.state.masks(kind) for kind in (HEADS, NEURONS)})

    def keep_masks(self) -> dict[str, list[torch.Tensor | None]]:
        """The target, reached from the masks the schedule has set so far (all of it for `"final"`, refitting the
        kept weights first with `reconstruct`)."""
        return self.refit_final(self.select(self.config.target_sparsity))

    def refit_final(self, masks: dict[str, list[torch.Tensor | None]]) -> dict[str, list[torch.Tensor | None]]:
        """With `reconstruct` and the `"final"` schedule, apply the final `masks` now, refitting the kept weights of
        the projections that lose units; returns `masks`. (The other schedules refit at their events.)"""
        if self.reconstruction is not None and self.config.schedule == "final" and not self._refitted_final:
            self.apply_masks(masks)
            self._refitted_final = True  # once: the rule may be asked again
        return masks

    def process_state(self) -> dict[str, Any] | None:
        return None if self.reconstruction is None else {"reconstruction": self.reconstruction.state_dict()}

    def load_process_state(self, state: dict[str, Any]) -> None:
        if self.reconstruction is not None and "reconstruction" in state:
            self.reconstruction.load_state_dict(state["reconstruction"])
