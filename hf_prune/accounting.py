"""Sizes of a (possibly pruned) model read from its actual module shapes: layout, parameters and FLOPs.

Nothing here mutates the model: compression is always reported from the shapes that are really there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import ArchitectureSpec, transformer_blocks
from .modeling_hf_prune import in_features, out_features


@dataclass(frozen=True)
class LayerShape:
    """Kept units of one block: query heads, key/value heads and MLP neurons."""

    heads: int
    kv_heads: int
    neurons: int

    def to_dict(self) -> dict:
        return asdict(self)


def _row_cost(module: nn.Module) -> int:
    """Parameters tied to one output feature of a projection (its weights plus its bias)."""
    return in_features(module) + (1 if module.bias is not None else 0)


def _projections(layer: nn.Module, spec: ArchitectureSpec) -> list[nn.Module]:
    paths = [spec.qkv] if spec.qkv else [spec.q, spec.k, spec.v]
    return [layer.get_submodule(p) for p in (*paths, spec.o, *spec.mlp_in, spec.mlp_out)]


def layer_shapes(model: nn.Module, spec: ArchitectureSpec, head_dim: int) -> list[LayerShape]:
    """The current head, key/value-head and neuron counts of every block."""
    shapes = []
    for layer in transformer_blocks(model, spec):
        heads = in_features(layer.get_submodule(spec.o)) // head_dim
        kv_heads = out_features(layer.get_submodule(spec.k)) // head_dim if spec.grouped_query else heads
        shapes.append(LayerShape(heads, kv_heads, in_features(layer.get_submodule(spec.mlp_out))))
    return shapes


def unit_costs(layer: nn.Module, spec: ArchitectureSpec, head_dim: int, group_size: int) -> tuple[int, int]:
    """Prunable parameters freed by removing one attention unit (one head, or one key/value group under GQA) and by
    removing one MLP neuron of `layer`."""
    o_col = out_features(layer.get_submodule(spec.o))
    if spec.qkv:
        row = _row_cost(layer.get_submodule(spec.qkv))
        q_row = k_row = v_row = row
    else:
        q_row, k_row, v_row = (_row_cost(layer.get_submodule(p)) for p in (spec.q, spec.k, spec.v))
    head = group_size * head_dim * (q_row + o_col) + head_dim * (k_row + v_row)
    neuron = sum(_row_cost(layer.get_submodule(p)) for p in spec.mlp_in)
    neuron += out_features(layer.get_submodule(spec.mlp_out))
    return head, neuron


def prunable_parameters(model: nn.Module, spec: ArchitectureSpec) -> int:
    """Weights and biases of the attention and MLP projections of every block (the denominator of sparsity)."""
    total = 0
    for layer in transformer_blocks(model, spec):
        for module in _projections(layer, spec):
            total += module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)
    return total


def model_parameters(model: nn.Module) -> int:
    """All parameters of the model except pruning gates (shared, tied tensors counted once)."""
    seen, total = set(), 0
    for name, param in model.named_parameters(remove_duplicate=True):
        if "hf_prune_gate" in name or id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def forward_flops(model: nn.Module, spec: ArchitectureSpec, head_dim: int, seq_len: int = 128) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass over one sequence of `seq_len` tokens:
    every Linear/Conv1D projection plus the attention score and context products. Embedding look-ups, norms and
    activations are not counted."""
    matmul = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            matmul += module.weight.numel()
    attention = sum(shape.heads for shape in layer_shapes(model, spec, head_dim)) * head_dim * 2 * seq_len
    return 2 * seq_len * (matmul + attention)
