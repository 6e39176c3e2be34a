"""Numerically stable math for BMRS gates: truncated log-normal posteriors under a log-uniform prior.

A gate ``theta = exp(phi)`` has the posterior ``phi ~ N(mu, sigma**2)`` truncated to ``[A, B] = [lower, upper]`` and
the prior ``phi ~ U[A, B]``. With ``alpha = (A - mu) / sigma`` and ``beta = (B - mu) / sigma``, ``Z = Phi(beta) -
Phi(alpha)``:

* ``KL(q || p) = log(B - A) - H[q]``, where ``H[q]`` is the entropy of the truncated normal;
* ``E[theta**k] = exp(k mu + k**2 sigma**2 / 2) Z_k / Z``, where ``Z_k`` is ``Z`` with the mean moved to
  ``mu + k sigma**2``;
* BMRS_N: ``dF = log(B - A) + log Z_rq - log Z_q - log Z_rp + log N(mu | mu_rp, sigma**2 + sigma_rp**2)``, with the
  reduced (spike) prior ``rp`` and the reduced posterior ``rq``. This is paper Eq. 8 in stable form;
* BMRS_U: ``dF = log q(a' <= theta <= b') - log[(log b' - log a') / (B - A)]``.

When ``mu`` is far outside ``[A, B]``, ``Z`` underflows and the textbook formulas cancel catastrophically. So every
log mass is split as ``log(Phi(hi) - Phi(lo)) = h - m**2 / 2``, with ``m = dist(0, [lo, hi])``. The part ``h`` comes
from ``erfcx`` without cancellation; the large ``m**2 / 2`` terms cancel in closed form. The inverse Mills ratio minus
its argument comes from a continued fraction. ``log_ndtr`` is only called for arguments >= 0, because torch's
gradient of it is wrong for very negative arguments.
"""

import math
from functools import reduce

import torch
from torch import Tensor


TensorLike = Tensor | float

_LOG_2PI = math.log(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT2 = math.sqrt(0.5)
_LN2 = math.log(2.0)
_CF_SWITCH, _CF_TERMS = 5.0, 30  # the continued fraction is accurate to ~1e-16 for s >= 5 with 30 terms
_GL4 = ((0.0694318442029737, 0.1739274225687269), (0.3300094782075719, 0.3260725774312731),
        (0.6699905217924281, 0.3260725774312731), (0.9305681557970263, 0.1739274225687269))  # fmt: skip


def _float_dtype(*xs: TensorLike) -> torch.dtype:
    """The float dtype of the tensors among `xs` (Python scalars do not take part in type promotion, as in torch)."""
    dtype = reduce(torch.promote_types, [x.dtype for x in xs if isinstance(x, Tensor)], torch.bool)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _prep(*xs: TensorLike, dtype: torch.dtype | None = None) -> list[Tensor]:
    """Broadcasts to tensors of one float dtype."""
    tensors = [x for x in xs if isinstance(x, Tensor)]
    dtype = dtype or _float_dtype(*xs)
    device = tensors[0].device if tensors else None
    return list(torch.broadcast_tensors(*[torch.as_tensor(x, dtype=dtype, device=device) for x in xs]))


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``."""
    return torch.where(x > -_LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _inv_mills(s: Tensor) -> tuple[Tensor, Tensor]:
    """``lam = phi(s) / Phi(-s)`` and ``d = lam - s`` for ``s >= 0`` (``d`` by continued fraction if ``s >= 5``)."""
    s_lo, s_hi = s.clamp(max=_CF_SWITCH), s.clamp(min=_CF_SWITCH)
    acc = torch.zeros_like(s_hi)
    for k in range(_CF_TERMS, 1, -1):
        acc = k / (s_hi + acc)
    d = torch.where(s < _CF_SWITCH, _SQRT_2_OVER_PI / torch.special.erfcx(s_lo * _INV_SQRT2) - s_lo, 1 / (s_hi + acc))
    return s + d, d


class _LogHalfErfcx(torch.autograd.Function):
    """``log Phi(-x) + x**2 / 2`` for ``x >= 0``. The gradient ``x - lam(x)`` is taken from `_inv_mills`, because
    torch's own ``erfcx`` backward cancels catastrophically for large ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.log(torch.special.erfcx(x * _INV_SQRT2) / 2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return -grad * _inv_mills(ctx.saved_tensors[0])[1]


_log_half_erfcx = _LogHalfErfcx.apply


def _log_ndtr(x: Tensor) -> Tensor:
    """``log Phi(x)`` with accurate values and gradients for every finite ``x``."""
    xn = x.clamp(max=0.0)
    return torch.where(x < 0, _log_half_erfcx(-xn) - xn * xn / 2, torch.special.log_ndtr(x.clamp(min=0.0)))


def _standardize(mu: Tensor, sigma: Tensor, lower: TensorLike, upper: TensorLike) -> tuple[Tensor, Tensor, Tensor]:
    return (lower - mu) / sigma, (upper - mu) / sigma, (upper - lower) / sigma


def _mirror(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``[s, t]`` with ``Phi(hi) - Phi(lo) = Phi(-s) - Phi(-t)`` and ``t > max(s, 0)``."""
    flip = lo + hi < 0
    return torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)


def _log_mass(lo: Tensor, hi: Tensor, width: Tensor) -> tuple[Tensor, Tensor]:
    """``(h, m)`` with ``log(Phi(hi) - Phi(lo)) = h - m**2 / 2`` and ``m = dist(0, [lo, hi])``; ``width = hi - lo``."""
    s, t = _mirror(lo, hi)
    tail, sc, sm = s > 0, s.clamp(min=0.0), s.clamp(max=0.0)
    ls, lt = _log_half_erfcx(sc), _log_half_erfcx(t)
    h_tail = ls + _log1mexp(lt - ls - torch.where(tail, width, t - sc) * (t + sc) / 2)
    lps = torch.special.log_ndtr(-sm)  # log Phi(-s) for s <= 0; log Phi(-t) = lt - t**2 / 2
    return torch.where(tail, h_tail, lps + _log1mexp(lt - t * t / 2 - lps)), sc


def log_normalizer(mu: TensorLike, sigma: TensorLike, lower: TensorLike = -20.0, upper: TensorLike = 0.0) -> Tensor:
    """``log Z = log(Phi(beta) - Phi(alpha))`` of ``N(mu, sigma**2)`` truncated to ``[lower, upper]``. It stays finite
    and accurate where ``Z`` underflows."""
    mu, sigma = _prep(mu, sigma)
    h, m = _log_mass(*_standardize(mu, sigma, lower, upper))
    return h - m * m / 2


def _log_moment(mu: Tensor, sigma: Tensor, k: int, lower: float, upper: float) -> tuple[Tensor, ...]:
    """``(log E[theta**k], h_0, h_k, m_0, m_k)``. The quadratic parts of ``log Z_k - log Z`` cancel in closed form."""
    alpha, beta, w = _standardize(mu, sigma, lower, upper)
    c = k * sigma
    (h0, m0), (hk, mk) = _log_mass(alpha, beta, w), _log_mass(alpha - c, beta - c, w)
    low0, high0, lowk, highk = alpha >= 0, beta <= 0, alpha >= c, beta <= c  # which bound is nearest to 0
    quad = torch.where(lowk, k * lower,
           torch.where(low0 & highk, k * upper - w * (beta + alpha) / 2,
           torch.where(low0, k * lower + (c - alpha) ** 2 / 2,
           torch.where(high0, k * upper,
           torch.where(highk, k * upper - beta**2 / 2, k * mu + c * c / 2)))))  # fmt: skip
    return (quad + hk - h0).clamp(k * lower, k * upper), h0, hk, m0, mk  # the clamp only removes rounding


def truncated_lognormal_kl(mu: TensorLike, sigma: TensorLike, *, lower: float = -20.0, upper: float = 0.0) -> Tensor:
    """Exact ``KL(N(mu, sigma**2) truncated to [lower, upper] || U[lower, upper])``, elementwise and differentiable.

    Args:
        mu (`torch.Tensor` or `float`): Location of the untruncated normal on ``log theta`` (any real value).
        sigma (`torch.Tensor` or `float`): Scale, ``> 0``; broadcast with ``mu``.
        lower (`float`, defaults to -20.0) and upper (`float`, defaults to 0.0): Truncation bounds of ``log theta``.

    Returns:
        `torch.Tensor`: The KL in nats, in the promoted dtype of the inputs (float32 works for training).
    """
    mu, sigma = _prep(mu, sigma)
    alpha, beta, w = _standardize(mu, sigma, lower, upper)
    s, t = _mirror(alpha, beta)
    tail, sc, sm = s > 0, s.clamp(min=0.0), s.clamp(max=0.0)
    # One-sided: the mass sits against the nearer bound. -log Z - s phi(s) / (2 Z) is rewritten with d = lam(s) - s.
    lam_s, d_s = _inv_mills(sc)
    lt = _log_half_erfcx(t)
    log_r = lt - _log_half_erfcx(sc) - torch.where(tail, w, t - sc) * (t + sc) / 2  # log Phi(-t) / Phi(-s)
    kl_tail = (torch.log(w) - 0.5 + torch.log(lam_s) - sc * d_s / 2 - _log1mexp(log_r)
               + (t * _inv_mills(t)[0] - sc * lam_s) * torch.exp(log_r) / (-2 * torch.expm1(log_r)))  # fmt: skip
    # Two-sided: the textbook entropy is stable.
    lps = torch.special.log_ndtr(-sm)
    log_z = lps + _log1mexp(lt - t * t / 2 - lps)
    pdf_term = (sm * torch.exp(-sm * sm / 2) - t * torch.exp(-t * t / 2)) * torch.exp(-log_z - _LOG_2PI / 2)
    return torch.where(tail, kl_tail, torch.log(w) - (_LOG_2PI + 1) / 2 - log_z - pdf_term / 2)


def truncated_lognormal_mean(mu: TensorLike, sigma: TensorLike, *, lower: float = -20.0, upper: float = 0.0) -> Tensor:
    """``E[theta]`` for ``log theta ~ N(mu, sigma**2)`` truncated to ``[lower, upper]``; differentiable.

    Computed as ``exp(mu + sigma**2 / 2 + log(Phi(beta - sigma) - Phi(alpha - sigma)) - log Z)``, with the quadratic
    parts cancelled in closed form. The result is finite and inside ``[e**lower, e**upper]`` for all finite inputs,
    float32 included.
    """
    mu, sigma = _prep(mu, sigma)
    return torch.exp(_log_moment(mu, sigma, 1, lower, upper)[0])


def truncated_lognormal_second_moment(
    mu: TensorLike, sigma: TensorLike, *, lower: float = -20.0, upper: float = 0.0
) -> Tensor:
    """``E[theta**2] = exp(2 mu + 2 sigma**2) (Phi(beta - 2 sigma) - Phi(alpha - 2 sigma)) / Z``, in log space."""
    mu, sigma = _prep(mu, sigma)
    return torch.exp(_log_moment(mu, sigma, 2, lower, upper)[0])


def _trunc_var(x: Tensor) -> Tensor:
    """Variance ``1 - lam (lam - x)`` of ``N(0, 1)`` truncated to ``[x, inf)``, for ``x >= 0``."""
    x_lo, x_hi = x.clamp(max=_CF_SWITCH), x.clamp(min=_CF_SWITCH)
    lam, d = _inv_mills(x_lo)
    e = torch.zeros_like(x_hi)
    for k in range(_CF_TERMS, 2, -1):
        e = k / (x_hi + e)
    c = 2 / (x_hi + e)  # d = 1 / (x + c), c = 2 / (x + e): 1 - lam d = (x**2 + 4 - e**2) / ((x + e)**2 (x + c)**2)
    return torch.where(x < _CF_SWITCH, 1 - lam * d, (x_hi**2 + 4 - e**2) / ((x_hi + e) ** 2 * (x_hi + c) ** 2))


def truncated_lognormal_snr(mu: TensorLike, sigma: TensorLike, *, lower: float = -20.0, upper: float = 0.0) -> Tensor:
    """Signal-to-noise ratio ``E[theta] / SD(theta)``, for the SNR < 1 baseline. Computed and returned in float64.

    ``Var / E**2 = expm1(log E[theta**2] - 2 log E[theta])``. The log ratio is built without cancellation (it is
    exactly ``sigma**2`` when nothing is truncated). When the posterior is pressed against a bound and ``sigma`` is
    small next to the standardised distance, the second difference of the log masses is replaced by the integral of
    its second derivative (a truncated-normal variance), so very large SNRs are accurate as well.
    """
    mu, sigma = _prep(mu, sigma, dtype=torch.float64)
    (_, h0, h1, m0, m1), (_, _, h2, _, m2) = (_log_moment(mu, sigma, k, lower, upper) for k in (1, 2))
    alpha, beta, w = _standardize(mu, sigma, lower, upper)
    one_sided = (alpha >= 2 * sigma) | (beta <= 0)  # the same bound is nearest for k = 0, 1, 2
    log_ratio = torch.where(one_sided, 0.0, sigma**2 + (2 * m1**2 - m0**2 - m2**2) / 2) + h2 + h0 - 2 * h1
    # One-sided, mirrored standardised bounds x1 - sigma, x1, x1 + sigma: for L(x) = log Phi(-x) + x**2 / 2,
    # L(x1 + sigma) + L(x1 - sigma) - 2 L(x1) = int_{-sigma}^{sigma} (sigma - |u|) L''(x1 + u) du, L'' = _trunc_var.
    x1 = torch.where(beta <= 0, sigma - beta, alpha - sigma).clamp(min=sigma)
    fine = one_sided & (sigma <= 0.01 * x1.clamp(min=1.0))
    d2 = sigma**2 * sum(g * (1 - y) * (_trunc_var(x1 + sigma * y) + _trunc_var(x1 - sigma * y)) for y, g in _GL4)
    for k, x in ((1, x1 - sigma), (-2, x1), (1, x1 + sigma)):  # plus the log(1 - Phi(-t) / Phi(-s)) parts of h
        d2 = d2 + k * _log1mexp(_log_half_erfcx(x + w) - _log_half_erfcx(x) - w * (2 * x + w) / 2)
    return torch.rsqrt(torch.expm1(torch.where(fine, d2, log_ratio)).clamp(min=torch.finfo(torch.float64).tiny))


def delta_f_normal(
    mu: TensorLike,
    sigma: TensorLike,
    *,
    prior_mean: TensorLike | None = None,
    prior_sigma: TensorLike = 1e-6,
    lower: float = -20.0,
    upper: float = 0.0,
    code_parity: bool = False,
) -> Tensor:
    """BMRS_N ``dF`` for the reduced prior ``N(prior_mean, prior_sigma**2)`` truncated to ``[lower, upper]``.

    This is the stable form of paper Eq. 8 (bmrs.md section 4.2), computed in float64. All three log normalisers are
    anchored at ``phi* = clip(mu_rq)``, so their quadratic terms cancel in closed form. Prune when ``dF >= 0``.

    Args:
        mu (`torch.Tensor` or `float`) and sigma (`torch.Tensor` or `float`): Posterior parameters (broadcast).
        prior_mean (`torch.Tensor` or `float`, *optional*): Mean of the reduced prior; defaults to ``lower``.
        prior_sigma (`torch.Tensor` or `float`, defaults to 1e-6): SD of the reduced prior (paper: variance 1e-12).
        lower (`float`, defaults to -20.0) and upper (`float`, defaults to 0.0): Truncation bounds.
        code_parity (`bool`, defaults to `False`): Add ``0.5 log(2 pi)``, the constant the authors' code drops
            (bmrs.md section 4.3). Needed to reproduce their pruning decisions.

    Returns:
        `torch.Tensor`: ``dF`` in float64.
    """
    m_p = lower if prior_mean is None else prior_mean
    mu, sigma, m_p, s_p = _prep(mu, sigma, m_p, prior_sigma, dtype=torch.float64)
    var, var_p = sigma**2, s_p**2
    tot = var + var_p
    d_q, d_p = (m_p - mu) * (var / tot), (mu - m_p) * (var_p / tot)  # mu_rq - mu and mu_rq - m_p
    s_rq = sigma * s_p / torch.sqrt(tot)
    near_mu = var <= var_p  # measure mu_rq from the closer of the two means
    lo_rq, hi_rq = (torch.where(near_mu, b - mu - d_q, b - m_p - d_p) / s_rq for b in (lower, upper))
    h_rq = _log_mass(lo_rq, hi_rq, (upper - lower) / s_rq)[0]  # the anchor of h_rq is phi* itself
    out = math.log(upper - lower) - (_LOG_2PI + torch.log(tot)) / 2 + h_rq
    for m, s, d in ((mu, sigma, d_q), (m_p, s_p, d_p)):
        e = m.clamp(lower, upper)  # anchor of this normaliser's h
        g = torch.minimum(torch.maximum(m - e + d, lower - e), upper - e)  # phi* - e, without forming phi*
        out = out - _log_mass(*_standardize(m, s, lower, upper))[0] - g * (g + 2 * (e - m)) / (2 * s * s)
    return out + _LOG_2PI / 2 if code_parity else out


def delta_f_normal_eq8(
    mu: TensorLike,
    sigma: TensorLike,
    *,
    prior_mean: TensorLike | None = None,
    prior_sigma: TensorLike = 1e-6,
    lower: float = -20.0,
    upper: float = 0.0,
) -> Tensor:
    """Paper Eq. 8 as printed, in float64 (only the ``log Z`` terms use `log_normalizer`). For tests and documentation:
    with ``prior_sigma = 1e-6`` it subtracts numbers of size ~4e14 and is off by up to ~0.1 nats."""
    m_p = lower if prior_mean is None else prior_mean
    mu, sigma, m_p, s_p = _prep(mu, sigma, m_p, prior_sigma, dtype=torch.float64)
    var_rq = 1 / (1 / sigma**2 + 1 / s_p**2)
    mu_rq = var_rq * (mu / sigma**2 + m_p / s_p**2)
    log_zs = [log_normalizer(m, s, lower, upper) for m, s in ((mu_rq, var_rq.sqrt()), (mu, sigma), (m_p, s_p))]
    return (math.log(upper - lower) + log_zs[0] - log_zs[1] - log_zs[2]
            + 0.5 * torch.log(var_rq / (2 * math.pi * s_p**2 * sigma**2))
            - 0.5 * (mu**2 / sigma**2 + m_p**2 / s_p**2 - mu_rq**2 / var_rq))  # fmt: skip


def delta_f_uniform(
    mu: TensorLike, sigma: TensorLike, *, p1: int = 8, p2: int = 23, lower: float = -20.0, upper: float = 0.0
) -> Tensor:
    """BMRS_U ``dF = log q(2**-p2 <= theta <= 2**-p1) - log[(p2 - p1) log 2 / (upper - lower)]``, in float64.

    As in the authors' code (bmrs.md section 10 #11), ``mu`` is clamped into ``[lower, upper]`` before the mass is
    computed. A posterior whose ``mu`` lies outside the interval is therefore scored as if ``mu`` sat on the nearer
    bound. Prune when ``dF >= 0``, i.e. when the posterior mass of ``[a', b']`` is at least its prior mass
    ``(p2 - p1) log 2 / (upper - lower)`` (0.5199 for ``p1 = 8``, 0.6585 for ``p1 = 4``).

    Raises:
        ValueError: If ``p1 >= p2``, or if ``[2**-p2, 2**-p1]`` is not inside ``(e**lower, e**upper]``.
    """
    if not p1 < p2:
        raise ValueError(f"BMRS_U needs p1 < p2, got p1={p1}, p2={p2}.")
    log_a, log_b = -p2 * _LN2, -p1 * _LN2
    if not lower < log_a <= log_b <= upper:
        raise ValueError(f"BMRS_U needs e**lower < 2**-p2 and 2**-p1 <= e**upper, got lower={lower}, upper={upper}.")
    mu, sigma = _prep(mu, sigma, dtype=torch.float64)
    mu = mu.clamp(lower, upper)
    log_mass = log_normalizer(mu, sigma, log_a, log_b) - log_normalizer(mu, sigma, lower, upper)
    return log_mass - math.log((log_b - log_a) / (upper - lower))


def _ndtri_log(lp: Tensor) -> Tensor:
    """Solves ``log Phi(x) = lp``, also where ``exp(lp)`` underflows (Newton on ``log Phi``, implicit gradient)."""
    thr = math.log(torch.finfo(lp.dtype).tiny) / 2
    lp_tail = lp.clamp(max=thr)
    # The Newton steps are most of the sampler's cost, and usually no value is in the tail. On the CPU a host check
    # is free, so they are skipped then; on an accelerator the branchless form avoids a device sync.
    if lp.device.type == "cpu" and not bool((lp < thr).any()):
        return torch.special.ndtri(torch.exp(lp))
    with torch.no_grad():
        y = -2 * lp_tail
        x = -torch.sqrt(y - torch.log(2 * math.pi * y))  # asymptotic start; log Phi is concave, so Newton is safe
        for _ in range(5):
            x = x - (_log_ndtr(x) - lp_tail) * torch.special.erfcx(-x * _INV_SQRT2) / _SQRT_2_OVER_PI
        slope = _SQRT_2_OVER_PI / torch.special.erfcx(-x * _INV_SQRT2)  # d log Phi / dx at the root
    x_tail = x + (lp_tail - lp_tail.detach()) / slope  # same value, gradient 1 / slope
    return torch.where(lp < thr, x_tail, torch.special.ndtri(torch.exp(lp.clamp(min=thr))))


def sample_truncated_lognormal(
    mu: TensorLike, sigma: TensorLike, u: TensorLike, *, lower: float = -20.0, upper: float = 0.0, eps: float = 1e-5
) -> Tensor:
    """Reparameterised inverse-CDF sample ``theta = exp(phi)`` of the truncated log-normal (bmrs.md section 2.5).

    ``phi = mu + sigma Phi^-1(Phi(alpha) + u Z)``, clipped to ``[lower, upper]``. The inverse CDF is evaluated in log
    space, on whichever side of the normal puts the interval in the lower tail. The reference code clips
    ``gamma = Phi(alpha) + u Z`` to ``[1e-5, 1 - 1e-5]``, which sends every sample to one bound once ``Z`` is tiny.
    Here ``u`` is clipped to ``[eps, 1 - eps]`` instead. For an interval that covers the bulk of the normal the two
    clips are nearly the same; for a posterior far outside the interval this one does not collapse. Differentiable
    with respect to ``mu`` and ``sigma``.

    Args:
        mu (`torch.Tensor` or `float`) and sigma (`torch.Tensor` or `float`): Posterior parameters.
        u (`torch.Tensor` or `float`): Uniform(0, 1) draws, broadcast with ``mu`` and ``sigma``.
        lower (`float`, defaults to -20.0) and upper (`float`, defaults to 0.0): Truncation bounds.
        eps (`float`, defaults to 1e-5): Clip for ``u``.
    """
    dtype = _float_dtype(mu, sigma, u)
    mu, sigma = _prep(mu, sigma, dtype=dtype)
    u = torch.as_tensor(u, dtype=dtype, device=mu.device).clamp(eps, 1 - eps)
    # everything that depends on the unit only is computed once per unit, not once per draw
    alpha, beta, _ = _standardize(mu, sigma, lower, upper)
    flip = alpha + beta > 0
    lo, hi = torch.where(flip, -beta, alpha), torch.where(flip, -alpha, beta)
    v = torch.where(flip, 1 - u, u)  # u -> 1 - u keeps theta an increasing function of u
    log_gamma = torch.logaddexp(torch.log1p(-v) + _log_ndtr(lo), torch.log(v) + _log_ndtr(hi))
    z = torch.minimum(torch.maximum(_ndtri_log(log_gamma), lo), hi)
    return torch.exp((mu + sigma * torch.where(flip, -z, z)).clamp(lower, upper))
