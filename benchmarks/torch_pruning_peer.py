"""The peer row of the quality benchmark: Torch-Pruning (`pip install torch-pruning`) pruning the same fine-tuned
BERT-family model, with its own importance criteria, to a given share of prunable parameters removed.

Torch-Pruning is restricted to the units hf_prune prunes, so the rows compare criteria, not search spaces: attention
heads (q/k/v out-channels, whole heads: `prune_num_heads=True, prune_head_dims=False`) and MLP neurons (the
intermediate projection's out-channels with the matching input columns of the output projection). Every other
Linear layer is ignored, which keeps the hidden size and the classifier intact. The same guard rail as the other
methods caps the removal in one layer at 90 % (`max_pruning_ratio`). Torch-Pruning takes a channel ratio and a head
ratio rather than a parameter budget, so both are set to one value found by bisection to land on the target.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hf_prune.accounting import forward_flops, model_parameters, prunable_parameters
from hf_prune.architectures import get_architecture, transformer_blocks


CRITERIA = {"torch_pruning_l2": "GroupMagnitudeImportance", "torch_pruning_taylor": "GroupTaylorImportance"}
MAX_LAYER_RATIO = 0.9


def _prune(model: nn.Module, ratio: float, criterion: str, example_inputs: dict) -> nn.Module:
    import torch_pruning as tp

    blocks = transformer_blocks(model, get_architecture(model))
    num_heads, roots = {}, set()
    for block in blocks:
        attention = block.attention.self
        for projection in (attention.query, attention.key, attention.value):
            num_heads[projection] = attention.num_attention_heads
            roots.add(projection)
        roots.add(block.intermediate.dense)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in roots]
    importance = getattr(tp.importance, CRITERIA[criterion])()
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=example_inputs,
        importance=importance,
        global_pruning=True,
        pruning_ratio=ratio,
        head_pruning_ratio=ratio,
        max_pruning_ratio=MAX_LAYER_RATIO,
        ignored_layers=ignored,
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        output_transform=lambda output: output.logits,
    )
    pruner.step()
    for block in blocks:  # Torch-Pruning resizes the layers; the attention module's head bookkeeping is ours to fix
        attention = block.attention.self
        attention.num_attention_heads = pruner.num_heads[attention.query]
        attention.all_head_size = attention.query.out_features
    return model


def _gradients(model: nn.Module, batches: list[dict]) -> dict[str, torch.Tensor]:
    """The task-loss gradients that Taylor importance reads, summed over `batches` (computed once per model)."""
    model = copy.deepcopy(model).eval()
    for batch in batches:
        model(**batch).loss.backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def describe(model: nn.Module, dense_prunable: int, dense_flops: int) -> dict:
    spec = get_architecture(model)
    head_dim = spec.head_dim(model.config)
    prunable = prunable_parameters(model, spec)
    return {
        "sparsity": 1 - prunable / dense_prunable,
        "parameters": model_parameters(model),
        "flops_ratio": forward_flops(model, spec, head_dim) / dense_flops,
    }


def prune_to_sparsity(
    dense: nn.Module, criterion: str, target: float, batches: list[dict], tolerance: float = 0.005
) -> tuple[nn.Module, dict]:
    """A pruned copy of `dense` with about `target` of its prunable parameters removed (bisection on the ratio)."""
    spec = get_architecture(dense)
    dense_prunable = prunable_parameters(dense, spec)
    dense_flops = forward_flops(dense, spec, spec.head_dim(dense.config))
    example = {k: v for k, v in batches[0].items() if k != "labels"}
    gradients = _gradients(dense, batches) if criterion == "torch_pruning_taylor" else {}
    low, high, best = 0.0, MAX_LAYER_RATIO, None
    for _ in range(14):
        ratio = (low + high) / 2
        model = copy.deepcopy(dense).eval()
        for name, parameter in model.named_parameters():
            if name in gradients:
                parameter.grad = gradients[name].clone()
        _prune(model, ratio, criterion, example)
        model.zero_grad(set_to_none=True)
        info = describe(model, dense_prunable, dense_flops) | {"ratio": ratio}
        if best is None or abs(info["sparsity"] - target) < abs(best[1]["sparsity"] - target):
            best = (model, info)
        if abs(info["sparsity"] - target) <= tolerance:
            break
        low, high = (ratio, high) if info["sparsity"] < target else (low, ratio)
    return best
