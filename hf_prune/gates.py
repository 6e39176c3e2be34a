"""Pruning gates: one multiplicative gate per attention head (or key/value group) and per MLP neuron.

A head gate scales the head's slice of the *input* of the attention output projection; a neuron gate scales the
neuron's column of the input of the MLP down projection. Gates are applied by forward pre-hooks, so every attention
backend (eager, sdpa, flash) works unchanged, and a gate at exactly 0 gives the same logits as removing the unit.
The gate modules are registered as children of the projections they act on (`...o_proj.hf_prune_gate`), so their
parameters reach the optimizer and their state (including the keep-mask) is saved in checkpoints.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .accounting import layer_shapes
from .architectures import ArchitectureSpec, get_architecture, transformer_blocks


if TYPE_CHECKING:
    from .configs import PruningConfig
    from .methods.base import PruningMethod

GATE_NAME = "hf_prune_gate"
HEADS, NEURONS = "heads", "neurons"


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


def _gate_hook(module: nn.Module, args: tuple) -> tuple:
    gate = getattr(module, GATE_NAME)
    x = args[0]
    # gate math stays in float32 under bf16/fp16 autocast; only the product is taken in the activation dtype
    with torch.autocast(x.device.type, enabled=False):
        values = gate(x.shape[:-1] if gate.elementwise else x.shape[0])
    return (_apply_gate(x, values, gate.num_units), *args[1:])


@dataclass
class GatedLayer:
    """The gates of one block and what one unit of each kind covers."""

    index: int
    head_gate: UnitGate | None
    neuron_gate: UnitGate | None
    group_size: int  # query heads per attention unit (1 unless grouped-query attention)


@dataclass
class PruningState:
    """Everything hf_prune attaches to a prepared model (a plain object, not a module)."""

    spec: ArchitectureSpec
    config: PruningConfig
    method: PruningMethod
    head_dim: int
    layers: list[GatedLayer] = field(default_factory=list)
    hooks: list = field(default_factory=list)  # every handle hf_prune or a method registered; removed at finalize
    gate_hooks: list = field(default_factory=list)  # the gate pre-hooks alone

    def gates(self, kind: str) -> list[UnitGate | None]:
        return [layer.head_gate if kind == HEADS else layer.neuron_gate for layer in self.layers]

    def masks(self, kind: str) -> list[torch.Tensor | None]:
        return [None if gate is None else gate.mask for gate in self.gates(kind)]


def get_pruning_state(model: nn.Module) -> PruningState:
    state = getattr(model, "_hf_prune_state", None)
    if state is None:
        raise ValueError("This model has no pruning gates: call `hf_prune.prepare_model_for_pruning(model, config)`.")
    return state


def is_prepared(model: nn.Module) -> bool:
    return getattr(model, "_hf_prune_state", None) is not None


def prepare_model_for_pruning(model: nn.Module, config: PruningConfig) -> nn.Module:
    """Insert the gates of `config`'s method into every block of `model`, in place, and return it.

    With gates at their initial values the model's outputs are unchanged. Raises `ValueError` for unsupported
    families and for models that are already prepared.
    """
    from .registry import get_method

    if is_prepared(model):
        raise ValueError("This model already has pruning gates; prepare it only once.")
    spec = get_architecture(model)
    if getattr(model.config, "hf_prune_layout", None) is not None or getattr(model, "_hf_prune_kept", None):
        raise ValueError(
            "This model was already physically pruned. Gating it again is not supported: start from the dense "
            "model, or fine-tune the pruned model without hf_prune."
        )
    head_dim = spec.head_dim(model.config)
    group_size = spec.num_heads(model.config) // spec.num_kv_heads(model.config)
    method = get_method(config.method).method_class(config)
    state = PruningState(spec=spec, config=config, method=method, head_dim=head_dim)
    shapes = layer_shapes(model, spec, head_dim)
    for i, (layer, shape) in enumerate(zip(transformer_blocks(model, spec), shapes)):
        head_gate = neuron_gate = None
        if config.prune_heads:
            head_gate = _install(state, layer.get_submodule(spec.o), method.create_gate(HEADS, i, shape.kv_heads))
        if config.prune_neurons:
            neuron_gate = _install(
                state, layer.get_submodule(spec.mlp_out), method.create_gate(NEURONS, i, shape.neurons)
            )
        state.layers.append(GatedLayer(i, head_gate, neuron_gate, group_size))
    model._hf_prune_state = state
    method.attach(model, state)
    return model


def _install(state: PruningState, projection: nn.Module, gate: UnitGate) -> UnitGate:
    weight = projection.weight
    gate.to(device=weight.device)
    projection.add_module(GATE_NAME, gate)
    handle = projection.register_forward_pre_hook(_gate_hook)
    state.hooks.append(handle)
    state.gate_hooks.append(handle)
    return gate


def remove_gates(model: nn.Module) -> PruningState:
    """Remove every hook and gate module, leaving stock modules; returns the detached state."""
    state = get_pruning_state(model)
    for handle in state.hooks:
        handle.remove()
    for module in model.modules():
        if GATE_NAME in module._modules:
            del module._modules[GATE_NAME]
    del model._hf_prune_state
    return state


@contextlib.contextmanager
def gates_bypassed(model: nn.Module):
    """Temporarily run `model` without its gate hooks (the dense model), e.g. to time it before pruning."""
    state = get_pruning_state(model)
    for handle in state.gate_hooks:
        handle.remove()
    try:
        yield model
    finally:
        # prepend: the gate must act before any method hook on the same projection, as it did before
        fresh = [
            module.register_forward_pre_hook(_gate_hook, prepend=True)
            for module in model.modules()
            if GATE_NAME in module._modules
        ]
        state.hooks = [h for h in state.hooks if h not in state.gate_hooks] + fresh
        state.gate_hooks = fresh


@contextlib.contextmanager
def masks_applied(state: PruningState, masks: dict[str, list[torch.Tensor | None]]):
    """Temporarily set the gates' keep-masks (per kind, per layer; `None` leaves a layer as it is), e.g. to evaluate
    the model at another sparsity; the masks are restored on exit."""
    saved = []
    try:
        for kind in (HEADS, NEURONS):
            for gate, keep in zip(state.gates(kind), masks[kind]):
                if gate is not None and keep is not None:
                    saved.append((gate, gate.mask.clone()))
                    gate.mask.copy_(keep.to(gate.mask.device))
        yield state
    finally:
        for gate, mask in saved:
            gate.mask.copy_(mask)


def gate_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters that belong to pruning gates."""
    return [p for n, p in model.named_parameters() if GATE_NAME in n and p.requires_grad]
