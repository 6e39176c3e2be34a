"""`PruningRecord`: everything hf_prune keeps on a model, as one attribute (`model.hf_prune_record`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


ATTRIBUTE = "hf_prune_record"


@dataclass
class PruningRecord:
    """What hf_prune knows about one model.

    Args:
        state (`PruningState`, *optional*): the gates and the method, while the model is gated.
        kept (`dict`, *optional*): after surgery, the kept head and neuron indices per layer (relative to the original
            model), the counts before pruning and the original config.
        config (`PruningConfig`, *optional*): the config the model was pruned with (written to `pruning_config.json`).
        card (`dict`): facts for the model card (`hf_prune.set_card_info`).
        write_card (`bool`): whether `save_pretrained` writes hf_prune's model card.
    """

    state: Any = None
    kept: dict | None = None
    config: Any = None
    card: dict = field(default_factory=dict)
    write_card: bool = True


_EMPTY = PruningRecord()


def find_record(model: nn.Module) -> PruningRecord:
    """The model's record for reading; an empty one (not attached) when the model has none."""
    return model.__dict__.get(ATTRIBUTE) or _EMPTY


def record_of(model: nn.Module) -> PruningRecord:
    """The model's record for writing, created and attached on first use."""
    record = model.__dict__.get(ATTRIBUTE)
    if record is None:
        record = PruningRecord()
        model.__dict__[ATTRIBUTE] = record
    return record
