"""Pruning methods. Each module registers its config and method class on import."""

from .base import OneShotMethod, PruningMethod
from .magnitude import MagnitudeConfig, MagnitudeMethod
from .random import RandomConfig, RandomMethod


__all__ = ["MagnitudeConfig", "MagnitudeMethod", "OneShotMethod", "PruningMethod", "RandomConfig", "RandomMethod"]
