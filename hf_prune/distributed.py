"""Helpers for several processes: sums across processes, and models sharded with FSDP2
(`torch.distributed.fsdp.fully_shard`).

Under FSDP2 every parameter of a sharded module, pruning-gate parameters included, is a `DTensor` holding one shard
per process; inside the module's forward the full parameters are gathered, outside of it they are not. Buffers (the
gates' keep-masks, gradient statistics) are not sharded. hf_prune reads parameters outside the forward in a few
places (magnitude scores, the final rule, the surgery), and does so through these helpers, so that every process sees
full tensors and makes the same decisions. The helpers that gather are collective calls: every process must call
them, in the same order.
"""

from __future__ import annotations

import torch
from torch import distributed as dist
from torch import nn


def world_size() -> int:
    """Processes in the default process group (1 when `torch.distributed` is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over processes, in place (the tensor itself when there is one process; a collective call)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def is_dtensor(tensor: object) -> bool:
    """Whether `tensor` is a `torch.distributed.tensor.DTensor` (a sharded or replicated distributed tensor)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole of `tensor` as a plain tensor: gathered from every process for a `DTensor` (a collective call, and
    differentiable: gradients flow back to the shards), `tensor` itself otherwise."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def is_fsdp2(model: nn.Module) -> bool:
    """Whether `model` or one of its submodules was sharded with FSDP2's `fully_shard`."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def reshard(model: nn.Module) -> None:
    """Let every FSDP2 module of `model` drop its gathered parameters (not a collective call).

    A module sharded with `reshard_after_forward=False` (the root, by default) keeps its full parameters after a
    forward pass until a backward pass frees them. After an extra forward pass without backward, such as a probe
    between the backward and the optimizer step, they would be stale after the step; call this after such passes.
    """
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def unsharded_class(model: nn.Module) -> type:
    """The class `fully_shard` started from (it swaps a module's class for an `FSDP<Class>` subclass)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of an FSDP2 model with full (unsharded) tensors, on every process (a collective call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
