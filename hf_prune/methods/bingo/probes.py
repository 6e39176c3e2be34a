"""One BINGO probe: which units, how they are switched off, and what is measured.

Units of every layer and kind live in one flat vector (`UnitLayout`). A probe's subset is drawn from a generator
seeded by `(seed, rank, step, pass)`, never from the global random stream. Switching units off either clears their
gate masks (`switched_off`) or copies their initial weights in (`InitialWeights.reset`); both restore the exact
previous state on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ...architectures import transformer_blocks
from ...constants import HEADS, NEURONS
from ...distributed import is_dtensor
from ...gates import UnitGate
from ...modeling_hf_prune import out_features


if TYPE_CHECKING:
    from ...mapping import PruningState


# -- the flat unit vector --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayoutEntry:
    kind: str
    layer: int
    gate: UnitGate
    start: int
    stop: int


class UnitLayout:
    """Every gated unit of a model in one flat vector: head units layer by layer, then neurons layer by layer."""

    def __init__(self, state: PruningState):
        self.num_layers = len(state.layers)
        self.entries: list[LayoutEntry] = []
        offset = 0
        for kind in (HEADS, NEURONS):
            for layer, gate in enumerate(state.gates(kind)):
                if gate is not None:
                    self.entries.append(LayoutEntry(kind, layer, gate, offset, offset + gate.num_units))
                    offset += gate.num_units
        self.size = offset

    def per_kind(self, values: Mapping[str, float]) -> torch.Tensor:
        """A float32 vector holding `values[kind]` at each unit of that kind."""
        return torch.cat([torch.full((e.stop - e.start,), float(values[e.kind])) for e in self.entries])

    def per_layer(self, values: Mapping[str, list[float]]) -> torch.Tensor:
        """A float64 vector holding `values[kind][layer]` at each unit."""
        return torch.cat(
            [
                torch.full((e.stop - e.start,), float(values[e.kind][e.layer]), dtype=torch.float64)
                for e in self.entries
            ]
        )

    def groups(self, mode: str) -> torch.Tensor:
        """Shrinkage groups: one per kind (`"kind"`), per kind and layer (`"layer"`), or a single one."""
        ids = []
        for e in self.entries:
            kind = 0 if e.kind == HEADS else 1
            group = kind if mode == "kind" else kind * self.num_layers + e.layer if mode == "layer" else 0
            ids.append(torch.full((e.stop - e.start,), group, dtype=torch.long))
        return torch.cat(ids)

    def kind_mask(self, kind: str) -> torch.Tensor:
        return torch.cat([torch.full((e.stop - e.start,), e.kind == kind) for e in self.entries])

    def gather(self, get) -> torch.Tensor:
        """Concatenate `get(gate)` (a per-unit tensor) over the layout, on the CPU."""
        return torch.cat([get(e.gate).detach().float().cpu().reshape(-1) for e in self.entries])

    def split(self, flat: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer views of a flat vector (`None` where a layer has no gate of that kind)."""
        result = {kind: [None] * self.num_layers for kind in (HEADS, NEURONS)}
        for e in self.entries:
            result[e.kind][e.layer] = flat[e.start : e.stop]
        return result


# -- drawing subsets -------------------------------------------------------------------------------------------------
def probe_seed(seed: int, rank: int, step: int, index: int) -> int:
    """A 63-bit seed for one probe pass, a deterministic function of its coordinates (exact resume)."""
    sequence = np.random.SeedSequence([seed % 2**32, rank, step, index])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def draw_subset(p: torch.Tensor, seed: int) -> torch.Tensor:
    """Boolean CPU vector: unit `u` is switched off with probability `p[u]`, independently."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(p.shape, generator=generator) < p


# -- switching units off ---------------------------------------------------------------------------------------------
@contextmanager
def switched_off(layout: UnitLayout, ablated: torch.Tensor) -> Iterator[None]:
    """Clear the gate masks of the `ablated` units (a flat boolean vector) inside the block; restore them after."""
    saved = []
    try:
        for e in layout.entries:
            off = ablated[e.start : e.stop]
            if bool(off.any()):
                saved.append((e.gate, e.gate.mask.clone()))
                e.gate.mask &= ~off.to(e.gate.mask.device)
        yield
    finally:
        for gate, mask in saved:
            gate.mask.copy_(mask)


@dataclass
class _Slice:
    """The features of one tensor that belong to the units of a layer: unit `u` owns features
    `offset + u * width ... offset + (u + 1) * width - 1` along `dim`. The tensor is looked up on its module at
    each use (`fully_shard` replaces a module's parameters)."""

    module: nn.Module
    name: str  # "weight" or "bias"
    dim: int
    offset: int
    width: int
    initial: torch.Tensor

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.name)

    def features(self, units: torch.Tensor) -> torch.Tensor:
        units = units.to(self.param.device)
        span = torch.arange(self.width, device=units.device)
        return (self.offset + units[:, None] * self.width + span).flatten()


class InitialWeights:
    """A copy of the prunable weights as they are when created (for reset probes), and the reset itself.

    A head unit owns its query rows (all the query heads of its group), its key and value rows, and its columns of
    the output projection; a neuron owns its rows of the up (and gate) projections and its column of the down
    projection. Biases follow their rows. The copy costs one extra set of the prunable weights.
    """

    def __init__(self, model: nn.Module, state: PruningState):
        spec, head_dim = state.spec, state.head_dim
        copies: dict[int, torch.Tensor] = {}  # one copy per tensor, even when slices share it (fused q|k|v)
        self.slices: dict[tuple[str, int], list[_Slice]] = {}

        def add(key, module: nn.Module, offset: int, width: int, output: bool) -> None:
            conv = isinstance(module, Conv1D)
            weight_dim = (1 if conv else 0) if output else (0 if conv else 1)
            tensors = [("weight", weight_dim)]
            if output and module.bias is not None:
                tensors.append(("bias", 0))
            for name, dim in tensors:
                param = getattr(module, name)
                initial = copies.setdefault(id(param), param.detach().clone())
                self.slices.setdefault(key, []).append(_Slice(module, name, dim, offset, width, initial))

        for gated, block in zip(state.layers, transformer_blocks(model, spec)):
            if gated.head_gate is not None:
                key, group = (HEADS, gated.index), gated.group_size
                if spec.qkv:
                    fused = block.get_submodule(spec.qkv)
                    part = out_features(fused) // 3
                    projections = [(fused, 0, group), (fused, part, 1), (fused, 2 * part, 1)]
                else:
                    projections = [
                        (block.get_submodule(spec.q), 0, group),
                        (block.get_submodule(spec.k), 0, 1),
                        (block.get_submodule(spec.v), 0, 1),
                    ]
                for module, offset, heads in projections:
                    add(key, module, offset, heads * head_dim, output=True)
                add(key, block.get_submodule(spec.o), 0, group * head_dim, output=False)
            if gated.neuron_gate is not None:
                key = (NEURONS, gated.index)
                for path in spec.mlp_in:
                    add(key, block.get_submodule(path), 0, 1, output=True)
                add(key, block.get_submodule(spec.mlp_out), 0, 1, output=False)

    @contextmanager
    def reset(self, layout: UnitLayout, ablated: torch.Tensor) -> Iterator[None]:
        """Copy the initial values of the `ablated` units' weights in; copy the current values back on exit."""
        saved = []
        try:
            with torch.no_grad():
                for e in layout.entries:
                    units = ablated[e.start : e.stop].nonzero().flatten()
                    if units.numel() == 0:
                        continue
                    for part in self.slices[(e.kind, e.layer)]:
                        if is_dtensor(part.param):
                            raise ValueError(
                                "BingoConfig(perturbation='reset') does not support models sharded with FSDP2 "
                                "(`fully_shard`); use perturbation='zero'."
                            )
                        index = part.features(units)
                        saved.append((part.param, part.dim, index, part.param.index_select(part.dim, index).clone()))
                        part.param.index_copy_(part.dim, index, part.initial.index_select(part.dim, index))
            yield
        finally:
            with torch.no_grad():
                for param, dim, index, values in reversed(saved):
                    param.index_copy_(dim, index, values)


# -- what a probe measures -------------------------------------------------------------------------------------------
def probe_loss(
    compute_loss, model: nn.Module, inputs: dict[str, Any], with_accuracy: bool
) -> tuple[float, float | None]:
    """The run's loss on `inputs` (float32; call under `torch.no_grad()` in eval mode; `compute_loss` is the step
    context's), and the batch accuracy when asked. The inputs dict is copied because the loss may pop the labels."""
    loss, outputs = compute_loss(model, dict(inputs))
    value = float(loss.detach().float().mean())
    accuracy = batch_accuracy(model, outputs, inputs.get("labels")) if with_accuracy else None
    return value, accuracy


def batch_accuracy(model: nn.Module, outputs: Any, labels: torch.Tensor | None) -> float:
    """Share of correct arg-max predictions (next-token ones for causal LMs), ignoring labels equal to -100."""
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
    if labels is None or logits is None or logits.dim() != labels.dim() + 1:
        raise ValueError(
            "BingoConfig(signal='accuracy_abs') needs classification logits and integer `labels` in the training "
            "batches; use signal='loss' for this model or task."
        )
    if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    valid = labels != -100
    correct = (logits.argmax(dim=-1) == labels) & valid
    return float(correct.sum()) / max(int(valid.sum()), 1)


def relative_change(signal: str, clean: tuple[float, float | None], masked: tuple[float, float | None]) -> float:
    """The probe's `y`: `(L_masked - L_clean) / L_clean`, or `|A_clean - A_masked| / A_clean` (NaN when undefined)."""
    if signal == "loss":
        return (masked[0] - clean[0]) / clean[0] if clean[0] != 0 else float("nan")
    return abs(clean[1] - masked[1]) / clean[1] if clean[1] else float("nan")
