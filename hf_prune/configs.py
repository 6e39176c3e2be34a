"""Pruning configurations: what is pruned and how. Saved next to models as `pruning_config.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar


logger = logging.getLogger(__name__)

CONFIG_NAME = "pruning_config.json"


@dataclass
class PruningConfig:
    """Base configuration shared by every pruning method.

    Sparsity is defined once for the whole library: the fraction of *prunable parameters* removed, where prunable
    parameters are the weights and biases of the attention q/k/v/output projections and of the MLP up/gate/down
    projections of every gated block (output-projection biases are never removed, so 100 % is not reachable).

    Args:
        prune_heads (`bool`, defaults to `True`): gate and prune attention heads (key/value groups under
            grouped-query attention).
        prune_neurons (`bool`, defaults to `True`): gate and prune MLP intermediate neurons.
        uniform_layers (`bool`, defaults to `False`): keep the same number of heads and neurons in every layer, so
            the pruned model is expressible in its stock config and loads with plain `from_pretrained` (no remote
            code; what vLLM, TGI and ONNX export need). Families whose config ties head size to hidden size (BERT,
            RoBERTa, DistilBERT, GPT-2) then keep all heads.
        neuron_multiple (`int`, defaults to `1`): round each layer's kept neuron count up to a multiple of this
            (e.g. 8 or 64 for efficient kernels).
        min_heads_per_layer (`int`, defaults to `0`): never keep fewer heads (units) than this in a layer.
        min_neurons_per_layer (`int`, defaults to `0`): never keep fewer MLP neurons than this in a layer.
        seed (`int`, *optional*): seed of the method's own random stream (methods that draw random numbers use 0
            when it is not set).
    """

    method: ClassVar[str] = "base"

    prune_heads: bool = field(default=True, metadata={"help": "Gate and prune attention heads."})
    prune_neurons: bool = field(default=True, metadata={"help": "Gate and prune MLP intermediate neurons."})
    uniform_layers: bool = field(
        default=False,
        metadata={"help": "Keep equal head/neuron counts in every layer so the stock config can describe the model."},
    )
    neuron_multiple: int = field(
        default=1, metadata={"help": "Round kept neurons per layer up to a multiple of this."}
    )
    min_heads_per_layer: int = field(default=0, metadata={"help": "Minimum heads (units) kept in each layer."})
    min_neurons_per_layer: int = field(default=0, metadata={"help": "Minimum MLP neurons kept in each layer."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the method's random stream."})

    def __post_init__(self):
        if not (self.prune_heads or self.prune_neurons):
            raise ValueError("prune_heads and prune_neurons are both False: enable at least one of them.")
        _require(self.neuron_multiple >= 1, "neuron_multiple", self.neuron_multiple, "use an integer >= 1")
        _require(self.min_heads_per_layer >= 0, "min_heads_per_layer", self.min_heads_per_layer, "use >= 0")
        _require(self.min_neurons_per_layer >= 0, "min_neurons_per_layer", self.min_neurons_per_layer, "use >= 0")

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def to_json_string(self) -> str:
        return to_json(self.to_dict())

    def save_pretrained(self, save_directory: str | os.PathLike, **extra: Any) -> str:
        """Write `pruning_config.json` (plus any `extra` top-level entries, e.g. the pruning result)."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w") as f:
            f.write(to_json({**self.to_dict(), **extra}))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        """Build the config of the method named in `data["method"]`; unknown keys are dropped with a warning."""
        from .registry import get_method

        data = dict(data)
        method = data.pop("method", cls.method)
        config_cls = get_method(method).config_class if cls is PruningConfig or method != cls.method else cls
        names = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(k for k in data if k not in names and k not in ("result", "hf_prune_version"))
        if unknown:
            logger.warning("Ignoring unknown %s fields in pruning config: %s", config_cls.__name__, unknown)
        return config_cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PruningConfig:
        """Load from a folder holding `pruning_config.json` (or the file itself)."""
        path = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
        with open(path) as f:
            return cls.from_dict(json.load(f))


@dataclass
class OneShotConfig(PruningConfig):
    """Base of methods that score units during training and prune once, at its end, to a target sparsity.

    Args:
        target_sparsity (`float`, defaults to `0.5`): fraction of prunable parameters to remove, in [0, 1).
    """

    target_sparsity: float = field(default=0.5, metadata={"help": "Fraction of prunable parameters to remove."})

    def __post_init__(self):
        super().__post_init__()
        _require(0.0 <= self.target_sparsity < 1.0, "target_sparsity", self.target_sparsity, "use a value in [0, 1)")


def to_json(data: dict) -> str:
    """Indented JSON with lists of integers (kept indices) on one line."""
    text = json.dumps(data, indent=2, sort_keys=True)
    return re.sub(r"\[[\d\s,]*\]", lambda m: "[" + ", ".join(re.findall(r"\d+", m.group())) + "]", text) + "\n"


def _require(condition: bool, name: str, value: Any, fix: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {name}={value!r}: {fix}.")
