"""Least-squares reconstruction: when units are removed, refit the projection they fed so that its output on recent
training inputs changes as little as possible.

A head or neuron gate acts on the input of one projection (the attention output or the MLP down projection). When a
set `S` of its input columns is removed, the kept columns `K` (and the bias, if any) that best reproduce the old
output `W x` from what is left solve a least-squares problem with the closed form

    W_K <- W_K + W_S H_SK (H_KK + λ I)^-1,      H = Σ_t x_t x_tᵀ

where `x_t` runs over the gated inputs of the projection at every non-padding training token since the last pruning
event (with a constant 1 appended when the projection has a bias), and λ is `damping` times the mean of `diag(H_KK)`.
This is the compensation step of optimal-brain-surgeon style structured pruning (e.g. FLAP and SlimGPT for LLMs),
done here on the kept weights only, so the pruned model keeps stock shapes and loads with plain `from_pretrained`.

`H` costs `d_in²` floats per gated projection (d_in = 1536 for SmolLM2's MLP: 9 MB a layer), accumulated in
float32 on the projection's device, and one `d_in × d_in` product per micro-batch. Each process accumulates its own
tokens; the sums are added across processes at the pruning event (a collective call), so every replica makes the
same update. Under FSDP2 the weights are gathered for the update and written back as shards. `refitted` makes the
same refit for the duration of a block and then restores the weights, which is how the metric search judges a
candidate sparsity.

The same `H` says how much of a unit the refit could restore: removing unit `u` (input columns `S`) alone, the refit
leaves the output error `tr(W_S [(H + λI)^-1_SS]^-1 W_Sᵀ)` of the `tr(W_S (H + λI)_SS W_Sᵀ)` it would cost without it
(for one column, `1 / (H_uu [(H + λI)^-1]_uu)`). `unrecoverable_shares` gives that ratio per unit, for criteria that
rank units by what their removal costs after the refit (Taylor's `refit_aware`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import transformer_blocks
from .constants import HEADS, NEURONS
from .distributed import all_reduce_sum, full_tensor, is_dtensor, world_size


if TYPE_CHECKING:
    from .gates import UnitGate
    from .mapping import PruningState


@dataclass
class _Target:
    """One gated projection and the input second moment collected for it."""

    kind: str
    layer: int
    projection: nn.Module
    gate: UnitGate
    moment: torch.Tensor | None = None  # Σ x xᵀ over the collected tokens (x with a trailing 1 when there is a bias)
    tokens: int = 0


class Reconstruction:
    """Collects the gated inputs of every gated projection of a prepared model and refits the kept weights when
    units are removed (see the module docstring). Methods that remove units during training create one in `attach`
    and call `update` with the keep-masks before and after each pruning event."""

    def __init__(self, model: nn.Module, state: PruningState, damping: float = 1.0):
        self.damping = damping
        self.collecting = True
        self.targets: list[_Target] = []
        self._attention_mask: torch.Tensor | None = None
        self._training_pass = False  # the current model call trains (grad enabled, train mode)
        self._collected: set[int] = set()  # targets already collected in the current model call
        self._num_layers = len(state.layers)
        self._version = 0  # changes whenever the collected sums do
        self._shares: tuple[int, dict] | None = None  # (version, shares) of the last `unrecoverable_shares`
        for gated, block in zip(state.layers, transformer_blocks(model, state.spec)):
            for kind, gate, path in (
                (HEADS, gated.head_gate, state.spec.o),
                (NEURONS, gated.neuron_gate, state.spec.mlp_out),
            ):
                if gate is not None:
                    target = _Target(kind, gated.index, block.get_submodule(path), gate)
                    self.targets.append(target)
                    # registered after the gate's own pre-hook, so it sees the gated input
                    state.hooks.append(target.projection.register_forward_pre_hook(self._collector(target)))
        state.hooks.append(model.register_forward_pre_hook(self._start_pass, with_kwargs=True))

    # -- collecting ------------------------------------------------------------------------------------------------
    def _start_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """At each call of the model: whether it trains, and where its padding is."""
        mask = kwargs.get("attention_mask")
        self._attention_mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        # only training passes count: not evaluation, generation, or a method's no-grad probes
        self._training_pass = module.training and torch.is_grad_enabled()
        self._collected.clear()

    def _collector(self, target: _Target):
        def collect(module: nn.Module, args: tuple) -> None:
            # once per model call: under activation checkpointing a projection also runs again in the backward pass
            # (or first under no_grad, with use_reentrant=True), on the same input
            if not (self.collecting and self._training_pass) or id(target) in self._collected:
                return
            self._collected.add(id(target))
            x = args[0].detach()
            mask = self._attention_mask
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:2]):
                x = x[mask.to(torch.bool)]  # drop padding positions
            x = x.reshape(-1, x.shape[-1]).float()
            if _bias(target.projection) is not None:
                x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
            product = x.T @ x
            target.moment = product if target.moment is None else target.moment.add_(product)
            target.tokens += x.shape[0]
            self._version += 1

        return collect

    def reset(self) -> None:
        """Forget what was collected (after each pruning event the inputs of later layers change)."""
        for target in self.targets:
            target.moment, target.tokens = None, 0
        self._version += 1

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This process's collected sums, for checkpoints (each process saves its own)."""
        return {
            "collecting": self.collecting,
            "moments": [None if t.moment is None else t.moment.cpu() for t in self.targets],
            "tokens": [t.tokens for t in self.targets],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["moments"]) != len(self.targets):
            raise ValueError(
                f"The checkpoint holds input statistics for {len(state['moments'])} projections, this model gates "
                f"{len(self.targets)}: resume with the model and pruning config the checkpoint was written with."
            )
        self.collecting = state["collecting"]
        for target, moment, tokens in zip(self.targets, state["moments"], state["tokens"]):
            target.moment = None if moment is None else moment.to(target.gate.mask.device)
            target.tokens = tokens
        self._version += 1

    # -- what a refit could restore ------------------------------------------------------------------------------------
    @torch.no_grad()
    def unrecoverable_shares(self) -> dict[str, list[torch.Tensor | None]]:
        """Per kind, per layer (`None` where ungated): for every unit, the share of its contribution to the
        projection's output that refitting the other live units could not restore, from the inputs collected since
        the last event (see the module docstring; 1 where nothing was collected, 0 for removed units). A collective
        call under DDP and FSDP2; the result is reused until the collected sums change."""
        if self._shares is not None and self._shares[0] == self._version:
            return self._shares[1]
        shares = {HEADS: [None] * self._num_layers, NEURONS: [None] * self._num_layers}
        for target, moment in zip(self.targets, self._reduced_moments()):
            shares[target.kind][target.layer] = _unrecoverable_share(
                target.projection, target.gate.mask.cpu(), moment, self.damping
            )
        self._shares = (self._version, shares)
        return shares

    # -- the update ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, before: dict[str, list[torch.Tensor | None]], after: dict[str, list[torch.Tensor | None]]):
        """Refit every projection that loses units between the keep-masks `before` and `after` (per kind, per
        layer), then start collecting afresh. A collective call under DDP and FSDP2: every process calls it with the
        same masks."""
        self._refit_all(before, after)
        self.reset()

    @contextlib.contextmanager
    def refitted(
        self, before: dict[str, list[torch.Tensor | None]], after: dict[str, list[torch.Tensor | None]]
    ) -> Iterator[None]:
        """Inside the block the kept weights are refit as `update(before, after)` would refit them; on exit they are
        restored exactly and the collected inputs are kept, so candidate masks can be judged with their refit (the
        metric search). The masks themselves are the caller's to apply. A collective call under DDP and FSDP2."""
        saved: list[tuple[torch.Tensor, torch.Tensor]] = []

        def keep(projection: nn.Module) -> None:
            for parameter in (projection.weight, _bias(projection)):
                if parameter is not None:
                    saved.append((parameter, parameter.detach().clone()))

        try:
            with torch.no_grad():
                self._refit_all(before, after, keep)  # each projection is saved before it is refit
            yield
        finally:
            with torch.no_grad():
                for parameter, value in saved:
                    parameter.copy_(value)

    def _refit_all(
        self,
        before: dict[str, list[torch.Tensor | None]],
        after: dict[str, list[torch.Tensor | None]],
        on_refit: Callable[[nn.Module], None] | None = None,
    ) -> None:
        """Refit every projection that loses units from `before` to `after`, calling `on_refit` on it first."""
        for target, moment in zip(self.targets, self._reduced_moments()):
            old, new = before[target.kind][target.layer], after[target.kind][target.layer]
            if old is None or new is None or moment is None:
                continue
            old, new = old.cpu(), new.cpu()
            removed = old & ~new
            if removed.any() and new.any():
                if on_refit is not None:
                    on_refit(target.projection)
                _refit(target.projection, moment, removed, new, self.damping)

    def _reduced_moments(self) -> list[torch.Tensor | None]:
        """Each projection's moment summed over processes (`None` where no process collected any token)."""
        counts = torch.tensor([float(t.tokens) for t in self.targets])
        if world_size() > 1:
            device = self.targets[0].gate.mask.device if self.targets else "cpu"
            counts = all_reduce_sum(counts.to(device)).cpu()
        moments = []
        for target, count in zip(self.targets, counts.tolist()):
            if count == 0:
                moments.append(None)
                continue
            moment = target.moment
            if moment is None:  # this process saw no token for it, others did
                width = _weight_columns(target.projection).shape[1] + (_bias(target.projection) is not None)
                moment = torch.zeros(width, width, device=target.gate.mask.device)
            moments.append(all_reduce_sum(moment.clone()) if world_size() > 1 else moment)
        return moments


def _bias(projection: nn.Module) -> torch.Tensor | None:
    return getattr(projection, "bias", None)


def _weight_columns(projection: nn.Module) -> torch.Tensor:
    """The projection's weight as `[out, in]` (GPT-2's `Conv1D` stores `[in, out]`)."""
    weight = projection.weight
    return weight.T if isinstance(projection, Conv1D) else weight


def _refit(projection: nn.Module, moment: torch.Tensor, removed: torch.Tensor, kept: torch.Tensor, damping: float):
    """`W_K += W_S H_SK (H_KK + λI)^-1` on the projection's weight (and bias, as one more kept column)."""
    units = kept.numel()
    weight = full_tensor(_weight_columns(projection).detach())  # gathered under FSDP2 (a collective call)
    bias = _bias(projection)
    width = weight.shape[1] // units
    columns_removed = removed.repeat_interleave(width)
    columns_kept = kept.repeat_interleave(width)
    matrix = weight.double()
    if bias is not None:
        matrix = torch.cat([matrix, full_tensor(bias.detach()).double()[:, None]], dim=1)
        columns_removed = torch.cat([columns_removed, torch.tensor([False])])
        columns_kept = torch.cat([columns_kept, torch.tensor([True])])
    device = matrix.device
    columns_removed, columns_kept = columns_removed.to(device), columns_kept.to(device)
    moment = moment.to(device=device, dtype=torch.float64)
    h_kk = _damped(moment[columns_kept][:, columns_kept], damping)
    h_ks = moment[columns_kept][:, columns_removed]
    if h_kk is None:
        return  # nothing reached the kept inputs: no information to refit with
    factor, info = torch.linalg.cholesky_ex(h_kk)
    if int(info) != 0:
        return
    # (H_KK^-1 H_KS W_Sᵀ)ᵀ = W_S H_SK H_KK^-1, since H is symmetric
    delta = torch.cholesky_solve(h_ks @ matrix[:, columns_removed].T, factor).T
    matrix[:, columns_kept] += delta
    if bias is not None:
        _write(bias, matrix[:, -1], transpose=False)
        matrix = matrix[:, :-1]
    _write(projection.weight, matrix, transpose=isinstance(projection, Conv1D))


def _damped(h: torch.Tensor, damping: float) -> torch.Tensor | None:
    """`H + λI` with λ = `damping` times the mean of `diag(H)`; `None` when no input energy reached these columns."""
    scale = h.diagonal().mean()
    if not torch.isfinite(scale) or scale <= 0:
        return None
    return h + damping * scale * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)


def _unrecoverable_share(
    projection: nn.Module, alive: torch.Tensor, moment: torch.Tensor | None, damping: float
) -> torch.Tensor:
    """`tr(W_S [(H + λI)^-1_SS]^-1 W_Sᵀ) / tr(W_S (H + λI)_SS W_Sᵀ)` for every live unit (columns `S`), `H` over the
    live columns (and the bias column); 0 for removed units, 1 where `H` or `W_S` carries nothing."""
    units = alive.numel()
    shares = torch.ones(units)
    weight = full_tensor(_weight_columns(projection).detach())  # gathered under FSDP2 (a collective call)
    if moment is None or not alive.any():
        return shares * alive
    width = weight.shape[1] // units
    columns = alive.repeat_interleave(width)
    if _bias(projection) is not None:
        columns = torch.cat([columns, torch.tensor([True])])  # the bias column is always kept
    device = weight.device
    columns = columns.to(device)
    h = _damped(moment.to(device=device, dtype=torch.float64)[columns][:, columns], damping)
    if h is None:
        return shares * alive
    factor, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return shares * alive
    inverse = torch.cholesky_inverse(factor)
    live = int(alive.sum())
    span = live * width  # the live units' columns come first and in order, each a block of `width`

    def blocks(matrix: torch.Tensor) -> torch.Tensor:  # the [live, width, width] diagonal blocks
        return matrix[:span, :span].reshape(live, width, live, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)

    w = weight.double()[:, alive.to(device).repeat_interleave(width)].reshape(-1, live, width).transpose(0, 1)
    # tr(W_S B^-1 W_Sᵀ) with B = (H + λI)^-1_SS, through B's Cholesky factor (B is positive definite)
    block_factor, block_info = torch.linalg.cholesky_ex(blocks(inverse))
    kept_error = (torch.cholesky_solve(w.transpose(1, 2), block_factor).transpose(1, 2) * w).sum(dim=(1, 2))
    removal_error = ((w @ blocks(h)) * w).sum(dim=(1, 2))
    usable = (block_info == 0) & (removal_error > 0) & torch.isfinite(kept_error)
    ratio = torch.where(usable, kept_error / removal_error.clamp_min(torch.finfo(torch.float64).tiny), 1.0)
    shares = torch.zeros(units)
    shares[alive] = ratio.clamp(0.0, 1.0).float().cpu()
    return shares


def _write(parameter: torch.Tensor, value: torch.Tensor, transpose: bool) -> None:
    """Copy `value` (full, float64) into `parameter` (plain or an FSDP2 shard), in its dtype."""
    value = (value.T if transpose else value).to(parameter.dtype)
    if is_dtensor(parameter):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value, parameter.device_mesh, parameter.placements)
    parameter.copy_(value)
