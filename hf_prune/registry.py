"""Method registry: maps a method name to its config class and its `PruningMethod` class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .configs import PruningConfig


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_class: type[PruningConfig]
    method_class: type  # a `hf_prune.PruningMethod` subclass


_METHODS: dict[str, MethodEntry] = {}


def register_method(config_class: type[PruningConfig], method_class: type) -> None:
    """Register a pruning method under `config_class.method` (lower-case, unique)."""
    name = config_class.method
    if name != name.lower() or name in _METHODS:
        raise ValueError(f"method name {name!r} must be lower-case and unique")
    method_class.config_class = config_class
    _METHODS[name] = MethodEntry(name, config_class, method_class)


def get_method(name: str) -> MethodEntry:
    if name not in _METHODS:
        raise ValueError(f"Unknown pruning method {name!r}. Available methods: {', '.join(available_methods())}.")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)
