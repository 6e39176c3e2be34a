"""Pruning methods. Each module registers its config and method class on import."""

from .base import PruningMethod, StepContext, TargetMethod
from .bingo import BingoConfig, BingoMethod
from .bmrs import BmrsConfig, BmrsMethod
from .magnitude import MagnitudeConfig, MagnitudeMethod
from .random import RandomConfig, RandomMethod
from .taylor import TaylorConfig, TaylorMethod


__all__ = [
    "BingoConfig",
    "BingoMethod",
    "BmrsConfig",
    "BmrsMethod",
    "MagnitudeConfig",
    "MagnitudeMethod",
    "TargetMethod",
    "PruningMethod",
    "RandomConfig",
    "RandomMethod",
    "StepContext",
    "TaylorConfig",
    "TaylorMethod",
]
