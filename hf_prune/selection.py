"""Turning per-unit scores into keep-masks: a global ranking to a target share of prunable parameters."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .accounting import prunable_parameters, unit_costs
from .architectures import transformer_blocks
from .gates import HEADS, NEURONS, PruningState


logger = logging.getLogger(__name__)


def select_to_sparsity(
    model: nn.Module, state: PruningState, scores: dict[str, list[torch.Tensor | None]], target_sparsity: float
) -> dict[str, list[torch.Tensor | None]]:
    """Keep-masks that remove `target_sparsity` of the prunable parameters, lowest score per unit first.

    Units already masked stay pruned and count towards the target. The config's guard rails apply
    (`min_heads_per_layer`, `min_neurons_per_layer`, `neuron_multiple`), and with `uniform_layers` every layer ends
    with the same counts. The result is within about one unit's size of the target.
    """
    config = state.config
    kinds = [k for k in (HEADS, NEURONS) if any(g is not None for g in state.gates(k))]
    if config.uniform_layers and HEADS in kinds and not state.spec.can_express_heads:
        logger.warning(
            "uniform_layers: the %s config ties head size to hidden size, so a uniform head count cannot be "
            "written in it; keeping every head and reaching the target with MLP neurons.",
            state.spec.model_type,
        )
        kinds.remove(HEADS)
    for kind in kinds:
        for layer, s in enumerate(scores[kind]):
            if s is not None and not torch.isfinite(s).all():
                raise ValueError(f"non-finite pruning scores for {kind} in layer {layer}: the gate state is NaN/inf")

    costs = unit_costs_by_layer(model, state)
    minimum = {
        HEADS: math.ceil(config.min_heads_per_layer / state.layers[0].group_size),
        NEURONS: config.min_neurons_per_layer,
    }
    keep = {k: [m.clone() if m is not None else None for m in state.masks(k)] for k in (HEADS, NEURONS)}
    budget = target_sparsity * prunable_parameters(model, state.spec)
    spent = sum(
        costs[k][i] * int((~m).sum()) for k in (HEADS, NEURONS) for i, m in enumerate(keep[k]) if m is not None
    )
    ranked = sorted(
        (float(score), kind, layer, unit)
        for kind in kinds
        for layer, layer_scores in enumerate(scores[kind])
        if layer_scores is not None
        for unit, score in enumerate(layer_scores.tolist())
    )
    for _, kind, layer, unit in ranked:
        mask, cost = keep[kind][layer], costs[kind][layer]
        if not mask[unit] or spent + cost / 2 > budget or int(mask.sum()) <= max(minimum[kind], 0):
            continue
        mask[unit] = False
        spent += cost

    if config.uniform_layers:
        keep = _make_uniform(keep, scores, kinds, minimum)
    if config.neuron_multiple > 1:
        _round_neurons(keep[NEURONS], scores[NEURONS], config.neuron_multiple)
    return keep


def unit_costs_by_layer(model: nn.Module, state: PruningState) -> dict[str, list[int]]:
    """Prunable parameters freed by one unit of each kind, per layer."""
    costs = {HEADS: [], NEURONS: []}
    for layer, gated in zip(transformer_blocks(model, state.spec), state.layers):
        head, neuron = unit_costs(layer, state.spec, state.head_dim, gated.group_size)
        costs[HEADS].append(head)
        costs[NEURONS].append(neuron)
    return costs


def _make_uniform(keep, scores, kinds, minimum):
    """Same number of pruned units in every layer (the global average), chosen by each layer's lowest scores."""
    result = {k: [m.clone() if m is not None else None for m in keep[k]] for k in (HEADS, NEURONS)}
    for kind in kinds:
        masks = keep[kind]
        size = masks[0].numel()
        pruned = round(sum(int((~m).sum()) for m in masks) / len(masks))
        pruned = min(pruned, size - max(minimum[kind], 1))  # a stock config needs at least one unit per layer
        for i, layer_scores in enumerate(scores[kind]):
            mask = torch.ones(size, dtype=torch.bool)
            mask[torch.argsort(layer_scores, stable=True)[:pruned]] = False
            result[kind][i] = mask
    return result


def _round_neurons(masks: list[torch.Tensor | None], scores: list[torch.Tensor | None], multiple: int) -> None:
    """Restore the best-scored pruned neurons until each layer's kept count is a multiple of `multiple`."""
    for mask, layer_scores in zip(masks, scores):
        if mask is None:
            continue
        missing = (-int(mask.sum())) % multiple
        if missing:
            candidates = (~mask).nonzero().flatten()
            best = candidates[torch.argsort(layer_scores[candidates], descending=True, stable=True)[:missing]]
            mask[best] = True
