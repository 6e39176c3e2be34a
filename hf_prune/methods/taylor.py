"""Taylor importance (Michel, Levy & Neubig, 2019, "Are Sixteen Heads Really Better than One?"): a baseline that
removes the units whose gate gradient is smallest, to a target sparsity on the target schedule.

The gradient of the loss with respect to a unit's gate (a multiplier fixed at 1) is the first-order prediction of
what removing the unit does to the loss. It comes almost for free from the ordinary training backward pass: with
the gate at 1, `dL/dgate_u` is the sum of `input * dL/dinput` over the unit's slice of the gated projection input, and
a tensor hook on that input computes it. Nothing is added to the forward pass, the optimizer or DDP, and no extra
activation is kept (the projection saves its input for its own weight gradient anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..configs import TargetConfig, _require
from ..constants import HEADS, NEURONS
from ..gates import UnitGate
from ..registry import register_method
from ..selection import unit_costs_by_layer
from .base import StepContext, TargetMethod
from .gradients import GateGradients, GradientGate


if TYPE_CHECKING:
    from ..mapping import PruningState


@dataclass
class TaylorConfig(TargetConfig):
    """Prune the units with the smallest gate-gradient importance, on the target schedule.

    A unit's importance is the weighted mean over training micro-batches of `sum_i |dL_i/dgate|` over its examples
    `i` (Michel et al., 2019), with gradients taken for the model's own loss; with `criterion="fisher"` it is the
    second-order estimate of the relative loss increase of removing the unit, `½ mean_i (dL_i/dgate)² / L` (the
    empirical Fisher of the gate, as in Kwon et al., 2022), which, unlike the first-order term, does not cancel once
    the unit is trained. Heads and neurons compete in one global ranking of importance per prunable parameter freed
    (`hf_prune.accounting.unit_costs`), or, with `kind_budget="proportional"`, each kind gives up the target share
    of its own parameters (the better choice in the benchmarks, for MiniLM-L6 at 50-70 % and for SmolLM2). Needs `PruningTrainer`, which reports every backward
    pass to the method.

    Args:
        target_sparsity (`float`, defaults to `0.5`): fraction of prunable parameters to remove, in [0, 1).
        time_weighting (`str`, defaults to `"linear"`): `"linear"` weighs a micro-batch by its step, so the model as
            it is at the decision counts most; `"none"` weighs every micro-batch alike.
        normalize_layers (`bool`, defaults to `False`): divide the importances of each layer and unit kind by their
            mean before ranking, so every layer competes on relative importance. On SmolLM2 it spread the cut badly
            (one shot at 20 %: +266 % news perplexity against +63 % without; BENCHMARKS.md): leave it off for LLMs.
        start (`float`, defaults to `0.0`): fraction of the optimizer steps after which gradients are accumulated,
            in [0, 1).
        criterion (`str`, defaults to `"first_order"`): `"first_order"` (mean absolute per-example gate gradient)
            or `"fisher"` (mean squared per-example gate gradient over the loss; needs a model that returns its loss).
        refit_aware (`bool`, defaults to `False`): with `reconstruct`, rank units by what their removal costs after
            the refit: the importance is scaled by the share of the unit's output the refit cannot restore from the
            other live units (`Reconstruction.unrecoverable_shares`; its square root for `"first_order"`, whose
            importance grows with the gradient's size, not its square), so a unit whose input the others predict
            goes first. On SmolLM2 it matched the plain ranking with the refit (BENCHMARKS.md).
    """

    method = "taylor"

    time_weighting: str = field(default="linear", metadata={"help": "'linear' (late steps count most) or 'none'."})
    normalize_layers: bool = field(default=False, metadata={"help": "Divide importances by their layer mean."})
    start: float = field(default=0.0, metadata={"help": "Fraction of training before gradients are accumulated."})
    criterion: str = field(
        default="first_order", metadata={"help": "'first_order' (mean |gate gradient|) or 'fisher' (its square)."}
    )
    refit_aware: bool = field(
        default=False, metadata={"help": "With reconstruct: rank units by their cost after the least-squares refit."}
    )

    def __post_init__(self):
        super().__post_init__()
        _require(
            self.time_weighting in ("linear", "none"), "time_weighting", self.time_weighting, "use 'linear' or 'none'"
        )
        _require(0.0 <= self.start < 1.0, "start", self.start, "use a fraction of training in [0, 1)")
        _require(
            self.criterion in ("first_order", "fisher"), "criterion", self.criterion, "use 'first_order' or 'fisher'"
        )
        _require(
            self.reconstruct or not self.refit_aware,
            "refit_aware",
            self.refit_aware,
            "set reconstruct=True as well (the refit's input statistics are what it ranks by), or leave it False",
        )


class TaylorMethod(TargetMethod):
    config: TaylorConfig
    title = "Taylor importance (baseline: smallest gate gradient per parameter)"
    paper = "Michel, Levy & Neubig (2019), Are Sixteen Heads Really Better than One? NeurIPS 2019"
    citation = """@inproceedings{michel2019sixteen,
  title = {Are Sixteen Heads Really Better than One?},
  author = {Michel, Paul and Levy, Omer and Neubig, Graham},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2019}
}"""

    def create_gate(self, kind: str, layer: int, num_units: int) -> UnitGate:
        return GradientGate(num_units)

    def attach(self, model: nn.Module, state: PruningState) -> None:
        super().attach(model, state)
        self.gradients = GateGradients(model, state)

    def observe_training_loss(self, loss: torch.Tensor) -> None:
        self.gradients.track_loss(loss)

    def after_backward(self, context: StepContext, model: nn.Module, inputs: dict[str, Any]) -> None:
        step, max_steps = context.global_step, context.max_steps
        weight = 0.0
        if step >= self.config.start * max_steps:
            weight = (step + 1) / max(max_steps, 1) if self.config.time_weighting == "linear" else 1.0
        fisher = self.config.criterion == "fisher"
        self.gradients.record(abs_weight=weight, rel_weight=weight if fisher else 0.0)

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        self.gradients.flush()
        super().on_optimizer_step(global_step, max_steps)

    def importance(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer: the importance of each unit under `criterion` (`None` for ungated layers)."""
        fisher = self.config.criterion == "fisher"
        result = {HEADS: [], NEURONS: []}
        for kind in (HEADS, NEURONS):
            for layer, gate in enumerate(self.state.gates(kind)):
                if gate is None:
                    result[kind].append(None)
                    continue
                total, weight = (
                    (gate.grad_curv_sum, gate.grad_rel_weight) if fisher else (gate.grad_abs_sum, gate.grad_weight)
                )
                if float(weight) <= 0:
                    raise ValueError(
                        f"Taylor importance has no gradients for {kind} of layer {layer}: train with "
                        "`PruningTrainer` (it reports every backward pass to the method), with `start` below 1"
                        + (", and a model that returns its loss (criterion='fisher')." if fisher else ".")
                    )
                value = total.float().cpu() / float(weight)
                if self.config.normalize_layers:
                    alive = value[gate.mask.cpu()]
                    mean = alive.mean() if alive.numel() else value.mean()
                    value = value / mean.clamp_min(torch.finfo(value.dtype).tiny)
                result[kind].append(value)
        return result

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        costs = unit_costs_by_layer(self.model, self.state)
        importance = self.importance()
        if self.config.refit_aware:
            shares = self.reconstruction.unrecoverable_shares()
            power = 1.0 if self.config.criterion == "fisher" else 0.5
            importance = {
                kind: [None if v is None else v * shares[kind][i].pow(power) for i, v in enumerate(values)]
                for kind, values in importance.items()
            }
        return {
            kind: [None if v is None else v / costs[kind][i] for i, v in enumerate(values)]
            for kind, values in importance.items()
        }

    def metrics(self) -> dict[str, float]:
        weights = [float(g.grad_weight) for g in self.gradients.gates]
        return {"taylor_batches": max(weights, default=0.0)}


register_method(TaylorConfig, TaylorMethod)
