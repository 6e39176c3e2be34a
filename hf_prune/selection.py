"""Turning per-unit scores into keep-masks: a global ranking to a target share of prunable parameters."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from .accounting import prunable_parameters, unit_costs
from .architectures import transformer_blocks
from .configs import TargetConfig
from .constants import HEADS, NEURONS
from .mapping import PruningState


if TYPE_CHECKING:
    from .configs import PruningConfig


logger = logging.getLogger(__name__)
_WARNED_HEADS_KEPT: set[str] = set()  # model types already told that uniform layers keep every head


Masks = dict[str, list[torch.Tensor | None]]


def select_to_sparsity(
    model: nn.Module, state: PruningState, scores: Masks, target_sparsity: float, config: PruningConfig | None = None
) -> Masks:
    """Keep-masks that remove `target_sparsity` of the prunable parameters, lowest score per unit first.

    Units already masked stay pruned and count towards the target, so calling this with a growing target gives
    monotone masks. The guard rails of `config` (default: the model's pruning config) apply, see
    `enforce_structure`. The result is within about one unit's size of the target.
    """
    config = config or state.config
    kinds = structured_kinds(state, config)
    for kind in kinds:
        for layer, s in enumerate(scores[kind]):
            if s is not None and not torch.isfinite(s).all():
                raise ValueError(f"non-finite pruning scores for {kind} in layer {layer}: the gate state is NaN/inf")

    costs = unit_costs_by_layer(model, state)
    minimum = minimum_units(state, config)
    previous = current_masks(state)
    keep = current_masks(state)
    if isinstance(config, TargetConfig) and config.kind_budget == "proportional" and len(kinds) > 1:
        for kind in kinds:  # each kind gives up the target share of its own prunable parameters
            own = sum(cost * int(m.numel()) for cost, m in zip(costs[kind], keep[kind]) if m is not None)
            _remove_lowest(keep, costs, scores, [kind], target_sparsity * own, minimum)
    else:
        _remove_lowest(keep, costs, scores, kinds, target_sparsity * prunable_parameters(model, state.spec), minimum)
    return enforce_structure(state, keep, scores, previous, config)


def _remove_lowest(keep: Masks, costs: dict, scores: Masks, kinds: list[str], budget: float, minimum: dict) -> None:
    """Remove the lowest-scored units of `kinds` from `keep` until their removed parameters reach `budget`."""
    spent = sum(costs[k][i] * int((~m).sum()) for k in kinds for i, m in enumerate(keep[k]) if m is not None)
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


def enforce_structure(
    state: PruningState, keep: Masks, scores: Masks, previous: Masks | None = None, config: PruningConfig | None = None
) -> Masks:
    """Apply the config's guard rails to proposed keep-masks, never bringing back a unit `previous` had removed.

    In order: `min_heads_per_layer` / `min_neurons_per_layer` (a layer below its floor gets back its newly removed
    units with the highest scores), `uniform_layers` (every layer removes the average count, its lowest-scored
    units), `neuron_multiple` (kept neurons rounded up to a multiple by restoring the best-scored newly removed
    neurons, or down when too few can be restored). Higher score = more worth keeping. Returns new masks.
    """
    config = config or state.config
    previous = previous or {k: [None] * len(keep[k]) for k in (HEADS, NEURONS)}
    keep = {k: [None if m is None else m.clone().cpu() for m in keep[k]] for k in (HEADS, NEURONS)}
    kinds = structured_kinds(state, config)
    minimum = minimum_units(state, config)
    for kind in (HEADS, NEURONS):
        for i, mask in enumerate(keep[kind]):
            if mask is None:
                continue
            before = _previous(previous[kind][i], mask)
            if kind not in kinds:  # uniform layers whose stock config cannot express a head count keep all heads
                mask.copy_(before)
                continue
            missing = min(minimum[kind], int(before.sum())) - int(mask.sum())
            if missing > 0:
                _restore_best(mask, before, scores[kind][i], missing)
    if config.uniform_layers:
        for kind in kinds:
            _make_uniform(
                keep[kind], [_previous(p, m) for p, m in zip(previous[kind], keep[kind])], scores[kind], minimum[kind]
            )
    if config.neuron_multiple > 1:
        for i, mask in enumerate(keep[NEURONS]):
            if mask is not None:
                _round(mask, _previous(previous[NEURONS][i], mask), scores[NEURONS][i], config.neuron_multiple)
    return keep


def structured_kinds(state: PruningState, config: PruningConfig) -> list[str]:
    """The gated unit kinds the config lets a selection remove."""
    kinds = [k for k in (HEADS, NEURONS) if any(g is not None for g in state.gates(k))]
    if config.uniform_layers and HEADS in kinds and not state.spec.can_express_heads:
        if state.spec.model_type not in _WARNED_HEADS_KEPT:  # once, not at every pruning event
            _WARNED_HEADS_KEPT.add(state.spec.model_type)
            logger.warning(
                "uniform_layers: the %s config ties head size to hidden size, so a uniform head count cannot be "
                "written in it; keeping every head and reaching the target with MLP neurons.",
                state.spec.model_type,
            )
        kinds.remove(HEADS)
    return kinds


def minimum_units(state: PruningState, config: PruningConfig) -> dict[str, int]:
    """The floors of the config, in units (a head unit is a key/value group under grouped-query attention)."""
    return {
        HEADS: math.ceil(config.min_heads_per_layer / state.layers[0].group_size),
        NEURONS: config.min_neurons_per_layer,
    }


def current_masks(state: PruningState) -> Masks:
    """A CPU copy of the gates' keep-masks."""
    return {k: [None if m is None else m.detach().clone().cpu() for m in state.masks(k)] for k in (HEADS, NEURONS)}


def unit_costs_by_layer(model: nn.Module, state: PruningState) -> dict[str, list[int]]:
    """Prunable parameters freed by one unit of each kind, per layer."""
    costs = {HEADS: [], NEURONS: []}
    for layer, gated in zip(transformer_blocks(model, state.spec), state.layers):
        head, neuron = unit_costs(layer, state.spec, state.head_dim, gated.group_size)
        costs[HEADS].append(head)
        costs[NEURONS].append(neuron)
    return costs


def _previous(previous: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like) if previous is None else previous.to(like.device)


def _order(scores: torch.Tensor, candidates: torch.Tensor, descending: bool) -> torch.Tensor:
    """The indices of `candidates` (a boolean mask), sorted by score."""
    index = candidates.nonzero().flatten()
    return index[torch.argsort(scores.cpu()[index], descending=descending, stable=True)]


def _restore_best(mask: torch.Tensor, before: torch.Tensor, scores: torch.Tensor, count: int) -> None:
    """Bring back the `count` best-scored units that `mask` removes and `before` kept."""
    mask[_order(scores, before & ~mask, descending=True)[:count]] = True


def _make_uniform(masks: list, previous: list, scores: list, minimum: int) -> None:
    """Same number of pruned units in every layer (the average), each layer's lowest-scored ones; units removed
    before stay removed."""
    gated = [i for i, m in enumerate(masks) if m is not None]
    if not gated:
        return
    size = masks[gated[0]].numel()
    pruned = round(sum(int((~masks[i]).sum()) for i in gated) / len(gated))
    pruned = min(pruned, size - max(minimum, 1))  # a stock config needs at least one unit per layer
    pruned = max(pruned, max(int((~previous[i]).sum()) for i in gated))
    for i in gated:
        order = torch.cat([(~previous[i]).nonzero().flatten(), _order(scores[i], previous[i], descending=False)])
        masks[i].fill_(True)
        masks[i][order[:pruned]] = False


def _round(mask: torch.Tensor, before: torch.Tensor, scores: torch.Tensor, multiple: int) -> None:
    """Make the kept count a multiple of `multiple`: restore the best newly removed units, or, when too few were
    newly removed, remove the lowest-scored kept ones."""
    missing = (-int(mask.sum())) % multiple
    if not missing:
        return
    restorable = before & ~mask
    if int(restorable.sum()) >= missing:
        _restore_best(mask, before, scores, missing)
    else:
        extra = multiple - missing
        mask[_order(scores, mask, descending=False)[:extra]] = False
