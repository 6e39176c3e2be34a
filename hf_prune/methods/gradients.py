"""Gate-gradient recording shared by the methods that read it (Taylor importance, BINGO's control-variate prior).

A `GradientGate` is a mask-only gate; with the gate at 1, `dL/dgate_u` is the sum of `input * dL/dinput` over the
unit's slice of the gated projection input, which a tensor hook on that input computes from the ordinary training
backward pass. `GateGradients` turns the recorded sums into per-unit statistics, reduced across processes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..constants import GATE_NAME, HEADS, NEURONS
from ..distributed import all_reduce_sum
from ..gates import UnitGate


if TYPE_CHECKING:
    from ..mapping import PruningState


class GradientGate(UnitGate):
    """A mask-only gate that records the per-example gradient of the loss with respect to its unit multipliers.

    `capture_input` is a forward pre-hook for the projection the gate acts on, registered after the gate's own hook
    (see `GateGradients`), so it sees the gated input. In training with gradients enabled it puts a hook on that
    input which sums `input * grad` over each unit's slice, per example: `dL_i/dgate_u` at gate 1 (0 for masked
    units). An example is a row of the batch, or, for packed batches (several sequences in one row, told apart by
    `position_ids` restarting at 0, as `DataCollatorWithFlattening` makes them), one packed sequence; padding adds
    nothing, since the loss does not depend on padded positions. The recorded sums wait in plain tensors until `GateGradients.flush` reduces them across processes into
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
        self.segments: torch.Tensor | None = None  # sequence index of every token of the batch, set per forward
        self._signed: torch.Tensor | None = None  # this micro-batch: sum over examples of the gradient
        self._abs: torch.Tensor | None = None  # this micro-batch: sum over examples of its absolute value
        self._fisher: torch.Tensor | None = None  # this micro-batch: mean over examples of dL_i/dgate squared
        self.pending: dict[str, torch.Tensor] = {}  # local sums not yet reduced into the buffers

    def capture_input(self, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if self.training and self.capture and torch.is_grad_enabled() and x.requires_grad:
            # a detached alias, not `x` itself: no reference cycle through the graph, and no extra memory (the
            # projection saves the same storage for its weight gradient)
            x.register_hook(functools.partial(self._store, x.detach(), self.segments))

    def _store(self, x: torch.Tensor, segments: torch.Tensor | None, grad: torch.Tensor) -> None:
        width = x.shape[-1] // self.num_units
        if segments is None or segments.numel() != x.numel() // x.shape[-1]:
            product = (grad * x).reshape(x.shape[0], -1, self.num_units, width)
            per_example = product.sum(dim=(1, 3), dtype=torch.float32)  # [batch, units]
        else:  # packed sequences: sum each sequence's tokens
            per_token = (grad * x).reshape(-1, self.num_units, width).sum(dim=2, dtype=torch.float32)
            count = int(segments[-1]) + 1
            per_example = per_token.new_zeros(count, self.num_units).index_add_(0, segments, per_token)
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
    gate gradients by it gives `dL/dgate` for the model's own loss, whatever the Trainer did. When the loss trained
    is another one built from it (the task loss mixed with a distillation KL), `track` makes that one `L`: the model's
    own loss may then get no gradient at all (distillation alone).
    """

    def __init__(self):
        self.loss: float | None = None
        self.scale: float | None = None
        self._tracked: object | None = None  # the token of the loss whose gradient is the scale

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
            if isinstance(loss, torch.Tensor):
                self.track(loss)

    def track(self, loss: torch.Tensor) -> None:
        """Take `loss` (a scalar the coming backward starts from) as the training loss of this micro-batch."""
        if loss.requires_grad and loss.numel() == 1:
            token = self._tracked = object()
            self.loss, self.scale = float(loss.detach().float()), None
            loss.register_hook(functools.partial(self._store_scale, token))

    def _store_scale(self, token: object, grad: torch.Tensor) -> None:
        if token is self._tracked:  # the model's own loss, once another was tracked, is not the scale
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
        state.hooks.append(model.register_forward_pre_hook(self._find_sequences, with_kwargs=True))
        self.relative_available = True  # False once a micro-batch had no usable model loss

    def _find_sequences(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before each forward: the sequence index of every token when the batch packs sequences (`position_ids`
        restarting at 0 inside a row), else `None` (one example per row)."""
        positions = kwargs.get("position_ids")
        segments = None
        if isinstance(positions, torch.Tensor) and positions.dim() == 2 and module.training:
            starts = positions.reshape(-1) == 0
            if int(starts.sum()) > positions.shape[0] and bool(starts[0]):
                segments = torch.cumsum(starts.long(), 0) - 1
        for gate in self.gates:
            gate.segments = segments

    def track_loss(self, loss: torch.Tensor) -> None:
        """Take the gradients for `loss` instead of the model's own loss (see `LossRecorder.track`)."""
        self.recorder.track(loss)

    def record(self, abs_weight: float, rel_weight: float) -> None:
        """Add this micro-batch's gradients: `|g|` with weight `abs_weight`, `-g / L` with weight `rel_weight`
        (0 skips). Gradients are rescaled to the training loss (see `LossRecorder`) when its scale is known."""
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
