"""BMRS: Bayesian model reduction for structured pruning (Wright, Igel & Selvan, NeurIPS 2024)."""

from ...registry import register_method
from .config import BmrsConfig
from .functional import (
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
from .gate import BmrsGate
from .method import BmrsMethod


register_method(BmrsConfig, BmrsMethod)

__all__ = [
    "BmrsConfig",
    "BmrsGate",
    "BmrsMethod",
    "delta_f_normal",
    "delta_f_normal_eq8",
    "delta_f_uniform",
    "log_normalizer",
    "sample_truncated_lognormal",
    "truncated_lognormal_kl",
    "truncated_lognormal_mean",
    "truncated_lognormal_second_moment",
    "truncated_lognormal_snr",
]
