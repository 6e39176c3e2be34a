"""`pruning_summary`: what was pruned, in one form for gated and finalized models (logged metrics, checkpoints,
`pruning_config.json`, model cards, reports)."""

from __future__ import annotations

from torch import nn

from .accounting import forward_flops, layer_shapes, model_parameters, prunable_parameters, unit_costs
from .architectures import get_architecture, transformer_blocks
from .constants import HEADS, NEURONS
from .mapping import get_pruning_state, is_prepared
from .record import find_record


SEQ_LEN = 128  # FLOPs are reported per sequence of this many tokens


def pruning_summary(model: nn.Module) -> dict:
    """What was pruned: the kept head and neuron indices per layer (relative to the original model), the parameter
    and FLOP counts before and after, the share of prunable parameters removed (`sparsity`), and `stage`.

    For a gated model (`stage="gated"`) "after" is what finalizing now would give, computed from unit sizes without
    touching the model; for a finalized one (`stage="finalized"`) it is counted on the model, with its `export` form.
    """
    return _gated_summary(model) if is_prepared(model) else _finalized_summary(model)


def _gated_summary(model: nn.Module) -> dict:
    state = get_pruning_state(model)
    layers = list(transformer_blocks(model, state.spec))
    heads_kept, neurons_kept, removed, removed_heads = {}, {}, 0, 0
    for gated, layer in zip(state.layers, layers):
        head_cost, neuron_cost = unit_costs(layer, state.spec, state.head_dim, gated.group_size)
        if gated.head_gate is not None:
            keep = gated.head_gate.mask.repeat_interleave(gated.group_size)
            heads_kept[gated.index] = keep.nonzero().flatten().tolist()
            pruned_units = int((~gated.head_gate.mask).sum())
            removed += pruned_units * head_cost
            removed_heads += pruned_units * gated.group_size
        if gated.neuron_gate is not None:
            neurons_kept[gated.index] = gated.neuron_gate.mask.nonzero().flatten().tolist()
            removed += int((~gated.neuron_gate.mask).sum()) * neuron_cost
    prunable = prunable_parameters(model, state.spec)
    parameters = model_parameters(model)
    flops = forward_flops(model, state.spec, state.head_dim, SEQ_LEN)
    # a removed weight saves one multiply-add per token; a removed head also its score and context products
    flops_removed = 2 * SEQ_LEN * removed + 4 * SEQ_LEN * SEQ_LEN * state.head_dim * removed_heads
    return {
        "kept_heads": {str(k): v for k, v in heads_kept.items()},
        "kept_neurons": {str(k): v for k, v in neurons_kept.items()},
        "stage": "gated",
        "before": {
            "parameters": parameters,
            "prunable_parameters": prunable,
            f"flops_per_sequence_{SEQ_LEN}": flops,
            "layers": [s.to_dict() for s in layer_shapes(model, state.spec, state.head_dim)],
        },
        "after": {
            "parameters": parameters - removed,
            "prunable_parameters": prunable - removed,
            f"flops_per_sequence_{SEQ_LEN}": flops - flops_removed,
        },
        "sparsity": removed / prunable,
    }


def pruning_metrics(model: nn.Module) -> dict[str, float]:
    """`pruning/*` scalars for `Trainer.log` (and for plots of a finalized model): heads and neurons kept, their
    fractions, sparsity, parameter ratio, and the method's own metrics while the model is gated."""
    summary = pruning_summary(model)
    metrics = {}
    for kind in (HEADS, NEURONS):
        kept = summary[f"kept_{kind}"]
        if kept:
            total = sum(layer[kind] for layer in summary["before"].get("layers", []))
            count = sum(len(indices) for indices in kept.values())
            metrics[f"pruning/{kind}_kept"] = count
            metrics[f"pruning/{kind}_kept_fraction"] = count / total if total else 0.0
    metrics["pruning/sparsity"] = summary["sparsity"]
    if summary["before"]:
        metrics["pruning/parameter_ratio"] = summary["after"]["parameters"] / summary["before"]["parameters"]
    if summary["stage"] == "gated":  # the method's own statistics (probes, would-prune counts, ...)
        metrics.update({f"pruning/{k}": v for k, v in get_pruning_state(model).method.metrics().items()})
    return metrics


def _finalized_summary(model: nn.Module) -> dict:
    spec = get_architecture(model)
    head_dim = spec.head_dim(model.config)
    record = find_record(model).kept or {}
    prunable = prunable_parameters(model, spec)
    before = record.get("before", {})
    return {
        "stage": "finalized",
        "export": "remote_code" if getattr(model.config, "hf_prune_layout", None) is not None else "stock",
        "kept_heads": {str(k): v for k, v in record.get("heads", {}).items()},
        "kept_neurons": {str(k): v for k, v in record.get("neurons", {}).items()},
        "before": before,
        "after": {
            "parameters": model_parameters(model),
            "prunable_parameters": prunable,
            "flops_per_sequence_128": forward_flops(model, spec, head_dim),
            "layers": [s.to_dict() for s in layer_shapes(model, spec, head_dim)],
        },
        "sparsity": 1 - prunable / before["prunable_parameters"] if before else 0.0,
        "hf_prune_version": _version(),
    }


def _version() -> str:
    from . import __version__

    return __version__
