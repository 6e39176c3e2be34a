"""`finalize_model`: apply the method's final rule, bake surviving gate values in, remove the pruned units."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import transformer_blocks
from .constants import HEADS, NEURONS
from .distributed import full_state_dict, is_fsdp2, unsharded_class
from .mapping import get_pruning_state, is_prepared, prepare_model_for_pruning, remove_gates
from .prune import prune_structures
from .record import find_record, record_of


@torch.no_grad()
def finalize_model(model: nn.Module) -> nn.Module:
    """Decide with the method's rule, fold each kept unit's deterministic gate value into the projection it gates,
    remove the gates and hooks, and physically remove the pruned units. Returns the (same) model.

    The finalized model computes what the gated model computes in eval mode, with stock module classes and no
    zero-filled leftovers; `save_pretrained` then writes a folder that reloads (see `hf_prune.AutoPrunedModel`).

    A model sharded with FSDP2 (`fully_shard`) is left as it is: every process decides on the sharded model, gathers
    the full weights into a plain copy (`unsharded_copy`) and returns that copy, finalized. This
    is a collective call there: run it on every process.
    """
    state = get_pruning_state(model)
    keep = state.method.keep_masks()
    if is_fsdp2(model):
        model = unsharded_copy(model)
        state = get_pruning_state(model)
    plan = {HEADS: {}, NEURONS: {}}
    for gated, layer in zip(state.layers, transformer_blocks(model, state.spec)):
        for kind, gate, path in (
            (HEADS, gated.head_gate, state.spec.o),
            (NEURONS, gated.neuron_gate, state.spec.mlp_out),
        ):
            if gate is None:
                continue
            gate.mask &= keep[kind][gated.index].to(gate.mask.device)
            values = torch.where(gate.mask, gate.expected(), torch.zeros((), device=gate.mask.device))
            if not torch.isfinite(values).all():
                raise ValueError(f"{kind} gates of layer {gated.index} hold NaN/inf values; cannot finalize.")
            _scale_inputs(layer.get_submodule(path), values)
            pruned = (~gate.mask).nonzero().flatten()
            if kind == HEADS:  # one unit = `group_size` consecutive query heads
                offsets = torch.arange(gated.group_size, device=pruned.device)
                pruned = (pruned[:, None] * gated.group_size + offsets).flatten()
            plan[kind][gated.index] = pruned.tolist()
    remove_gates(model)
    record_of(model).config = state.config
    return prune_structures(model, heads=plan[HEADS], neurons=plan[NEURONS])


def _scale_inputs(projection: nn.Module, values: torch.Tensor) -> None:
    """Multiply each unit's slice of the projection's input features by its gate value."""
    if bool((values == 1).all()):
        return
    weight = projection.weight
    in_dim = 0 if isinstance(projection, Conv1D) else 1
    width = weight.shape[in_dim] // values.numel()
    scale = values.repeat_interleave(width).to(weight.dtype)
    weight.mul_(scale[:, None] if in_dim == 0 else scale[None, :])


@torch.no_grad()
def unsharded_copy(model: nn.Module) -> nn.Module:
    """A plain (unsharded) copy of an FSDP2 model, on every process (a collective call).

    The copy is built from the model's config on the meta device and takes the gathered full tensors, so only one
    full copy of the weights is allocated, on the device the shards live on. A gated model's copy gets gates of the
    same method with the same state (parameters, keep-masks, statistics); the sharded model itself is left unchanged.
    """
    full = full_state_dict(model)
    with torch.device("meta"):
        plain = unsharded_class(model)(copy.deepcopy(model.config))
    if is_prepared(model):
        prepare_model_for_pruning(plain, get_pruning_state(model).config)
    plain.load_state_dict(full, strict=True, assign=True)
    # non-persistent buffers (rotary frequencies, fixed estimator settings) are not in the state dict
    for name, buffer in model.named_buffers():
        if name not in full:
            owner, _, attribute = name.rpartition(".")
            plain.get_submodule(owner)._buffers[attribute] = buffer.detach().clone()
    if hasattr(plain, "tie_weights"):
        plain.tie_weights()
    left = [name for name, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"unsharded_copy: {left[:5]} did not receive values from the sharded model.")
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    source, target = find_record(model), record_of(plain)
    target.card, target.write_card = dict(source.card), source.write_card
    return plain.train(model.training)
