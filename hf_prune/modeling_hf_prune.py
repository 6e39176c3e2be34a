# Runtime support for models pruned by hf_prune.
#
# This file imports only torch and transformers. hf_prune uses it for its own surgery, and copies it (with a short
# generated footer naming the model classes) into every exported folder whose per-layer sizes cannot be written in the
# stock config, so that `AutoModel*.from_pretrained(folder, trust_remote_code=True)` works without hf_prune installed.
"""Resize transformer blocks to per-layer head and neuron counts (hf_prune runtime, self-contained)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


# ---------------------------------------------------------------------------------------------------------------------
# Module paths and in-place resizing
# ---------------------------------------------------------------------------------------------------------------------


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Return the submodule at dotted `path` ("" is `root` itself)."""
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted `path`."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)


def decoder_layers(model: nn.Module, spec: dict) -> nn.ModuleList:
    """The list of transformer blocks of `model` (a base model or one with a task head)."""
    return get_module(model.base_model, spec["layers"])


def _select(tensor: torch.Tensor, dim: int, index: torch.Tensor | int) -> torch.Tensor:
    # an int keeps the first `index` entries (used when rebuilding a pruned layout: the saved weights are already sliced)
    if isinstance(index, int):
        return tensor.narrow(dim, 0, index).clone()
    return tensor.index_select(dim, index.to(tensor.device)).clone()


def resize_projection(module: nn.Module, side: str, index: torch.Tensor | int) -> None:
    """Keep only `index` of the output features (`side="out"`) or input features (`side="in"`) of a projection.

    Works for `nn.Linear` (weight `[out, in]`) and GPT-2's `Conv1D` (weight `[in, out]`). Biases follow the outputs.
    """
    transposed = isinstance(module, Conv1D)
    if not transposed and not isinstance(module, nn.Linear):
        raise TypeError(f"cannot resize {type(module).__name__}: only nn.Linear and Conv1D projections are supported")
    weight_dim = (1 if transposed else 0) if side == "out" else (0 if transposed else 1)
    requires_grad = module.weight.requires_grad
    module.weight = nn.Parameter(_select(module.weight.data, weight_dim, index), requires_grad=requires_grad)
    if side == "out" and module.bias is not None:
        module.bias = nn.Parameter(_select(module.bias.data, 0, index), requires_grad=module.bias.requires_grad)
    new_size = module.weight.shape[weight_dim]
    if transposed:
        if side == "out":
            module.nf = new_size
        else:
            module.nx = new_size
    elif side == "out":
        module.out_features = new_size
    else:
        module.in_features = new_size


def in_features(module: nn.Module) -> int:
    """Input width of an `nn.Linear` or a `Conv1D` (whose weight is stored transposed)."""
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.weight.shape[1]


def out_features(module: nn.Module) -> int:
    """Output width of an `nn.Linear` or a `Conv1D`."""
    return module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]


def _expand_heads(index: torch.Tensor | int, head_dim: int) -> torch.Tensor | int:
    """Feature indices covered by the given head indices (or a count of leading heads)."""
    if isinstance(index, int):
        return index * head_dim
    offsets = torch.arange(head_dim, device=index.device)
    return (index[:, None] * head_dim + offsets).reshape(-1)


# ---------------------------------------------------------------------------------------------------------------------
# Sub-layers with nothing left
# ---------------------------------------------------------------------------------------------------------------------


class EmptySublayer(nn.Module):
    """Stands in for an attention or MLP module whose every head or neuron was removed.

    It contributes only the output projection's bias (zeros when there is none). The emptied projections stay as
    children under their original names, so state-dict keys (and the bias) are unchanged.
    """

    def __init__(self, original: nn.Module, out_proj: str | None, out_features: int, returns_tuple: bool):
        super().__init__()
        for name, child in original.named_children():
            self.add_module(name, child)
        self.out_proj = out_proj
        self.out_features = out_features
        self.returns_tuple = returns_tuple
        self.layer_idx = getattr(original, "layer_idx", None)

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        output = hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)
        bias = getattr(get_module(self, self.out_proj), "bias", None) if self.out_proj else None
        if bias is not None:
            output = output + bias.to(output.dtype)
        cache = kwargs.get("past_key_values")
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            # keep the cache's sequence bookkeeping right for generation: this layer stores zero-head keys/values
            empty = hidden_states.new_zeros(hidden_states.shape[0], 0, hidden_states.shape[1], 1)
            cache.update(empty, empty, self.layer_idx)
        return (output, None) if self.returns_tuple else output


# ---------------------------------------------------------------------------------------------------------------------
# Resizing one block
# ---------------------------------------------------------------------------------------------------------------------


def _set_attention_attributes(attention: nn.Module, spec: dict, heads: int, kv_heads: int, head_dim: int) -> None:
    values = {"heads": heads, "kv_heads": kv_heads, "width": heads * head_dim}
    values["groups"] = heads // kv_heads if kv_heads else 1
    for name, key in spec["attention_attributes"].items():
        setattr(attention, name, values[key])


def resize_block(
    layer: nn.Module,
    spec: dict,
    head_dim: int,
    heads: torch.Tensor | int | None = None,
    kv_heads: torch.Tensor | int | None = None,
    neurons: torch.Tensor | int | None = None,
) -> None:
    """Shrink one transformer block to the given query heads, key/value heads and MLP neurons.

    Each argument is either a sorted index tensor of the units to keep or an int (keep that many leading units); `None`
    leaves that part as it is. Key/value heads only apply to grouped-query attention specs.
    """
    if heads is not None:
        n_heads = heads if isinstance(heads, int) else len(heads)
        width = _expand_heads(heads, head_dim)
        if spec.get("qkv"):
            fused = get_module(layer, spec["qkv"])
            full = out_features(fused) // 3
            if isinstance(width, int):
                width = torch.arange(width)
            resize_projection(fused, "out", torch.cat([width + i * full for i in range(3)]))
        else:
            kv_width = width if kv_heads is None else _expand_heads(kv_heads, head_dim)
            resize_projection(get_module(layer, spec["q"]), "out", width)
            resize_projection(get_module(layer, spec["k"]), "out", kv_width)
            resize_projection(get_module(layer, spec["v"]), "out", kv_width)
        resize_projection(get_module(layer, spec["o"]), "in", width)
        n_kv = n_heads if kv_heads is None else (kv_heads if isinstance(kv_heads, int) else len(kv_heads))
        attention = get_module(layer, spec["attention"])
        if n_heads == 0:
            # the stand-in returns the output projection's bias when that projection lives inside the attention
            # module; otherwise (BERT) a zero-width context, which the outer projection maps to its bias
            inside = spec["o"].startswith(spec["attention"] + ".")
            o_path = spec["o"][len(spec["attention"]) + 1 :] if inside else None
            width_out = out_features(get_module(layer, spec["o"])) if inside else 0
            set_module(layer, spec["attention"], EmptySublayer(attention, o_path, width_out, returns_tuple=True))
        else:
            _set_attention_attributes(attention, spec, n_heads, n_kv, head_dim)
    if neurons is not None:
        for path in spec["mlp_in"]:
            resize_projection(get_module(layer, path), "out", neurons)
        down = get_module(layer, spec["mlp_out"])
        resize_projection(down, "in", neurons)
        n_neurons = neurons if isinstance(neurons, int) else len(neurons)
        if n_neurons == 0 and isinstance(down, Conv1D):
            # Conv1D cannot multiply a zero-width input; the whole MLP then reduces to its output bias
            mlp_path = spec["mlp_out"].rpartition(".")[0]
            out_proj = spec["mlp_out"].rpartition(".")[2]
            empty = EmptySublayer(get_module(layer, mlp_path), out_proj, out_features(down), returns_tuple=False)
            set_module(layer, mlp_path, empty)


def apply_layout(model: nn.Module, spec: dict, layout: dict) -> None:
    """Resize every block of a freshly built (full-size) model to the per-layer counts in `layout`."""
    head_dim = layout["head_dim"]
    for i, layer in enumerate(decoder_layers(model, spec)):
        kv = layout["kv_heads"][i] if layout.get("kv_heads") is not None else None
        resize_block(layer, spec, head_dim, heads=layout["heads"][i], kv_heads=kv, neurons=layout["neurons"][i])


class PrunedModelMixin:
    """Builds the stock architecture from the base config, then resizes it to `config.hf_prune_layout`."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_layout(self, SPEC, config.hf_prune_layout)  # noqa: F821 (SPEC is defined by the generated footer)
