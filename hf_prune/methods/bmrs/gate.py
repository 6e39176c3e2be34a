"""The BMRS gate: a truncated log-normal multiplicative noise gate per head or neuron."""

from __future__ import annotations

import torch
from torch import nn

from ...distributed import full_tensor
from ...gates import UnitGate
from .config import BmrsConfig
from .functional import sample_truncated_lognormal, truncated_lognormal_kl, truncated_lognormal_mean


LOG_SIGMA_RANGE = (-20.0, 5.0)  # the reference clamp; it keeps σ finite and the gate math in range


class BmrsGate(UnitGate):
    """log θ ~ N(μ, σ²) truncated to [lower, upper]. Training draws one reparameterised sample per example (or per
    element); eval uses the posterior mean E[θ]. μ and log σ are float32 parameters whatever the model's dtype."""

    def __init__(self, num_units: int, config: BmrsConfig):
        super().__init__(num_units)
        self.lower, self.upper = config.lower, config.upper
        self.elementwise = config.noise == "element"
        self.mu = nn.Parameter(torch.full((num_units,), float(config.init_mu)))
        self.log_sigma = nn.Parameter(torch.full((num_units,), float(config.init_log_sigma)))

    def sigma(self) -> torch.Tensor:
        return full_tensor(self.log_sigma).float().clamp(*LOG_SIGMA_RANGE).exp()

    def expected(self) -> torch.Tensor:
        return truncated_lognormal_mean(full_tensor(self.mu).float(), self.sigma(), lower=self.lower, upper=self.upper)

    def sample(self, shape: int | torch.Size) -> torch.Tensor:
        leading = tuple(shape) if self.elementwise else (shape,)
        u = torch.rand(*leading, self.num_units, device=self.mu.device)
        return sample_truncated_lognormal(
            full_tensor(self.mu).float(), self.sigma(), u, lower=self.lower, upper=self.upper
        )

    def kl(self) -> torch.Tensor:
        """KL of every gate against the log-uniform prior (float32, differentiable)."""
        return truncated_lognormal_kl(full_tensor(self.mu).float(), self.sigma(), lower=self.lower, upper=self.upper)
