"""`BingoMethod`: probes during training (from `after_backward`), scores and the one-shot decision after it."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import distributed as dist
from torch import nn

from ...constants import HEADS, NEURONS
from ...distributed import reshard, world_size
from ...gates import UnitGate
from ...selection import select_to_sparsity, unit_costs_by_layer
from ..base import StepContext, TargetMethod
from ..gradients import GateGradients, GradientGate
from ..search import SearchResult, preserved_modes, search_max_prune
from .config import BingoConfig
from .estimators import Estimate, Estimator, build_estimator
from .probes import (
    InitialWeights,
    UnitLayout,
    draw_subset,
    probe_loss,
    probe_seed,
    relative_change,
    switched_off,
)


if TYPE_CHECKING:
    from ...mapping import PruningState


logger = logging.getLogger(__name__)

STATISTICS_NAME = "bingo"  # child of the first gate: `...hf_prune_gate.bingo.*` in the state dict


class BingoStatistics(nn.Module):
    """The probe statistics as buffers (so checkpoints carry them): the estimator's sums and a few counters."""

    def __init__(self, estimator: Estimator):
        super().__init__()
        self.estimator = estimator
        for name in ("probes", "signal_sum", "skipped"):
            self.register_buffer(name, torch.zeros(()))

    @torch.no_grad()
    def observe(self, ablated: torch.Tensor, y: float, weight: float, prior: torch.Tensor | None) -> None:
        if not math.isfinite(y):
            self.skipped += 1
            return
        self.estimator.update(ablated, y, weight, prior)
        self.probes += 1
        self.signal_sum += y


class BingoMethod(TargetMethod):
    """See `BingoConfig`. Works with `PruningTrainer`, which calls `after_backward` after every training backward."""

    config: BingoConfig
    title = "BINGO (random-subset significance probes during training, pruning on the target schedule)"
    paper = "Panangat (2025), BINGO: A Novel Pruning Mechanism to Reduce the Size of Neural Networks, arXiv:2505.09864"
    citation = """@article{panangat2025bingo,
  title = {BINGO: A Novel Pruning Mechanism to Reduce the Size of Neural Networks},
  author = {Panangat, Aditya},
  journal = {arXiv preprint arXiv:2505.09864},
  year = {2025}
}"""

    def __init__(self, config: BingoConfig):
        super().__init__(config)
        self._evaluator = None  # the run's evaluation under other masks, from the last step context
        self._last_probe_step: int | None = None
        self.probe_seconds = 0.0
        self.search_result: SearchResult | None = None
        self._warned_prior = False

    # -- set-up ------------------------------------------------------------------------------------------------------
    def create_gate(self, kind: str, layer: int, num_units: int) -> UnitGate:
        return GradientGate(num_units)

    def attach(self, model: nn.Module, state: PruningState) -> None:
        super().attach(model, state)
        config = self.config
        self.layout = UnitLayout(state)
        self.gradients = GateGradients(model, state)
        estimator = build_estimator(
            config.estimator,
            self.layout.per_kind({HEADS: config.p_head, NEURONS: config.p_neuron}),
            self.layout.groups(config.shrinkage),
            ridge_columns=self.layout.kind_mask(HEADS),
            ema_decay=config.ema_decay,
            ridge_alpha=config.ridge_alpha,
            shrink=config.shrinkage != "none",
        )
        self.statistics = BingoStatistics(estimator)
        anchor = self.layout.entries[0].gate
        self.statistics.to(anchor.mask.device)
        anchor.add_module(STATISTICS_NAME, self.statistics)
        self._p = self.layout.per_kind({HEADS: config.p_head, NEURONS: config.p_neuron})
        self.initial_weights = InitialWeights(model, state) if config.perturbation == "reset" else None

    @property
    def uses_prior(self) -> bool:
        """The gate-gradient prior predicts zero-ablation, so it is only collected for `perturbation="zero"`."""
        return self.config.perturbation == "zero"

    # -- during training ---------------------------------------------------------------------------------------------
    def observe_training_loss(self, loss: torch.Tensor) -> None:
        self.gradients.track_loss(loss)

    def after_backward(self, context: StepContext, model: nn.Module, inputs: dict[str, Any]) -> None:
        self._evaluator = context.evaluator
        step, max_steps = context.global_step, context.max_steps
        start = math.ceil(self.config.probe_start * max_steps)
        in_window = max_steps > 0 and start <= step < max_steps
        weight = self._time_weight(step, max_steps) if in_window else 0.0
        self.gradients.record(abs_weight=weight, rel_weight=weight if self.uses_prior else 0.0)
        # probe on the first micro-batch of every `probe_interval`-th optimizer step of the window
        if in_window and (step - start) % self.config.probe_interval == 0 and step != self._last_probe_step:
            self._last_probe_step = step
            self.probe(context, inputs, step, weight)

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        self.gradients.flush()
        super().on_optimizer_step(global_step, max_steps)

    def _time_weight(self, step: int, max_steps: int) -> float:
        return (step + 1) / max_steps if self.config.time_weighting == "linear" else 1.0

    @torch.no_grad()
    def probe(self, context: StepContext, inputs: dict[str, Any], step: int, weight: float = 1.0) -> None:
        """Run one probe on `inputs` (a training micro-batch) and add it to the statistics of every process.

        A collective call under DDP: every process probes at the same steps.
        """
        began = time.perf_counter()
        config, model = self.config, self.model
        seed = config.method_seed if config.method_seed is not None else context.seed
        rank = context.process_index
        accuracy = config.signal == "accuracy_abs"
        rows = []
        alive = self.layout.gather(lambda g: g.mask.float()) > 0.5
        with preserved_modes(model):
            model.eval()  # no dropout: the clean and masked passes differ only by the switched-off units
            clean = probe_loss(context.compute_loss, model, inputs, accuracy)
            for index in range(config.masked_passes):
                # only surviving units: one the schedule removed is off in every pass already
                ablated = draw_subset(self._p, probe_seed(seed, rank, step, index)) & alive
                if not bool(ablated.any()):
                    rows.append((ablated, 0.0))  # nothing switched off: the change is exactly 0
                    continue
                with self._switched_off(ablated):
                    masked = probe_loss(context.compute_loss, model, inputs, accuracy)
                rows.append((ablated, relative_change(config.signal, clean, masked)))
        reshard(model)  # under FSDP2: no gathered parameters left to go stale at the optimizer step
        prior = self.prior() if self.uses_prior else None
        if self.uses_prior and not self.gradients.relative_available and not self._warned_prior:
            self._warned_prior = True
            logger.warning(
                "BINGO: the model's own loss is not what the trainer backpropagates (label smoothing or "
                "compute_loss_func?), so there is no gate-gradient prior; the estimates stay unbiased but are noisier."
            )
        for ablated, y, w in self._gather(rows, weight):
            self.statistics.observe(ablated, y, w, prior)
        self.probe_seconds += time.perf_counter() - began

    def _switched_off(self, ablated: torch.Tensor):
        if self.initial_weights is not None:
            return self.initial_weights.reset(self.layout, ablated)
        return switched_off(self.layout, ablated)

    def _gather(
        self, rows: list[tuple[torch.Tensor, float]], weight: float
    ) -> list[tuple[torch.Tensor, float, float]]:
        """Every process's probe rows, in rank order, so all processes apply the same updates."""
        if world_size() == 1:
            return [(ablated, y, weight) for ablated, y in rows]
        device = self.statistics.probes.device
        local = torch.stack([torch.cat([ablated.float(), torch.tensor([y, weight])]) for ablated, y in rows]).to(
            device
        )
        gathered = [torch.empty_like(local) for _ in range(world_size())]
        dist.all_gather(gathered, local)
        return [(row[:-2].cpu() > 0.5, float(row[-2]), float(row[-1])) for part in gathered for row in part]

    # -- scores ------------------------------------------------------------------------------------------------------
    def prior(self, required: bool = False) -> torch.Tensor | None:
        """The gate-gradient prior `b_u` (weighted mean of `-dL/dgate_u / L`) as a flat CPU vector; zeros for units
        without gradients yet, or `None` when `required` and no unit has any."""
        weights = self.layout.gather(lambda g: g.grad_rel_weight.expand(g.num_units))
        if required and not bool((weights > 0).any()):
            return None
        sums = self.layout.gather(lambda g: g.grad_rel_sum)
        if self.config.prior == "second_order":
            sums = sums + self.layout.gather(lambda g: g.grad_curv_sum)
        return torch.where(weights > 0, sums / weights.clamp_min(1e-30), torch.zeros_like(sums))

    def effects(self) -> Estimate:
        """The estimator's per-unit effects and standard errors (flat; see `self.layout` for the order)."""
        return self.statistics.estimator.estimate()

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer: estimated effect (plus `confidence_z` standard errors) per prunable parameter freed.

        Units the estimator has no value for (never probed) fall back to the gate-gradient prior or, without one,
        rank after every measured unit. Raises `ValueError` when nothing at all was measured.
        """
        estimate = self.effects()
        value = estimate.value.clone()
        if self.config.confidence_z:
            value = value + self.config.confidence_z * torch.nan_to_num(estimate.se, nan=0.0)
        missing = ~torch.isfinite(value)
        if bool(missing.any()):
            prior = self.prior(required=True) if self.uses_prior else None
            measured = value[~missing]
            if prior is not None:
                value[missing] = prior.double()[missing]
                fallback = "their gate-gradient prior"
            elif measured.numel():
                value[missing] = measured.max() + measured.abs().max() + 1.0
                fallback = "last"
            else:
                raise ValueError(
                    f"BINGO has no measurement for any unit (probes run: {int(self.statistics.probes)}). Train with "
                    "PruningTrainer for more steps, or lower probe_start / probe_interval."
                )
            logger.warning(
                "BINGO: %d of %d units were never probed; ranking them by %s.",
                int(missing.sum()),
                value.numel(),
                fallback,
            )
        costs = self.layout.per_layer(unit_costs_by_layer(self.model, self.state))
        return self.layout.split((value / costs).float())

    def select(self, sparsity: float, scores: dict[str, list[torch.Tensor | None]] | None = None):
        """Keep-masks removing `sparsity` of the prunable parameters by the global ranking, with the guard rails
        (`min_heads_per_layer`, `min_neurons_per_layer`, `max_layer_neuron_sparsity`, `neuron_multiple`)."""
        config = self.config
        neurons = [g.num_units for g in self.state.gates(NEURONS) if g is not None]
        floor = math.ceil((1.0 - config.max_layer_neuron_sparsity) * max(neurons, default=0) - 1e-9)
        guarded = dataclasses.replace(config, min_neurons_per_layer=max(config.min_neurons_per_layer, floor))
        return select_to_sparsity(
            self.model, self.state, self.scores() if scores is None else scores, sparsity, guarded
        )

    # -- after training ----------------------------------------------------------------------------------------------
    def keep_masks(self) -> dict[str, list[torch.Tensor | None]]:
        config = self.config
        if config.max_metric_drop is None:
            return super().keep_masks()
        scores = self.scores()
        if self._evaluator is None:
            raise ValueError(
                "BingoConfig(max_metric_drop=...) needs the run's evaluation split: train with PruningTrainer and an "
                "`eval_dataset`, finalize after `train()`, or set max_metric_drop=None."
            )
        self.search_result = search_max_prune(
            self._evaluator,
            config.max_metric_drop,
            step=config.search_step,
            max_sparsity=config.search_max_sparsity,
            select=lambda sparsity: self.select(sparsity, scores),
        )
        return self.refit_final(self.search_result.masks)

    def metrics(self) -> dict[str, float]:
        stats = self.statistics
        probes = float(stats.probes)
        result = {"bingo_probes": probes, "bingo_probe_seconds": self.probe_seconds}
        if probes:
            result["bingo_mean_signal"] = float(stats.signal_sum) / probes
        if float(stats.skipped):
            result["bingo_skipped_probes"] = float(stats.skipped)
        return result
