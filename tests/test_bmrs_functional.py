"""Checks the BMRS closed forms against numerical integration of their definitions.

The references use float64 numpy and composite Gauss-Legendre quadrature. The panels are refined geometrically
around the peak of each integrand, and the integrals are taken in coordinates relative to an anchor point. This
resolves posteriors squeezed to widths of ~1e-8 against a bound, and the 1e-6 spike of the BMRS_N reduced prior. Each
log integrand is written relative to its value at the anchor, so the references stay finite when the normaliser
underflows.
"""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from hf_prune.methods.bmrs.functional import (
    delta_f_normal,
    delta_f_normal_eq8,
    delta_f_uniform,
    log_normalizer,
    sample_truncated_lognormal,
    truncated_lognormal_kl,
    truncated_lognormal_mean,
    truncated_lognormal_second_moment,
    truncated_lognormal_snr,
)


A, B = -20.0, 0.0
MUS = [-60.0, -25.0, -20.0, -10.0, -3.0, -0.5, 0.0, 0.5, 3.0, 20.0]
SIGMAS = [1e-3, 0.0067, 0.1, 1.0, 5.0, 13.0, 30.0]
GRID = list(itertools.product(MUS, SIGMAS))
RTOL = 1e-6
_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)


# ---------------------------------------------------------------------------------------------------------------------
# Reference quadrature
# ---------------------------------------------------------------------------------------------------------------------
def _nodes(lo, hi, scale, centers=(0.0,)):
    """Composite Gauss-Legendre nodes and weights on [lo, hi]: panel edges at centre +- scale * 2**j, j >= -6."""
    steps = scale * 2.0 ** np.arange(-6, 200)
    steps = steps[steps < 2 * (hi - lo)]
    edges = [lo, hi, *centers] + [c + sign * steps for c in centers for sign in (-1.0, 1.0)]
    edges = np.unique(np.clip(np.concatenate([np.atleast_1d(e) for e in edges]), lo, hi))
    a, b = edges[:-1], edges[1:]
    return ((a + b) / 2 + np.outer(_GL_X, (b - a) / 2)).ravel(), np.outer(_GL_W, (b - a) / 2).ravel()


def _log_integral(log_f, lo, hi, scale, centers=(0.0,)):
    """log of int_lo^hi exp(log_f(x)) dx."""
    x, w = _nodes(lo, hi, scale, centers)
    v = log_f(x)
    top = v.max()
    return top + math.log(np.sum(w * np.exp(v - top)))


def _expectation(log_f, g, lo, hi, scale):
    """int exp(log_f) g / int exp(log_f) over [lo, hi]."""
    x, w = _nodes(lo, hi, scale)
    v = log_f(x)
    p = w * np.exp(v - v.max())
    return np.sum(p * g(x)) / np.sum(p)


def _clip(x, lo=A, hi=B):
    return min(max(x, lo), hi)


def _rel_exponent(c, m, s):
    """x -> log N(c + x; m, s**2) - log N(c; m, s**2), evaluated without forming c + x."""
    return lambda x: -x * (x + 2 * (c - m)) / (2 * s * s)


def _log_n_shift(c, e, m, s):
    """log N(c; m, s**2) - log N(e; m, s**2)."""
    return -(c - e) * (c + e - 2 * m) / (2 * s * s)


def _scale(m, s, anchor):
    """Width of a normal N(m, s**2) restricted to an interval whose point nearest to m is ``anchor``."""
    return s * min(1.0, s / abs(m - anchor)) if m != anchor else s


def _ref_log_z(m, s, lo=A, hi=B):
    """(anchor, log N(anchor), log I): log int_lo^hi N(phi; m, s**2) = log N(anchor) + log I."""
    c = _clip(m, lo, hi)
    log_i = _log_integral(_rel_exponent(c, m, s), lo - c, hi - c, _scale(m, s, c))
    return c, -((c - m) ** 2) / (2 * s * s) - math.log(s * math.sqrt(2 * math.pi)), log_i


def ref_kl(mu, sigma):
    """KL = int q log(q / p) with q = N / Z on [A, B] and p = 1 / (B - A)."""
    c = _clip(mu)
    log_f = _rel_exponent(c, mu, sigma)  # log q(c + x) = log_f(x) - log I
    log_i = _log_integral(log_f, A - c, B - c, _scale(mu, sigma, c))
    return math.log(B - A) + _expectation(log_f, log_f, A - c, B - c, _scale(mu, sigma, c)) - log_i


def ref_log_moment(mu, sigma, k):
    """(log E[theta**k], anchor of q) from int e^(k phi) N(phi) dphi / int N(phi) dphi."""
    c0, _, log_i0 = _ref_log_z(mu, sigma)
    m_k = mu + k * sigma**2  # e^(k phi) N(phi; mu, sigma^2) is proportional to N(phi; m_k, sigma^2): sets the grid
    ck = _clip(m_k)
    log_ik = _log_integral(lambda x: k * x + _rel_exponent(ck, mu, sigma)(x), A - ck, B - ck, _scale(m_k, sigma, ck))
    return k * ck + _log_n_shift(ck, c0, mu, sigma) + log_ik - log_i0, c0


def ref_snr(mu, sigma):
    """E[theta] / sqrt(E[(theta - E[theta])**2]), the variance integrated directly (no moment differences)."""
    log_mean, c0 = ref_log_moment(mu, sigma, 1)
    delta = log_mean - c0  # theta / E = exp(x - delta) with phi = c0 + x
    rel_var = _expectation(
        _rel_exponent(c0, mu, sigma), lambda x: np.expm1(x - delta) ** 2, A - c0, B - c0, _scale(mu, sigma, c0)
    )
    return 1 / math.sqrt(rel_var)


def ref_delta_f_normal(mu, sigma, prior_mean, prior_sigma):
    """log int_A^B q(phi) p~(phi) / p(phi) dphi, with q and p~ truncated normals and p uniform."""
    tot = sigma**2 + prior_sigma**2
    m_rq = (mu * prior_sigma**2 + prior_mean * sigma**2) / tot
    s_rq = sigma * prior_sigma / math.sqrt(tot)
    c = _clip(m_rq)  # peak of the integrand: it only places the grid, the integrand is the definition
    eq, _, log_iq = _ref_log_z(mu, sigma)
    ep, _, log_ip = _ref_log_z(prior_mean, prior_sigma)

    def log_f(x):
        return _rel_exponent(c, mu, sigma)(x) + _rel_exponent(c, prior_mean, prior_sigma)(x)

    log_i = _log_integral(log_f, A - c, B - c, _scale(m_rq, s_rq, c), centers=(0.0, eq - c, ep - c))
    shifts = _log_n_shift(c, eq, mu, sigma) + _log_n_shift(c, ep, prior_mean, prior_sigma)
    return math.log(B - A) + shifts + log_i - log_iq - log_ip


def ref_log_mass(mu, sigma, lo, hi):
    """log q(lo <= phi <= hi) for q = N(mu, sigma**2) truncated to [A, B] (lo, hi inside [A, B])."""
    c1, _, log_i1 = _ref_log_z(mu, sigma, lo, hi)
    c0, _, log_i0 = _ref_log_z(mu, sigma)
    return _log_n_shift(c1, c0, mu, sigma) + log_i1 - log_i0


def ref_delta_f_uniform(mu, sigma, p1, p2=23):
    """log int q p~ / p for p~ uniform on [log 2**-p2, log 2**-p1]; mu clamped into [A, B] as in the reference code."""
    la, lb = -p2 * math.log(2), -p1 * math.log(2)
    return math.log((B - A) / (lb - la)) + ref_log_mass(_clip(mu), sigma, la, lb)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------
def _grid_tensors(dtype=torch.float64):
    mu, sigma = zip(*GRID)
    return torch.tensor(mu, dtype=dtype), torch.tensor(sigma, dtype=dtype)


def _assert_close(got, ref, name, rtol=RTOL, atol=1e-12):
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert np.all(np.isfinite(got)), f"{name}: non-finite values at {np.argwhere(~np.isfinite(got)).ravel()}"
    err = np.abs(got - ref)
    bad = err > atol + rtol * np.abs(ref)
    assert not bad.any(), f"{name}: mismatches (mu, sigma, got, ref): " + str(
        [(*GRID[i], got[i], ref[i]) for i in np.flatnonzero(bad)][:5]
    )


# ---------------------------------------------------------------------------------------------------------------------
# KL, normaliser, moments, SNR
# ---------------------------------------------------------------------------------------------------------------------
def test_log_normalizer_matches_quadrature():
    mu, sigma = _grid_tensors()
    ref = [sum(_ref_log_z(m, s)[1:]) for m, s in GRID]
    _assert_close(log_normalizer(mu, sigma), ref, "log Z")


def test_kl_matches_quadrature():
    mu, sigma = _grid_tensors()
    _assert_close(truncated_lognormal_kl(mu, sigma), [ref_kl(m, s) for m, s in GRID], "KL")


def test_kl_at_initialisation():
    # mu = 0, log sigma = -5 is a half-normal: KL = log 20 + 5 - log(pi e / 2) / 2 = 7.26994 nats.
    kl = truncated_lognormal_kl(
        torch.tensor(0.0, dtype=torch.float64), torch.tensor(math.exp(-5.0), dtype=torch.float64)
    )
    assert kl.item() == pytest.approx(math.log(20.0) + 5.0 - 0.5 * math.log(math.pi * math.e / 2), rel=1e-12)
    # bmrs.md quotes "about 7.28": that is the value at the rounded sigma = 0.0067.
    assert truncated_lognormal_kl(0.0, 0.0067).item() == pytest.approx(7.28, abs=5e-3)


def test_mean_and_second_moment_match_quadrature():
    mu, sigma = _grid_tensors()
    _assert_close(
        truncated_lognormal_mean(mu, sigma), [math.exp(ref_log_moment(m, s, 1)[0]) for m, s in GRID], "E[theta]"
    )
    _assert_close(
        truncated_lognormal_second_moment(mu, sigma),
        [math.exp(ref_log_moment(m, s, 2)[0]) for m, s in GRID],
        "E[theta^2]",
        atol=0.0,
    )


def test_snr_matches_quadrature():
    mu, sigma = _grid_tensors()
    snr = truncated_lognormal_snr(mu, sigma)
    assert snr.dtype == torch.float64
    _assert_close(snr, [ref_snr(m, s) for m, s in GRID], "SNR", atol=0.0)


def test_float32_matches_float64():
    mu32, sigma32 = _grid_tensors(torch.float32)
    mu64, sigma64 = mu32.double(), sigma32.double()
    kl32, kl64 = truncated_lognormal_kl(mu32, sigma32), truncated_lognormal_kl(mu64, sigma64)
    assert kl32.dtype == torch.float32
    torch.testing.assert_close(kl32.double(), kl64, rtol=1e-5, atol=1e-5)
    mean32, mean64 = truncated_lognormal_mean(mu32, sigma32), truncated_lognormal_mean(mu64, sigma64)
    torch.testing.assert_close(mean32.double(), mean64, rtol=1e-5, atol=0.0)


EXTREME_MUS = [-1e4, -60.0, -20.0 - 1e-3, -20.0, -19.999, -10.0, -1e-3, 0.0, 1e-3, 0.5, 20.0, 1e4]
EXTREME_SIGMAS = [2e-9, 1e-6, 1e-3, 0.0067, 1.0, 13.0, 30.0, 148.4]  # exp(-20) ... exp(5): the log-sigma clamp range


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_finite_at_extremes(dtype):
    mu, sigma = (
        t.to(dtype) for t in torch.meshgrid(torch.tensor(EXTREME_MUS), torch.tensor(EXTREME_SIGMAS), indexing="ij")
    )
    mu, sigma = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
    u = torch.rand(mu.shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    for fn in (truncated_lognormal_kl, truncated_lognormal_mean, log_normalizer):
        out = fn(mu, sigma)
        grads = torch.autograd.grad(out.sum(), (mu, sigma))
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads), fn.__name__
    mean = truncated_lognormal_mean(mu, sigma).detach()
    slack = 10 * torch.finfo(dtype).eps  # inside [e^A, e^B] up to rounding
    assert (mean >= math.exp(A) * (1 - slack)).all() and (mean <= math.exp(B) * (1 + slack)).all()
    assert (truncated_lognormal_kl(mu, sigma) >= -1e-5).all()
    theta = sample_truncated_lognormal(mu, sigma, u)
    grads = torch.autograd.grad(theta.sum(), (mu, sigma))
    assert torch.isfinite(theta).all() and all(torch.isfinite(g).all() for g in grads)
    for fn in (truncated_lognormal_snr, delta_f_normal, delta_f_uniform):
        assert torch.isfinite(fn(mu.detach(), sigma.detach())).all(), fn.__name__


def test_gradients_match_finite_differences():
    mu, sigma = _grid_tensors()
    dist = torch.clamp(A - mu, min=0) + torch.clamp(mu - B, min=0)
    scale = sigma * torch.clamp(sigma / dist, max=1.0)  # local length scale of the truncated posterior
    for fn in (truncated_lognormal_kl, truncated_lognormal_mean):
        m, s = mu.clone().requires_grad_(), sigma.clone().requires_grad_()
        out = fn(m, s)
        g_mu, g_sigma = torch.autograd.grad(out.sum(), (m, s))
        h = 1e-5 * scale
        fd_mu = (fn(mu + h, sigma) - fn(mu - h, sigma)) / (2 * h)
        fd_sigma = (fn(mu, sigma + h) - fn(mu, sigma - h)) / (2 * h)
        tol = 1e-5 * (fd_mu.abs() + fd_sigma.abs()) + 1e-8 * (1 + out.abs().detach()) / scale
        assert ((g_mu - fd_mu).abs() <= tol).all(), fn.__name__
        assert ((g_sigma - fd_sigma).abs() <= tol).all(), fn.__name__


# ---------------------------------------------------------------------------------------------------------------------
# BMRS_N
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prior_sigma", [1e-6, 1e-2, 1e-1, 1.0])
@pytest.mark.parametrize("prior_mean", [None, -19.5, -10.0, -25.0])
def test_delta_f_normal_matches_quadrature(prior_mean, prior_sigma):
    mu, sigma = _grid_tensors()
    got = delta_f_normal(mu, sigma, prior_mean=prior_mean, prior_sigma=prior_sigma)
    assert got.dtype == torch.float64
    m_p = A if prior_mean is None else prior_mean
    ref = [ref_delta_f_normal(m, s, m_p, prior_sigma) for m, s in GRID]
    _assert_close(got, ref, f"dF_N(prior N({m_p}, {prior_sigma}^2))", atol=1e-9)
    if prior_sigma >= 1e-2:  # the literal Eq. 8 is fine unless the prior is a narrow spike
        _assert_close(delta_f_normal_eq8(mu, sigma, prior_mean=prior_mean, prior_sigma=prior_sigma), ref, "Eq. 8")


def test_delta_f_normal_spike_limit():
    # sigma_p -> 0 with the spike at A: dF_N -> log[(B - A) q_log(A)] with q_log(A) = N(A; mu, sigma^2) / Z_q (bmrs.md
    # section 4.2).
    # The gap is O(sigma_p (mu - A) / sigma^2), hence the moderate points.
    for mu, sigma in itertools.product([-20.0, -15.0, -10.0, -3.0], [1.0, 5.0, 13.0, 30.0]):
        _, n_anchor, log_i = _ref_log_z(mu, sigma)
        log_q_at_a = -((A - mu) ** 2) / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi)) - n_anchor - log_i
        limit = math.log(B - A) + log_q_at_a
        assert delta_f_normal(mu, sigma).item() == pytest.approx(limit, abs=1e-4)


def test_delta_f_normal_code_parity_and_defaults():
    mu, sigma = _grid_tensors()
    stable = delta_f_normal(mu, sigma)
    torch.testing.assert_close(delta_f_normal(mu, sigma, code_parity=True), stable + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(stable, delta_f_normal(mu, sigma, prior_mean=A, prior_sigma=1e-6))
    # broadcasting, float32 inputs and no mutation of the inputs
    mu32 = torch.linspace(-25, 3, 7, dtype=torch.float32)
    before = mu32.clone()
    out = delta_f_normal(mu32[:, None], torch.tensor([0.1, 1.0, 13.0]))
    assert out.shape == (7, 3) and out.dtype == torch.float64
    assert torch.equal(mu32, before)


def test_eq8_literal_agrees_with_stable_form_for_moderate_values():
    mu, sigma = torch.meshgrid(
        torch.tensor([-19.0, -10.0, -3.0, -0.5], dtype=torch.float64),
        torch.tensor([0.1, 1.0, 5.0, 13.0], dtype=torch.float64),
        indexing="ij",
    )
    for prior_sigma in (1e-2, 0.1, 1.0):
        torch.testing.assert_close(
            delta_f_normal_eq8(mu, sigma, prior_sigma=prior_sigma),
            delta_f_normal(mu, sigma, prior_sigma=prior_sigma),
            rtol=1e-6,
            atol=1e-6,
        )


# ---------------------------------------------------------------------------------------------------------------------
# BMRS_U
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p1", [4, 8])
def test_delta_f_uniform_matches_quadrature(p1):
    mu, sigma = _grid_tensors()
    got = delta_f_uniform(mu, sigma, p1=p1)
    assert got.dtype == torch.float64
    _assert_close(got, [ref_delta_f_uniform(m, s, p1) for m, s in GRID], f"dF_U (p1={p1})", atol=1e-9)


@pytest.mark.parametrize(("p1", "mass"), [(8, 0.5199), (4, 0.6585)])
def test_delta_f_uniform_is_zero_at_the_required_prune_mass(p1, mass):
    sigma = 2.0
    lo, hi = -10.7, 0.0  # dF_U > 0 at the centre of [a', b'], < 0 at mu = 0
    f_lo, f_hi = delta_f_uniform(lo, sigma, p1=p1).item(), delta_f_uniform(hi, sigma, p1=p1).item()
    assert f_lo > 0 > f_hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_f_uniform(mid, sigma, p1=p1).item() > 0 else (lo, mid)
    la, lb = -23 * math.log(2), -p1 * math.log(2)
    q_mass = math.exp(ref_log_mass((lo + hi) / 2, sigma, la, lb))
    assert q_mass == pytest.approx((lb - la) / (B - A), abs=1e-10)
    assert round(q_mass, 4) == mass


def test_delta_f_uniform_validation_and_clamping():
    with pytest.raises(ValueError):
        delta_f_uniform(-10.0, 1.0, p1=23, p2=23)
    with pytest.raises(ValueError):
        delta_f_uniform(-10.0, 1.0, p1=8, p2=30)  # 2**-30 < e**-20
    with pytest.raises(ValueError):
        delta_f_uniform(-10.0, 1.0, p1=-1, p2=23)  # 2**1 > e**0
    # mu outside [A, B] is scored as if it sat on the nearer bound
    for outside, bound in ((-60.0, A), (3.0, B)):
        assert delta_f_uniform(outside, 2.0).item() == delta_f_uniform(bound, 2.0).item()


# ---------------------------------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------------------------------
SAMPLER_CASES = [(-60.0, 1e-3), (-25.0, 0.1), (-20.0, 0.0067), (-10.0, 1.0), (-3.0, 5.0), (0.0, 0.0067), (0.5, 0.1)]
SAMPLER_CASES += [(3.0, 0.1), (20.0, 1e-3), (20.0, 13.0), (-10.0, 30.0), (1e4, 148.4)]


@pytest.mark.parametrize(("mu", "sigma"), SAMPLER_CASES)
def test_sampler_range_and_monte_carlo_mean(mu, sigma):
    n = 50_000
    u = torch.rand(n, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    theta = sample_truncated_lognormal(torch.tensor(mu, dtype=torch.float64), sigma, u)
    assert theta.shape == (n,) and theta.dtype == torch.float64
    assert (theta >= math.exp(A)).all() and (theta <= math.exp(B)).all()
    assert theta.unique().numel() > n // 2  # no collapse onto a bound, even far outside the interval
    mean = truncated_lognormal_mean(mu, sigma).item()
    sd = mean / truncated_lognormal_snr(mu, sigma).item()
    assert abs(theta.mean().item() - mean) <= 5 * sd / math.sqrt(n) + 2e-5 * mean  # MC error + the u clip


def test_sampler_matches_reference_recipe_and_its_gradient_is_pathwise():
    # For an interval that covers the bulk of the normal, the sample is bmrs.md section 2.5 verbatim.
    nd = NormalDist()
    for mu, sigma in ((-10.0, 1.0), (-3.0, 5.0), (0.0, 0.0067)):
        alpha, beta = (A - mu) / sigma, (B - mu) / sigma
        for u in (0.01, 0.3, 0.5, 0.9, 0.99):
            gamma = min(max(nd.cdf(alpha) + u * (nd.cdf(beta) - nd.cdf(alpha)), 1e-5), 1 - 1e-5)
            expected = math.exp(_clip(mu + sigma * nd.inv_cdf(gamma)))
            got = sample_truncated_lognormal(torch.tensor(mu, dtype=torch.float64), sigma, u).item()
            assert got == pytest.approx(expected, rel=1e-9)
    # The Monte Carlo mean of the samples is differentiable and its gradient estimates d E[theta] / d(mu, sigma).
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for mu, sigma in ((-3.0, 5.0), (0.0, 0.0067)):
        m = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
        s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
        mc = torch.autograd.grad(sample_truncated_lognormal(m, s, u).mean(), (m, s))
        exact = torch.autograd.grad(truncated_lognormal_mean(m, s), (m, s))
        for g_mc, g in zip(mc, exact):
            assert g_mc.item() == pytest.approx(g.item(), rel=2e-2)


def test_sampler_per_draw_batches_match_single_draws_with_and_without_tail_values():
    # A gate samples [batch, units] draws from [units] parameters. Every draw must equal the draw made alone, whether
    # or not another unit of the batch is deep in the tail (which switches the inverse CDF to its Newton path).
    u = torch.rand(4, 3, generator=torch.Generator().manual_seed(3))
    for mus in ((-10.0, 0.0, -3.0), (-10.0, 0.0, 20.0)):  # the second puts unit 2 far above the interval
        mu = torch.tensor(mus, requires_grad=True)
        sigma = torch.tensor([1.0, 0.0067, 5.0] if mus[2] < 0 else [1.0, 0.0067, 1e-3], requires_grad=True)
        batch = sample_truncated_lognormal(mu, sigma, u)
        assert batch.shape == (4, 3) and batch.dtype == torch.float32
        for i, j in itertools.product(range(4), range(3)):
            alone = sample_truncated_lognormal(mu[j : j + 1].detach(), sigma[j : j + 1].detach(), u[i, j : j + 1])
            assert batch[i, j].item() == pytest.approx(alone.item(), rel=1e-5)
        grads = torch.autograd.grad(batch.sum(), (mu, sigma))
        assert all(torch.isfinite(g).all() for g in grads)
