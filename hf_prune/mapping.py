"""Preparing a model for pruning: installing the gates of a method, the state hf_prune attaches to the model, and
the helpers that read or temporarily change it (`get_pruning_state`, `gates_bypassed`, `masks_applied`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .accounting import layer_shapes
from .architectures import ArchitectureSpec, get_architecture, transformer_blocks
from .constants import GATE_NAME, HEADS, NEURONS
from .distributed import is_fsdp2
from .gates import UnitGate, gate_hook
from .record import find_record, record_of
from .registry import get_method


if TYPE_CHECKING:
    from .configs import PruningConfig


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
    method: Any  # the `hf_prune.PruningMethod` that owns the gates
    head_dim: int
    layers: list[GatedLayer] = field(default_factory=list)
    hooks: list = field(default_factory=list)  # every handle hf_prune or a method registered; removed at finalize
    gate_hooks: list = field(default_factory=list)  # the gate pre-hooks alone

    def gates(self, kind: str) -> list[UnitGate | None]:
        return [layer.head_gate if kind == HEADS else layer.neuron_gate for layer in self.layers]

    def masks(self, kind: str) -> list[torch.Tensor | None]:
        return [None if gate is None else gate.mask for gate in self.gates(kind)]


def get_pruning_state(model: nn.Module) -> PruningState:
    state = find_record(model).state
    if state is None:
        raise ValueError("This model has no pruning gates: call `hf_prune.prepare_model_for_pruning(model, config)`.")
    return state


def is_prepared(model: nn.Module) -> bool:
    return find_record(model).state is not None


def prepare_model_for_pruning(model: nn.Module, config: PruningConfig) -> nn.Module:
    """Insert the gates of `config`'s method into every block of `model`, in place, and return it.

    With gates at their initial values the model's outputs are unchanged. Raises `ValueError` for unsupported
    families, for models that are already prepared and for models already sharded with FSDP2 (shard after this).
    """
    if is_prepared(model):
        raise ValueError("This model already has pruning gates; prepare it only once.")
    if is_fsdp2(model):
        raise ValueError(
            "This model is already sharded with FSDP2 (`fully_shard`): prepare it for pruning first, then shard it, so "
            "that the gates are sharded and synchronised with the rest of the model."
        )
    spec = get_architecture(model)
    if getattr(model.config, "hf_prune_layout", None) is not None or find_record(model).kept:
        raise ValueError(
            "This model was already physically pruned. Gating it again is not supported: start from the dense "
            "model, or fine-tune the pruned model without hf_prune."
        )
    head_dim = spec.head_dim(model.config)
    group_size = spec.num_heads(model.config) // spec.num_kv_heads(model.config)
    method = get_method(config.method).method_class(config)
    method.check_model(model)
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
    record_of(model).state = state
    method.attach(model, state)
    return model


def _install(state: PruningState, projection: nn.Module, gate: UnitGate) -> UnitGate:
    weight = projection.weight
    gate.to(device=weight.device)
    projection.add_module(GATE_NAME, gate)
    handle = projection.register_forward_pre_hook(gate_hook)
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
    record_of(model).state = None
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
            module.register_forward_pre_hook(gate_hook, prepend=True)
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
