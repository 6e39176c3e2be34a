"""Taylor importance (Michel, Levy & Neubig, 2019, "Are Sixteen Heads Really Better than One?"): a baseline that
removes the units whose gate gradient is smallest, to a target sparsity on the target schedule.

The gradient of the loss with respect to a unit's gate (a multiplier fixed at 1) is the first-order prediction of
what removing the unit does to the loss. It comes almost for free from the ordinary training backward pass: with
the gate at 1, `dL/dgate_u` is the sum of `input * dL/dinput` over the unit's slice of the gated projection input, and
a tensor hook on that input computes it. Nothing is added to the forward pass, the optimizer or DDP, and no extra
activation is kept (the projection saves its input for its own weight gradient anyway).

This module also holds the gradient recording that BINGO uses as its control-variate prior.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import distributed as dist
from torch import nn

from ..configs import TargetConfig, _require
from ..gates import GATE_NAME, HEADS, NEURONS, UnitGate
from ..registry import register_method
from ..selection import unit_costs_by_layer
from .base import TargetMethod


if TYPE_CHECKING:
    from ..gates import PruningState


# -- gradient recording, shared with BINGO ---------------------------------------------------------------------------
class GradientGate(UnitGate):
    """A mask-only gate that records the per-example gradient of the loss with respect to its unit multipliers.

    `capture_input` is a forward pre-hook for the projection the gate acts on, registered after the gate's own hook
    (see `GateGradients`), so it sees the gated input. In training with gradients enabled it puts a hook on that
    input which sums `input * grad` over each unit's slice, per example: `dL_i/dgate_u` at gate 1 (0 for masked
    units). The recorded sums wait in plain tensors until `GateGradients.flush` reduces them across processes into
    the buffers below, which checkpoints carry.

    Buffers:
        grad_abs_sum: weighted sum over micro-batches of `sum_examples |dL_i/dgate|` (Taylor importance).
        grad_rel_sum: weighted sum of `-(dL/dgate) / L` (first-order relative loss change of removing the unit).
        grad_curv_sum: weighted sum of `½ F / L`, with `F` the mean over examples of `(dL_i/dgate)²` (the empirical
            Fisher: the second-order term of removing the unit, which does not cancel once the unit is trained).
        grad_weight, grad_rel_weight: the matching sums of weights (`grad_rel_weight` also for `grad_curv_sum`).
    """

    def __init__(self, num_units: int):
        super().__init__(num_units)
        for name in ("grad_abs_sum", "grad_rel_sum", "grad_curv_sum"):
            self.register_buffer(name, torch.zeros(num_units))
        for name in ("grad_weight", "grad_rel_weight"):
            self.register_buffer(name, torch.zeros(()))
        self.capture = True
        self._signed: torch.Tensor | None = None  # this micro-batch: sum over examples of the gradient
        self._abs: torch.Tensor | None = None  # this micro-batch: sum over examples of its absolute value
        self._fisher: torch.Tensor | None = None  # this micro-batch: mean over examples of dL_i/dgate squared
        self.pending: dict[str, torch.Tensor] = {}  # local sums not yet reduced into the buffers

    def capture_input(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self.training and self.capture and torch.is_grad_enabled() and x.requires_grad:
            # a detached alias, not `x` itself: no reference cycle through the graph, and no extra memory (the
            # projection saves the same storage for its weight gradient)
            x.register_hook(functools.partial(self._store, x.detach()))

    def _store(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        product = (grad * x).reshape(x.shape[0], -1, self.num_units, x.shape[-1] // self.num_units)
        per_example = product.sum(dim=(1, 3), dtype=torch.float32)  # [batch, units]
        signed, absolute = per_example.sum(dim=0), per_example.abs().sum(dim=0)
        # each row is example i's share of the batch-mean loss, dL_i/dgate / batch: mean_i (dL_i/dgate)² = batch * sum
        fisher = per_example.pow(2).sum(dim=0) * per_example.shape[0]
        self._signed = signed if self._signed is None else self._signed + signed
        self._abs = absolute if self._abs is None else self._abs + absolute
        self._fisher = fisher if self._fisher is None else self._fisher + fisher

    def take_captured(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The gradients recorded since the last call (signed sum, absolute sum, Fisher), and forget them."""
        captured = self._signed, self._abs, self._fisher
        self._signed = self._abs = self._fisher = None
        return captured

    def add_pending(self, name: str, value: torch.Tensor) -> None:
        self.pending[name] = self.pending.get(name, 0) + value


class LossRecorder:
    """Forward hook on the model: remembers the training loss of the last forward and, once the backward has run,
    the gradient that reached it.

    The Trainer rescales the model's loss before `backward` (gradient accumulation, token averaging across
    processes, fp16 loss scaling). That factor is exactly the gradient arriving at the model's loss, so dividing the
    gate gradients by it gives `dL/dgate` for the model's own loss, whatever the Trainer did.
    """

    def __init__(self):
        self.loss: float | None = None
        self.scale: float | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.requires_grad and loss.numel() == 1:
            self.loss, self.scale = float(loss.detach().float()), None
            loss.register_hook(self._store_scale)

    def _store_scale(self, grad: torch.Tensor) -> None:
        self.scale = float(grad.detach().float().sum())

    def take(self) -> tuple[float | None, float | None]:
        """`(loss, scale)` of the last training forward/backward, or `None`s; and forget them."""
        result = self.loss, self.scale
        self.loss = self.scale = None
        return result


class GateGradients:
    """Turns the gradients recorded by the `GradientGate`s of a prepared model into per-unit statistics.

    Call `record` after every training backward and `flush` after every optimizer step (on every process: it
    all-reduces). Both methods that use it (Taylor, BINGO) do so from their `after_backward` / `on_optimizer_step`.
    """

    def __init__(self, model: nn.Module, state: PruningState):
        self.gates: list[GradientGate] = [
            g for kind in (HEADS, NEURONS) for g in state.gates(kind) if isinstance(g, GradientGate)
        ]
        for module in model.modules():  # the projections the gates act on; runs after the gate's own pre-hook
            gate = module._modules.get(GATE_NAME)
            if isinstance(gate, GradientGate):
                state.hooks.append(module.register_forward_pre_hook(gate.capture_input))
        self.recorder = LossRecorder()
        state.hooks.append(model.register_forward_hook(self.recorder))
        self.relative_available = True  # False once a micro-batch had no usable model loss

    def record(self, abs_weight: float, rel_weight: float) -> None:
        """Add this micro-batch's gradients: `|g|` with weight `abs_weight`, `-g / L` with weight `rel_weight`
        (0 skips). Gradients are rescaled to the model's own loss when its scale is known."""
        loss, scale = self.recorder.take()
        usable = loss is not None and scale is not None and scale != 0.0 and loss != 0.0
        if rel_weight and not usable:
            self.relative_available = False
        for gate in self.gates:
            signed, absolute, fisher = gate.take_captured()
            if signed is None:
                continue
            if scale:
                signed, absolute, fisher = signed / scale, absolute / abs(scale), fisher / scale**2
            if abs_weight:
                gate.add_pending("grad_abs_sum", abs_weight * absolute)
                gate.add_pending("grad_weight", torch.tensor(float(abs_weight), device=signed.device))
            if rel_weight and usable:
                gate.add_pending("grad_rel_sum", rel_weight * (-signed / loss))
                gate.add_pending("grad_curv_sum", rel_weight * (0.5 * fisher / loss))
                gate.add_pending("grad_rel_weight", torch.tensor(float(rel_weight), device=signed.device))

    @torch.no_grad()
    def flush(self) -> None:
        """Reduce the pending sums of every process into the gate buffers (a collective call under DDP)."""
        names = ("grad_abs_sum", "grad_rel_sum", "grad_curv_sum", "grad_weight", "grad_rel_weight")
        parts = []
        for gate in self.gates:
            for name in names:
                buffer = getattr(gate, name)
                value = gate.pending.get(name)
                parts.append(
                    torch.zeros_like(buffer) if value is None else value.to(buffer.device).reshape(buffer.shape)
                )
            gate.pending = {}
        if not parts:
            return
        flat = all_reduce_sum(torch.cat([p.reshape(-1).float() for p in parts]))
        offset = 0
        for gate in self.gates:
            for name in names:
                buffer = getattr(gate, name)
                buffer += flat[offset : offset + buffer.numel()].reshape(buffer.shape).to(buffer.device)
                offset += buffer.numel()

    def set_capture(self, enabled: bool) -> None:
        for gate in self.gates:
            gate.capture = enabled


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over processes (the tensor itself when there is one process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


# -- the Taylor baseline ---------------------------------------------------------------------------------------------
@dataclass
class TaylorConfig(TargetConfig):
    """Prune the units with the smallest gate-gradient importance, on the target schedule.

    A unit's importance is the weighted mean over training micro-batches of `sum_i |dL_i/dgate|` over its examples
    `i` (Michel et al., 2019), with gradients taken for the model's own loss. Heads and neurons compete in one global
    ranking of importance per prunable parameter freed (`hf_prune.accounting.unit_costs`). Needs `PruningTrainer`,
    which reports every backward pass to the method.

    Args:
        target_sparsity (`float`, defaults to `0.5`): fraction of prunable parameters to remove, in [0, 1).
        time_weighting (`str`, defaults to `"linear"`): `"linear"` weighs a micro-batch by its step, so the model as
            it is at the decision counts most; `"none"` weighs every micro-batch alike.
        normalize_layers (`bool`, defaults to `False`): divide the importances of each layer and unit kind by their
            mean before ranking, so every layer competes on relative importance.
        start (`float`, defaults to `0.0`): fraction of the optimizer steps after which gradients are accumulated,
            in [0, 1).
    """

    method = "taylor"

    time_weighting: str = field(default="linear", metadata={"help": "'linear' (late steps count most) or 'none'."})
    normalize_layers: bool = field(default=False, metadata={"help": "Divide importances by their layer mean."})
    start: float = field(default=0.0, metadata={"help": "Fraction of training before gradients are accumulated."})

    def __post_init__(self):
        super().__post_init__()
        _require(
            self.time_weighting in ("linear", "none"), "time_weighting", self.time_weighting, "use 'linear' or 'none'"
        )
        _require(0.0 <= self.start < 1.0, "start", self.start, "use a fraction of training in [0, 1)")


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

    def after_backward(self, trainer, model: nn.Module, inputs: dict[str, Any]) -> None:
        step, max_steps = trainer.state.global_step, trainer.state.max_steps
        weight = 0.0
        if step >= self.config.start * max_steps:
            weight = (step + 1) / max(max_steps, 1) if self.config.time_weighting == "linear" else 1.0
        self.gradients.record(abs_weight=weight, rel_weight=0.0)

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        self.gradients.flush()
        super().on_optimizer_step(global_step, max_steps)

    def importance(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer: the mean absolute gate gradient of each unit (`None` for ungated layers)."""
        result = {HEADS: [], NEURONS: []}
        for kind in (HEADS, NEURONS):
            for layer, gate in enumerate(self.state.gates(kind)):
                if gate is None:
                    result[kind].append(None)
                    continue
                if float(gate.grad_weight) <= 0:
                    raise ValueError(
                        f"Taylor importance has no gradients for {kind} of layer {layer}: train with "
                        "`PruningTrainer` (it reports every backward pass to the method), with `start` below 1."
                    )
                value = gate.grad_abs_sum.float().cpu() / float(gate.grad_weight)
                if self.config.normalize_layers:
                    alive = value[gate.mask.cpu()]
                    mean = alive.mean() if alive.numel() else value.mean()
                    value = value / mean.clamp_min(torch.finfo(value.dtype).tiny)
                result[kind].append(value)
        return result

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        costs = unit_costs_by_layer(self.model, self.state)
        return {
            kind: [None if v is None else v / costs[kind][i] for i, v in enumerate(values)]
            for kind, values in self.importance().items()
        }

    def metrics(self) -> dict[str, float]:
        weights = [float(g.grad_weight) for g in self.gradients.gates]
        return {"taylor_batches": max(weights, default=0.0)}


register_method(TaylorConfig, TaylorMethod)
