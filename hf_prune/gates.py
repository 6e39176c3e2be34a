"""Pruning gates: one multiplicative gate per attention head (or key/value group) and per MLP neuron.

A head gate scales the head's slice of the *input* of the attention output projection; a neuron gate scales the
neuron's column of the input of the MLP down projection. Gates are applied by forward pre-hooks, so every attention
backend (eager, sdpa, flash) works unchanged, and a gate at exactly 0 gives the same logits as removing the unit.
The gate modules are registered as children of the projections they act on (`...o_proj.hf_prune_gate`), so their
parameters reach the optimizer and their state (including the keep-mask) is saved in checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .constants import GATE_NAME


class UnitGate(nn.Module):
    """A gate over `num_units` structures with a persistent keep-mask.

    Subclasses override `sample` (training-time multipliers) and `expected` (deterministic multipliers used in eval
    and baked into the weights at the end). The base gate multiplies by 1: it only masks. A gate that sets
    `elementwise = True` receives the input's leading shape (e.g. `(batch, tokens)`) instead of the batch size and may
    return one value per position, shape `[*leading, num_units]`.
    """

    elementwise = False

    def __init__(self, num_units: int):
        super().__init__()
        self.register_buffer("mask", torch.ones(num_units, dtype=torch.bool))

    @property
    def num_units(self) -> int:
        return self.mask.numel()

    def expected(self) -> torch.Tensor:
        """Deterministic per-unit multipliers, float32, shape `[num_units]`."""
        return torch.ones(self.num_units, device=self.mask.device)

    def sample(self, batch_size: int) -> torch.Tensor:
        """Training-time multipliers, float32, shape `[num_units]` or `[batch_size, num_units]`."""
        return self.expected()

    def _apply(self, fn, recurse: bool = True):
        """Module conversions (`.to`, `.half()`, ...) apply as usual, except that floating parameters and buffers of
        a gate stay float32, so `model.to(torch.bfloat16)` leaves gate state and optimizer updates at full
        precision. The bool keep-mask is untouched."""
        super()._apply(fn, recurse)
        for p in self._parameters.values():
            if p is not None and p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
                if p.grad is not None:
                    p.grad = p.grad.float()
        for name, b in self._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype != torch.float32:
                self._buffers[name] = b.float()
        return self

    def forward(self, batch_size: int) -> torch.Tensor:
        values = self.sample(batch_size) if self.training else self.expected()
        # `where`, not a product: a pruned unit stays exactly 0 even if its gate state were NaN or inf
        return torch.where(self.mask, values, torch.zeros((), device=values.device))


def _apply_gate(x: torch.Tensor, gate: torch.Tensor, num_units: int) -> torch.Tensor:
    shape = x.shape
    x = x.reshape(*shape[:-1], num_units, shape[-1] // num_units)
    if gate.dim() == 1:
        gate = gate[:, None]
    elif gate.dim() == x.dim() - 1:  # one value per position
        gate = gate.unsqueeze(-1)
    else:  # one value per example: broadcast over every axis between batch and units
        gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 3)), num_units, 1)
    return (x * gate.to(x.dtype)).reshape(shape)


def gate_hook(module: nn.Module, args: tuple) -> tuple:
    gate = getattr(module, GATE_NAME)
    x = args[0]
    # gate math stays in float32 under bf16/fp16 autocast; only the product is taken in the activation dtype
    with torch.autocast(x.device.type, enabled=False):
        values = gate(x.shape[:-1] if gate.elementwise else x.shape[0])
    return (_apply_gate(x, values, gate.num_units), *args[1:])
