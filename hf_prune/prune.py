"""`prune_structures`: the public entry point of physical pruning (module surgery, then the export form)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from .export import make_exportable
from .surgery import remove_units


def prune_structures(
    model: nn.Module,
    heads: Mapping[int, Iterable[int]] | None = None,
    neurons: Mapping[int, Iterable[int]] | None = None,
) -> nn.Module:
    """Remove the listed attention heads and MLP neurons from `model`, in place, and return it.

    Args:
        model: a model of a supported family (see `hf_prune.supported_model_types()`), without pruning gates.
        heads: `{layer: [query head indices]}` to remove. Indices refer to the model's *current* heads, so after an
            earlier prune they are positions among the heads that are left. Under grouped-query attention a key/value
            head is removed with its whole group; every group that keeps heads must keep the same number of them.
        neurons: `{layer: [neuron indices]}` of MLP intermediate neurons to remove, indexed the same way.

    The result keeps stock module classes (a block that loses every head or neuron gets a bias-only stand-in), and
    `model.save_pretrained` writes a folder that reloads with the same logits (see `hf_prune.AutoPrunedModel`).
    """
    remove_units(model, heads, neurons)
    return make_exportable(model)
