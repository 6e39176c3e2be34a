"""Pruning configurations: what is pruned and how. Saved next to models as `pruning_config.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .constants import CONFIG_NAME


logger = logging.getLogger(__name__)

_CONFIG_CLASSES: dict[str, type[PruningConfig]] = {}  # method name -> config class, filled as classes are defined


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
        method_seed (`int`, *optional*): seed of the method's own random stream (methods that draw random numbers
            use 0 when it is not set; BINGO uses the training seed). Named apart from `TrainingArguments.seed`, so
            both are flags of one script.
    """

    method: ClassVar[str] = "base"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "method" in cls.__dict__:  # a class that names its own method (not a shared base such as TargetConfig)
            _CONFIG_CLASSES[cls.method] = cls

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
    method_seed: int | None = field(default=None, metadata={"help": "Seed of the method's random stream."})

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
        data = dict(data)
        method = data.pop("method", cls.method)
        config_cls = cls
        if cls is PruningConfig or method != cls.method:
            if method not in _CONFIG_CLASSES:
                known = ", ".join(sorted(_CONFIG_CLASSES))
                raise ValueError(f"Unknown pruning method {method!r}. Available methods: {known}.")
            config_cls = _CONFIG_CLASSES[method]
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


SCHEDULES = ("cubic", "one_shot", "final")
KIND_BUDGETS = ("global", "proportional")


@dataclass
class TargetConfig(PruningConfig):
    """Base of methods that prune to a target sparsity by ranking units (BINGO, Taylor, magnitude, random).

    The schedule says when units go. Masks are monotone (a removed unit never comes back) and act on the gates inside
    the same `Trainer` run, so the steps after `prune_end` fine-tune the pruned model with the run's own optimizer,
    learning-rate schedule, gradient accumulation, processes, mixed precision, checkpoints and logging.

    Args:
        target_sparsity (`float`, defaults to `0.5`): fraction of prunable parameters to remove, in [0, 1).
        schedule (`str`, defaults to `"cubic"`): `"cubic"`: gradual pruning between `prune_start` and `prune_end`
            along s(t) = s_f · (1 − (1 − (t − t0) / (t1 − t0))³) (Zhu & Gupta, 2017), one pruning event every
            `prune_interval` optimizer steps; `"one_shot"`: a single event at `prune_end`; `"final"`: one shot after
            training, at finalize, with no steps left to recover (the setting of the BINGO paper).
        prune_start (`float`, defaults to `0.2`): fraction of the optimizer steps before the first pruning event.
        prune_end (`float`, defaults to `0.7`): fraction of the optimizer steps at which the target is reached; the
            remaining steps fine-tune the pruned model.
        prune_interval (`int`, *optional*): optimizer steps between the events of the cubic schedule (default: ten
            events between `prune_start` and `prune_end`).
        kind_budget (`str`, defaults to `"global"`): how the target is split between attention heads and MLP
            neurons: `"global"` ranks both kinds together by score per parameter freed; `"proportional"` removes
            `target_sparsity` of each kind's own prunable parameters, ranking each kind across layers.
        reconstruct (`bool`, defaults to `False`): at each pruning event, refit the kept weights of every projection
            that loses units by least squares, so that its output on the training inputs seen since the previous
            event changes as little as possible (`hf_prune.reconstruction`; costs `d_in²` floats per gated
            projection). The shapes stay stock.
        reconstruct_damping (`float`, defaults to `1.0`): ridge added to the least-squares system, as a multiple of
            the mean input energy of the kept columns; it pulls the refit towards the current weights (on SmolLM2, 1
            did better than 0.01 and 10, in domain and out of domain).
    """

    target_sparsity: float = field(default=0.5, metadata={"help": "Fraction of prunable parameters to remove."})
    schedule: str = field(
        default="cubic", metadata={"help": f"When units are removed: one of {', '.join(SCHEDULES)}."}
    )
    prune_start: float = field(default=0.2, metadata={"help": "Fraction of training before the first removal."})
    prune_end: float = field(default=0.7, metadata={"help": "Fraction of training at which the target is reached."})
    prune_interval: int | None = field(
        default=None, metadata={"help": "Optimizer steps between cubic-schedule events (default: ten events)."}
    )
    kind_budget: str = field(
        default="global",
        metadata={"help": "Split of the target between heads and neurons: 'global' ranking or 'proportional'."},
    )
    reconstruct: bool = field(
        default=False, metadata={"help": "Refit the kept weights by least squares at each pruning event."}
    )
    reconstruct_damping: float = field(
        default=1.0, metadata={"help": "Ridge of the least-squares refit, relative to the mean input energy."}
    )

    def __post_init__(self):
        super().__post_init__()
        _require(0.0 <= self.target_sparsity < 1.0, "target_sparsity", self.target_sparsity, "use a value in [0, 1)")
        _require(self.schedule in SCHEDULES, "schedule", self.schedule, f"use one of {', '.join(SCHEDULES)}")
        _require(
            0.0 <= self.prune_start < 1.0, "prune_start", self.prune_start, "use a fraction of training in [0, 1)"
        )
        _require(
            self.prune_start < self.prune_end <= 1.0,
            "prune_end",
            self.prune_end,
            f"use a fraction of training in (prune_start={self.prune_start}, 1]",
        )
        _require(
            self.prune_interval is None or (isinstance(self.prune_interval, int) and self.prune_interval >= 1),
            "prune_interval",
            self.prune_interval,
            "use a positive number of optimizer steps, or None for ten events",
        )
        _require(
            self.kind_budget in KIND_BUDGETS, "kind_budget", self.kind_budget, f"use one of {', '.join(KIND_BUDGETS)}"
        )
        _require(self.reconstruct_damping > 0, "reconstruct_damping", self.reconstruct_damping, "use a positive value")


def to_json(data: dict) -> str:
    """Indented JSON with lists of integers (kept indices) on one line."""
    text = json.dumps(data, indent=2, sort_keys=True)
    return re.sub(r"\[[\d\s,]*\]", lambda m: "[" + ", ".join(re.findall(r"\d+", m.group())) + "]", text) + "\n"


def _require(condition: bool, name: str, value: Any, fix: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {name}={value!r}: {fix}.")
