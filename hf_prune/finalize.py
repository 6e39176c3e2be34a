"""`finalize_model`: apply the method's final rule, bake surviving gate values in, remove the pruned units."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import transformer_blocks
from .constants import HEADS, NEURONS
from .distributed import is_fsdp2, unsharded_copy
from .mapping import get_pruning_state, remove_gates
from .prune import prune_structures
from .record import record_of


@torch.no_grad()
def finalize_model(model: nn.Module) -> nn.Module:
    """Decide with the method's rule, fold each kept unit's deterministic gate value into the projection it gates,
    remove the gates and hooks, and physically remove the pruned units. Returns the (same) model.

    The finalized model computes what the gated model computes in eval mode, with stock module classes and no
    zero-filled leftovers; `save_pretrained` then writes a folder that reloads (see `hf_prune.AutoPrunedModel`).

    A model sharded with FSDP2 (`fully_shard`) is left as it is: every process decides on the sharded model, gathers
    the full weights into a plain copy (`hf_prune.distributed.unsharded_copy`) and returns that copy, finalized. This
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
