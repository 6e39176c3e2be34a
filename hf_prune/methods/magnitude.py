"""Magnitude pruning: a baseline that removes the units whose weights have the smallest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..architectures import ArchitectureSpec, transformer_blocks
from ..configs import TargetConfig
from ..constants import HEADS, NEURONS
from ..distributed import full_tensor
from ..registry import register_method
from .base import TargetMethod


@dataclass
class MagnitudeConfig(TargetConfig):
    """Prune the heads and neurons with the smallest weights, on the target schedule (see `TargetConfig`).

    A unit's weights are every weight it owns: a head's query/key/value rows and output-projection columns (its whole
    key/value group under grouped-query attention), a neuron's up/gate rows and down-projection column. Units are
    ranked by their squared L2 norm per weight (mean square), so heads and neurons compete on one scale.
    """

    method = "magnitude"


def _rows(module: nn.Module) -> torch.Tensor:
    """Weight as `[out_features, in_features]` (Conv1D stores it transposed); whole, also when sharded (FSDP2), so
    that every process ranks the same scores."""
    weight = full_tensor(module.weight.detach()).float()
    return weight.t() if isinstance(module, Conv1D) else weight


def _head_scores(layer: nn.Module, spec: ArchitectureSpec, units: int) -> torch.Tensor:
    if spec.qkv:
        q, k, v = _rows(layer.get_submodule(spec.qkv)).chunk(3)
    else:
        q, k, v = (_rows(layer.get_submodule(p)) for p in (spec.q, spec.k, spec.v))
    o = _rows(layer.get_submodule(spec.o)).t()  # one row per input feature of the output projection
    # rows are ordered head by head, and a unit's query heads are contiguous, so each reshape groups one unit per row
    total = torch.cat([w.reshape(units, -1) for w in (q, k, v, o)], dim=1)
    return total.pow(2).mean(dim=1)


def _neuron_scores(layer: nn.Module, spec: ArchitectureSpec) -> torch.Tensor:
    parts = [_rows(layer.get_submodule(p)) for p in spec.mlp_in]
    parts.append(_rows(layer.get_submodule(spec.mlp_out)).t())
    return torch.cat(parts, dim=1).pow(2).mean(dim=1)


class MagnitudeMethod(TargetMethod):
    title = "magnitude pruning (baseline: smallest mean-square weight per unit)"

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        state = self.state
        result = {HEADS: [], NEURONS: []}
        for layer, gated in zip(transformer_blocks(self.model, state.spec), state.layers):
            head_gate, neuron_gate = gated.head_gate, gated.neuron_gate
            result[HEADS].append(None if head_gate is None else _head_scores(layer, state.spec, head_gate.num_units))
            result[NEURONS].append(None if neuron_gate is None else _neuron_scores(layer, state.spec))
        return result


register_method(MagnitudeConfig, MagnitudeMethod)
