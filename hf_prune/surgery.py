"""Physical removal of attention heads and MLP neurons: the transformers v5 replacement for `prune_heads`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from . import modeling_hf_prune as runtime
from .accounting import forward_flops, layer_shapes, model_parameters, prunable_parameters
from .architectures import ArchitectureSpec, get_architecture, transformer_blocks
from .record import find_record, record_of


def remove_units(
    model: nn.Module,
    heads: Mapping[int, Iterable[int]] | None = None,
    neurons: Mapping[int, Iterable[int]] | None = None,
) -> nn.Module:
    """Remove the listed heads and neurons from `model`'s modules, in place, and record what was kept (relative to
    the original model) on it. `hf_prune.prune_structures` is the public entry point: it also makes the model
    saveable."""
    if find_record(model).state is not None:
        raise ValueError(
            "This model still has pruning gates: call `hf_prune.finalize_model(model)`, which bakes the gates in and "
            "removes the units chosen by the method, instead of `prune_structures`."
        )
    spec = get_architecture(model)
    head_dim = spec.head_dim(model.config)
    shapes = layer_shapes(model, spec, head_dim)
    heads = _normalise(heads, "heads", [s.heads for s in shapes])
    neurons = _normalise(neurons, "neurons", [s.neurons for s in shapes])
    record = _pruning_record(model, spec, head_dim)

    for i, layer in enumerate(transformer_blocks(model, spec)):
        if i not in heads and i not in neurons:
            continue
        keep_heads = keep_kv = keep_neurons = None
        if i in heads:
            keep_heads, keep_kv = _kept_heads(spec, shapes[i], heads[i], i)
            record["heads"][i] = [record["heads"][i][j] for j in keep_heads.tolist()]
        if i in neurons:
            keep_neurons = _complement(neurons[i], shapes[i].neurons)
            record["neurons"][i] = [record["neurons"][i][j] for j in keep_neurons.tolist()]
        runtime.resize_block(layer, spec.to_dict(), head_dim, keep_heads, keep_kv, keep_neurons)

    return model


def _normalise(plan: Mapping[int, Iterable[int]] | None, kind: str, sizes: list[int]) -> dict[int, list[int]]:
    result = {}
    for layer, indices in (plan or {}).items():
        layer = int(layer)  # JSON round trips turn int keys into strings
        if not 0 <= layer < len(sizes):
            raise ValueError(f"{kind}: layer {layer} does not exist; the model has layers 0..{len(sizes) - 1}.")
        indices = sorted({int(j) for j in indices})
        bad = [j for j in indices if not 0 <= j < sizes[layer]]
        if bad:
            raise ValueError(
                f"{kind}: layer {layer} has {sizes[layer]} {kind} now, so {bad} do not exist. Indices refer to the "
                "units the model has now; after an earlier prune, index among the units that are left."
            )
        if indices:
            result[layer] = indices
    return result


def _complement(removed: list[int], size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().flatten()


def _kept_heads(
    spec: ArchitectureSpec, shape, removed: list[int], layer: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    keep = _complement(removed, shape.heads)
    if not spec.grouped_query or shape.kv_heads == shape.heads:
        kv = keep if spec.grouped_query else None
        return keep, kv
    group = shape.heads // shape.kv_heads
    per_group = torch.bincount(keep // group, minlength=shape.kv_heads)
    kept_counts = set(per_group[per_group > 0].tolist())
    if len(kept_counts) > 1:
        raise ValueError(
            f"heads: layer {layer} would keep {per_group.tolist()} query heads in its key/value groups (group size "
            f"{group}). Grouped-query attention needs the same number of query heads in every kept group: remove whole "
            "groups, or the same number of heads from each group."
        )
    return keep, (per_group > 0).nonzero().flatten()


def _pruning_record(model: nn.Module, spec: ArchitectureSpec, head_dim: int) -> dict:
    """Kept indices relative to the original model, plus the original sizes; created on the first prune."""
    record = find_record(model).kept
    if record is None:
        shapes = layer_shapes(model, spec, head_dim)
        record = {
            "heads": {i: list(range(s.heads)) for i, s in enumerate(shapes)},
            "neurons": {i: list(range(s.neurons)) for i, s in enumerate(shapes)},
            "before": {
                "parameters": model_parameters(model),
                "prunable_parameters": prunable_parameters(model, spec),
                "flops_per_sequence_128": forward_flops(model, spec, head_dim),
                "layers": [s.to_dict() for s in shapes],
            },
            "base_config": model.config.to_dict(),
        }
        record_of(model).kept = record
    return record
