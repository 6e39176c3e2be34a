"""hf_prune: prune attention heads and MLP neurons of Hugging Face transformers while they are fine-tuned."""

__version__ = "0.1.0.dev0"

from .architectures import ArchitectureSpec, get_architecture, register_architecture, supported_model_types
from .arguments import PruningArguments
from .auto import AutoPrunedModel
from .callbacks import PruningScheduleCallback
from .configs import PruningConfig, TargetConfig
from .finalize import finalize_model
from .gates import UnitGate
from .mapping import prepare_model_for_pruning
from .methods import BingoConfig, BmrsConfig, MagnitudeConfig, PruningMethod, RandomConfig, TaylorConfig
from .model_card import set_card_info
from .prune import prune_structures
from .registry import available_methods, register_method
from .report import pruning_summary
from .trainer import PruningTrainer


__all__ = [
    "ArchitectureSpec",
    "AutoPrunedModel",
    "BingoConfig",
    "BmrsConfig",
    "MagnitudeConfig",
    "TargetConfig",
    "PruningArguments",
    "PruningConfig",
    "PruningMethod",
    "PruningScheduleCallback",
    "PruningTrainer",
    "RandomConfig",
    "TaylorConfig",
    "UnitGate",
    "available_methods",
    "finalize_model",
    "get_architecture",
    "prepare_model_for_pruning",
    "prune_structures",
    "pruning_summary",
    "register_architecture",
    "register_method",
    "set_card_info",
    "supported_model_types",
]
