"""Random pruning: a baseline that removes uniformly random units to the target sparsity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configs import TargetConfig
from ..constants import HEADS, NEURONS
from ..registry import register_method
from .base import TargetMethod


@dataclass
class RandomConfig(TargetConfig):
    """Prune random heads and neurons, on the target schedule (see `TargetConfig`), to `target_sparsity` of the prunable
    parameters. A baseline: any useful method must beat it."""

    method = "random"


class RandomMethod(TargetMethod):
    title = "random pruning (baseline)"

    def scores(self) -> dict[str, list[torch.Tensor | None]]:
        generator = torch.Generator().manual_seed(
            self.config.method_seed if self.config.method_seed is not None else 0
        )
        return {
            kind: [None if g is None else torch.rand(g.num_units, generator=generator) for g in self.state.gates(kind)]
            for kind in (HEADS, NEURONS)
        }


register_method(RandomConfig, RandomMethod)
