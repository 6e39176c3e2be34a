"""BINGO (Panangat, 2025, arXiv:2505.09864): random-subset significance probes during training, one-shot structured
pruning after it. Design notes and the estimator formulas: docs bingo.md §3.

Modules: `config` (`BingoConfig`), `estimators` (probes -> per-unit effects), `probes` (drawing subsets, switching
units off, measuring), `search` (accuracy-preserving search), `method` (`BingoMethod`).
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
from .search import SearchResult, SearchTrial, search_max_prune


register_method(BingoConfig, BingoMethod)

__all__ = [
    "BingoConfig",
    "BingoMethod",
    "ControlVariateEstimator",
    "DifferenceOfMeansEstimator",
    "EmaEstimator",
    "Estimate",
    "RidgeEstimator",
    "SearchResult",
    "SearchTrial",
    "build_estimator",
    "search_max_prune",
]
