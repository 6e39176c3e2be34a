"""BINGO (Panangat, 2025, arXiv:2505.09864): random-subset significance probes during training; structured
pruning on the target schedule. Design notes and the estimator formulas: docs bingo.md §3.

Modules: `config` (`BingoConfig`), `estimators` (probes -> per-unit effects), `probes` (drawing subsets, switching
units off, measuring), `method` (`BingoMethod`). The accuracy-preserving search is `hf_prune.methods.search`.
"""

from ...registry import register_method
from .config import BingoConfig
from .estimators import (
    ControlVariateEstimator,
    DifferenceOfMeansEstimator,
    EmaEstimator,
    Estimate,
    RidgeEstimator,
    build_estimator,
)
from .method import BingoMethod


register_method(BingoConfig, BingoMethod)

__all__ = [
    "BingoConfig",
    "BingoMethod",
    "ControlVariateEstimator",
    "DifferenceOfMeansEstimator",
    "EmaEstimator",
    "Estimate",
    "RidgeEstimator",
    "build_estimator",
]
