"""Estimators that turn random-subset probes into one effect per unit, with a standard error (bingo.md §3.6).

A probe ablates each unit `u` independently with probability `p_u` (`m_u = 1` when ablated) and measures a signal
`y` (by default the relative loss change). The target is `beta_u`, the expected change of `y` when `u` is removed,
in the context drawn by the sampling distribution. Under an additive model `y = sum_u m_u beta_u + noise`, the
difference of means, the control variate (with any prior) and the ridge fit are unbiased; the faithful EMA is not.

Every statistic is a buffer, so the estimators are checkpointed with the model, and an update depends only on the
buffers and its arguments, so processes that apply the same observations in the same order stay identical.
Sums are kept in float32 (supported on every device); estimates are computed in float64 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


ESTIMATORS = ("ema", "difference_of_means", "control_variate", "ridge")


@dataclass
class Estimate:
    """Per-unit results, float64 CPU tensors of shape `[num_units]`.

    Args:
        value (`torch.Tensor`): estimated effect `beta_u` (NaN when the estimator has no information on the unit).
        se (`torch.Tensor`): its standard error (NaN when unknown).
        ablated (`torch.Tensor`): how many probes ablated the unit.
    """

    value: torch.Tensor
    se: torch.Tensor
    ablated: torch.Tensor


class Estimator(nn.Module):
    """Base class: holds the inclusion probabilities, shrinkage groups and probe counts.

    Args:
        p (`torch.Tensor`): inclusion probability of each unit, in (0, 1).
        groups (`torch.Tensor`, *optional*): integer group of each unit for empirical-Bayes shrinkage (e.g. unit
            kind or layer); defaults to one group.
    """

    def __init__(self, p: torch.Tensor, groups: torch.Tensor | None = None):
        super().__init__()
        p = torch.as_tensor(p, dtype=torch.float32).flatten()
        if not bool(((p > 0) & (p < 1)).all()):
            raise ValueError("inclusion probabilities must lie strictly between 0 and 1")
        groups = torch.zeros(p.numel(), dtype=torch.long) if groups is None else torch.as_tensor(groups).long()
        self.register_buffer("p", p, persistent=False)
        self.register_buffer("groups", groups.flatten(), persistent=False)
        self.register_buffer("ablated_count", torch.zeros(p.numel()))
        self.register_buffer("num_probes", torch.zeros(()))

    @property
    def num_units(self) -> int:
        return self.p.numel()

    @torch.no_grad()
    def update(self, ablated: torch.Tensor, y: float, weight: float = 1.0, prior: torch.Tensor | None = None) -> None:
        """Add one probe.

        Args:
            ablated (`torch.Tensor`): boolean `[num_units]`, the units the probe switched off.
            y (`float`): the probe's signal.
            weight (`float`, defaults to `1.0`): the probe's weight (later probes can count more).
            prior (`torch.Tensor`, *optional*): a prediction of each unit's effect known before the probe was drawn
                (the gate-gradient prior); only the control-variate and ridge estimators use it.
        """
        m = ablated.to(device=self.p.device, dtype=torch.float32).flatten()
        prior = torch.zeros_like(self.p) if prior is None else prior.to(self.p.device, torch.float32).flatten()
        self._update(m, float(y), float(weight), prior)
        self.ablated_count += m
        self.num_probes += 1

    def _update(self, m: torch.Tensor, y: float, weight: float, prior: torch.Tensor) -> None:
        raise NotImplementedError

    def estimate(self) -> Estimate:
        raise NotImplementedError

    def _nan(self) -> torch.Tensor:
        return torch.full((self.num_units,), float("nan"), dtype=torch.float64)


class EmaEstimator(Estimator):
    """The paper's score, with its sign fixed: for the units a probe ablated, `I <- decay * I + (1 - decay) * y`,
    starting at `initial` (the paper: decay 0.5, start 0.5, `y = |dA| / A_before`). Higher means more important.

    It mostly reflects the last two or three probes, ignores probe weights, and a unit never ablated keeps no
    estimate (NaN). Kept as the faithful baseline.
    """

    def __init__(self, p: torch.Tensor, groups: torch.Tensor | None = None, decay: float = 0.5, initial: float = 0.5):
        super().__init__(p, groups)
        self.decay = decay
        self.register_buffer("value", torch.full((self.num_units,), float(initial)))
        self.register_buffer("value_sq", torch.full((self.num_units,), float(initial) ** 2))

    def _update(self, m: torch.Tensor, y: float, weight: float, prior: torch.Tensor) -> None:
        keep = 1.0 - (1.0 - self.decay) * m  # `decay` where ablated, 1 elsewhere
        self.value.mul_(keep).add_((1.0 - keep) * y)
        self.value_sq.mul_(keep).add_((1.0 - keep) * y * y)

    def estimate(self) -> Estimate:
        value, square = self.value.double().cpu(), self.value_sq.double().cpu()
        ablated = self.ablated_count.double().cpu()
        # stationary variance of an EMA with retention d is var(y) * (1 - d) / (1 + d)
        se = ((square - value**2).clamp_min(0) * (1 - self.decay) / (1 + self.decay)).sqrt()
        never = ablated == 0
        return Estimate(value.masked_fill(never, float("nan")), se.masked_fill(never, float("nan")), ablated)


class DifferenceOfMeansEstimator(Estimator):
    """Maximum-sample-reuse estimate: weighted mean of `y` over probes that ablated the unit minus the weighted mean
    over probes that did not. Unbiased under the additive model; its error is dominated by the other units' effects
    (about `sigma * sqrt(N / T)`)."""

    def __init__(self, p: torch.Tensor, groups: torch.Tensor | None = None):
        super().__init__(p, groups)
        for name in ("in_w", "in_w2", "in_wy", "in_wy2"):
            self.register_buffer(name, torch.zeros(self.num_units))
        for name in ("all_w", "all_w2", "all_wy", "all_wy2"):
            self.register_buffer(name, torch.zeros(()))

    def _update(self, m: torch.Tensor, y: float, weight: float, prior: torch.Tensor) -> None:
        wm = weight * m
        self.in_w += wm
        self.in_w2 += weight * wm
        self.in_wy += wm * y
        self.in_wy2 += wm * (y * y)
        self.all_w += weight
        self.all_w2 += weight * weight
        self.all_wy += weight * y
        self.all_wy2 += weight * y * y

    def estimate(self) -> Estimate:
        get = lambda name: getattr(self, name).double().cpu()  # noqa: E731
        in_w, in_w2, in_wy, in_wy2 = get("in_w"), get("in_w2"), get("in_wy"), get("in_wy2")
        out_w, out_w2 = get("all_w") - in_w, get("all_w2") - in_w2
        out_wy, out_wy2 = get("all_wy") - in_wy, get("all_wy2") - in_wy2
        mean_in, mean_out = in_wy / in_w, out_wy / out_w
        var_in = (in_wy2 / in_w - mean_in**2).clamp_min(0)
        var_out = (out_wy2 / out_w - mean_out**2).clamp_min(0)
        # effective sample sizes of weighted means: (sum w)^2 / sum w^2
        se = (var_in * in_w2 / in_w**2 + var_out * out_w2 / out_w**2).sqrt()
        value = mean_in - mean_out
        missing = (in_w <= 0) | (out_w <= 0)
        return Estimate(
            value.masked_fill(missing, float("nan")),
            se.masked_fill(missing, float("nan")),
            self.ablated_count.double().cpu(),
        )


class ControlVariateEstimator(Estimator):
    """Inverse-probability weighting with a prior as control variate, plus empirical-Bayes shrinkage.

    At each probe, with the prior `b` (known before the probe), the residual baseline `c` (weighted mean of past
    `y - sum_u m_u b_u`) and `r = y - sum_u m_u b_u - c`, each unit gets
    `e_u = b_u + d_u` with `d_u = r * (m_u / p_u - (1 - m_u) / (1 - p_u))`, and `E[e_u] = beta_u` whatever the
    prior's quality. The raw estimate is the weighted mean of `e_u`; its standard error comes from the weighted
    variance of `d_u`. With `shrink`, within each group the correction `delta_u = mean(d_u)` is shrunk towards the
    group's mean correction `mu` by `lambda = max(0, 1 - mean(se^2) / var(delta))`:
    `beta_u = b_u + mu + lambda * (delta_u - mu)`. This leans on the prior when probes are few per unit (neurons) and
    on the measured ablations when they are many (heads).

    Args:
        p (`torch.Tensor`): inclusion probabilities.
        groups (`torch.Tensor`, *optional*): shrinkage groups.
        shrink (`bool`, defaults to `True`): apply the empirical-Bayes shrinkage in `estimate`.
    """

    def __init__(self, p: torch.Tensor, groups: torch.Tensor | None = None, shrink: bool = True):
        super().__init__(p, groups)
        self.shrink = shrink
        self.last_shrinkage: dict[int, float] = {}
        for name in ("d_sum", "d_sq", "b_sum"):
            self.register_buffer(name, torch.zeros(self.num_units))
        for name in ("w_sum", "w2_sum", "res_sum", "res_w"):
            self.register_buffer(name, torch.zeros(()))

    def _update(self, m: torch.Tensor, y: float, weight: float, prior: torch.Tensor) -> None:
        explained = torch.dot(m, prior)
        baseline = self.res_sum / self.res_w if float(self.res_w) > 0 else torch.zeros((), device=m.device)
        residual = y - explained - baseline
        d = residual * (m / self.p - (1.0 - m) / (1.0 - self.p))
        self.d_sum += weight * d
        self.d_sq += weight * d * d
        self.b_sum += weight * prior
        self.w_sum += weight
        self.w2_sum += weight * weight
        # the baseline is updated after use, so it never depends on the current mask (keeps e_u unbiased)
        self.res_sum += weight * (y - explained)
        self.res_w += weight

    def mean_prior(self) -> torch.Tensor:
        """The weighted mean of the priors the probes used (float64 CPU; zeros before the first probe)."""
        total = float(self.w_sum)
        return self.b_sum.double().cpu() / total if total > 0 else torch.zeros(self.num_units, dtype=torch.float64)

    def estimate(self, shrink: bool | None = None) -> Estimate:
        ablated = self.ablated_count.double().cpu()
        total, total_sq = float(self.w_sum), float(self.w2_sum)
        if total <= 0:
            return Estimate(self._nan(), self._nan(), ablated)
        prior = self.mean_prior()
        delta = self.d_sum.double().cpu() / total
        var = (self.d_sq.double().cpu() / total - delta**2).clamp_min(0)
        se = (var * total_sq / total**2).sqrt()
        if not (self.shrink if shrink is None else shrink):
            return Estimate(prior + delta, se, ablated)
        value, shrunk_se = torch.empty_like(delta), torch.empty_like(se)
        groups = self.groups.cpu()
        self.last_shrinkage = {}
        for group in groups.unique().tolist():
            idx = groups == group
            d, s2 = delta[idx], se[idx] ** 2
            mu, noise = d.mean(), s2.mean()
            spread = ((d - mu) ** 2).mean()
            lam = float((1 - noise / spread).clamp(0, 1)) if spread > 0 else 0.0
            value[idx] = prior[idx] + mu + lam * (d - mu)
            # posterior spread of a normal-normal model, plus the uncertainty of the group mean
            shrunk_se[idx] = (lam * s2 + noise / d.numel()).sqrt()
            self.last_shrinkage[group] = lam
        return Estimate(value, shrunk_se, ablated)


class RidgeEstimator(Estimator):
    """Ridge regression of the probe signal on the ablation indicators of `columns` (heads), shrunk towards the prior.

    Fits `y' = c + sum_{u in columns} m_u beta_u` by weighted least squares with the penalty
    `alpha * (mean weight) * ||beta - b||^2` (the intercept is not penalised), where `y'` is the signal minus the
    prior's prediction for the units outside `columns`. The normal equations are accumulated online, `(K+1)^2` floats
    for `K` columns, so keep it to heads. Units outside `columns` are estimated by a `ControlVariateEstimator`.

    Args:
        p (`torch.Tensor`): inclusion probabilities.
        groups (`torch.Tensor`, *optional*): shrinkage groups of the control-variate part.
        columns (`torch.Tensor`, *optional*): boolean, the units fitted by ridge (default: all).
        alpha (`float`, defaults to `1.0`): penalty strength, in probes' worth of weight.
    """

    def __init__(
        self,
        p: torch.Tensor,
        groups: torch.Tensor | None = None,
        columns: torch.Tensor | None = None,
        alpha: float = 1.0,
    ):
        super().__init__(p, groups)
        columns = torch.ones(self.num_units, dtype=torch.bool) if columns is None else columns.bool().flatten()
        self.alpha = alpha
        self.fallback = ControlVariateEstimator(p, groups)
        self.register_buffer("columns", columns, persistent=False)
        size = int(columns.sum()) + 1
        self.register_buffer("xtx", torch.zeros(size, size))
        self.register_buffer("xty", torch.zeros(size))
        for name in ("yty", "w_sum", "w2_sum"):
            self.register_buffer(name, torch.zeros(()))

    def _update(self, m: torch.Tensor, y: float, weight: float, prior: torch.Tensor) -> None:
        self.fallback.update(m, y, weight, prior)
        target = y - torch.dot(m * (~self.columns), prior)
        x = torch.cat([torch.ones(1, device=m.device), m[self.columns]])
        self.xtx += weight * torch.outer(x, x)
        self.xty += weight * target * x
        self.yty += weight * target * target
        self.w_sum += weight
        self.w2_sum += weight * weight

    def estimate(self) -> Estimate:
        base = self.fallback.estimate()
        total, total_sq, probes = float(self.w_sum), float(self.w2_sum), float(self.num_probes)
        columns = self.columns.cpu()
        value, se = base.value.clone(), base.se.clone()
        if total <= 0:
            value[columns], se[columns] = float("nan"), float("nan")
            return Estimate(value, se, base.ablated)
        gram, rhs = self.xtx.double().cpu(), self.xty.double().cpu()
        size = gram.shape[0]
        penalty = torch.eye(size, dtype=torch.float64) * (self.alpha * total / probes)
        penalty[0, 0] = 0.0
        center = torch.cat([torch.zeros(1, dtype=torch.float64), self.fallback.mean_prior()[columns]])
        system = gram + penalty
        beta = torch.linalg.solve(system, rhs + penalty @ center)
        rss = float(self.yty) - 2 * beta @ rhs + beta @ gram @ beta
        effective = total**2 / total_sq  # Kish effective number of probes
        sigma2 = max(float(rss), 0.0) / total * effective / max(effective - size, 1.0)
        inverse = torch.linalg.inv(system)
        cov = sigma2 * (total_sq / total) * inverse @ gram @ inverse
        value[columns] = beta[1:]
        se[columns] = cov.diagonal()[1:].clamp_min(0).sqrt()
        return Estimate(value, se, base.ablated)


def build_estimator(
    name: str,
    p: torch.Tensor,
    groups: torch.Tensor | None = None,
    ridge_columns: torch.Tensor | None = None,
    ema_decay: float = 0.5,
    ridge_alpha: float = 1.0,
    shrink: bool = True,
) -> Estimator:
    """The estimator called `name` (one of `ESTIMATORS`)."""
    if name == "ema":
        return EmaEstimator(p, groups, decay=ema_decay)
    if name == "difference_of_means":
        return DifferenceOfMeansEstimator(p, groups)
    if name == "control_variate":
        return ControlVariateEstimator(p, groups, shrink=shrink)
    if name == "ridge":
        estimator = RidgeEstimator(p, groups, columns=ridge_columns, alpha=ridge_alpha)
        estimator.fallback.shrink = shrink
        return estimator
    raise ValueError(f"Unknown estimator {name!r}: use one of {', '.join(ESTIMATORS)}.")
