"""Torch-Pruning as the peer for decoder LLMs of the Llama family (Llama, Mistral, Qwen2; grouped-query attention).

Two forms, as for BERT-family encoders (`torch_pruning_peer.py`, `TorchPruningMethod` in `schedule_benchmark.py`):
`prune_llm_to_sparsity` prunes a copy once (a one-shot-after-training row), and `TorchPruningLLMConfig` (method
`"torch_pruning_llm"`) asks Torch-Pruning at every event of hf_prune's sparsity schedule which units to remove from a
copy of the current model, so a comparison measures the criterion, not the schedule.

Torch-Pruning (`pip install torch-pruning`, 1.6) is restricted to the units hf_prune prunes: MLP neurons (gate/up
out-channels with the down projection's in-channels) and attention in whole key/value groups (one unit = one KV head,
the query heads that read it and their o_proj columns). Every other Linear is ignored, which keeps the hidden size,
the embeddings and lm_head intact. The criterion is Torch-Pruning's group Taylor importance (`GroupTaylorImportance`:
|w · dL/dw| of every weight of the group, reduced over the group's layers and normalised by the group's mean) with the
summed gradients of causal-LM calibration batches, and its pruner ranks heads and channels globally
(`BasePruner(global_pruning=True, prune_num_heads=True, prune_head_dims=False)`).

Torch-Pruning 1.6.1 needs two adaptations for the Llama attention of transformers 5.x; neither changes the criterion:

* Its graph tracer does not terminate on that attention's forward (the rotary embedding's slices), so the dependency
  graph is traced through a stand-in forward, `o_proj(q_proj(x) * k_proj(x) * v_proj(x))`, that couples the same
  channels: the rotary embedding and the attention product only mix channels inside a head, and whole heads go.
* Its own GQA mode removes query heads inside every KV group and keeps all KV heads, which hf_prune cannot express.
  On the throwaway copy, k_proj and v_proj are therefore widened to the query width (each KV head repeated once per
  query head it serves, with 1/G of its gradient in each copy, so the unit's Taylor sum is unchanged), every head
  Torch-Pruning sees is one KV group (`num_heads` = KV heads for q, k and v), and after pruning one copy of each
  surviving KV head is folded back into stock k_proj/v_proj modules.

Torch-Pruning takes a head ratio and a channel ratio, not a parameter budget. A bisection on one common ratio (as for
the BERT peer) finds where the removed share crosses the target; a second bisection on the channel ratio alone, with
the heads of the lower end, fills the rest with neurons, so the result lands within about one neuron's parameters.
Each try reads the pruner's decisions from its interactive step without pruning (its per-step state is reset between
tries), so the graph is traced and the importance computed once per call. Torch-Pruning's `max_pruning_ratio` only
stops later steps of iterative pruning (in one step it removes all of a layer's lowest-ranked units, or none when that
would empty the layer), so the same 90 % per-layer cap as the BERT peer is applied to its decisions: a layer that would
lose more keeps back its best units by the same importance (as do the config's `min_heads_per_layer` /
`min_neurons_per_layer` floors under the schedule).

The pruned copy needs no attention bookkeeping: the transformers 5.x attention takes its head count from the width of
q_proj and keeps `num_key_value_groups`, which removing whole KV groups leaves unchanged (the copy's config still names
the dense sizes). One call costs a forward and backward pass over the calibration batches (most of its time on a
CPU), one tracing of the graph and at most 2 × `SEARCH_STEPS` ranking passes (no forward passes).
"""

from __future__ import annotations

import copy
import math
import types
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch_pruning_peer import MAX_LAYER_RATIO, describe

from hf_prune.accounting import forward_flops, prunable_parameters, unit_costs
from hf_prune.architectures import ArchitectureSpec, get_architecture, transformer_blocks
from hf_prune.configs import TargetConfig
from hf_prune.constants import GATE_NAME, HEADS, NEURONS
from hf_prune.mapping import is_prepared
from hf_prune.methods.base import TargetMethod
from hf_prune.registry import register_method
from hf_prune.selection import current_masks


SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2")
SEARCH_STEPS = 14  # bisection steps per phase; each costs one ranking pass, not a forward pass

Masks = dict[str, list[torch.Tensor | None]]


def check_family(model_or_config) -> ArchitectureSpec:
    """The architecture spec of a supported decoder; a `ValueError` naming the supported families otherwise."""
    spec = get_architecture(model_or_config)
    if spec.model_type not in SUPPORTED_FAMILIES:
        raise ValueError(
            f"The Torch-Pruning LLM peer supports Llama-family decoders ({', '.join(SUPPORTED_FAMILIES)}), not "
            f"model_type={spec.model_type!r}; use the BERT-family peer in torch_pruning_peer.py for encoders."
        )
    return spec


@dataclass
class _Block:
    """The projections of one decoder block."""

    attention: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    mlp_in: tuple[nn.Linear, ...]
    down: nn.Linear


def _blocks(model: nn.Module, spec: ArchitectureSpec) -> list[_Block]:
    return [
        _Block(
            attention=layer.get_submodule(spec.attention),
            q=layer.get_submodule(spec.q),
            k=layer.get_submodule(spec.k),
            v=layer.get_submodule(spec.v),
            o=layer.get_submodule(spec.o),
            mlp_in=tuple(layer.get_submodule(p) for p in spec.mlp_in),
            down=layer.get_submodule(spec.mlp_out),
        )
        for layer in transformer_blocks(model, spec)
    ]


def plain_copy(model: nn.Module) -> nn.Module:
    """A stock float32 copy of a (possibly gated) model on its device, without gates or hooks."""
    dense = type(model)(model.config)
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if GATE_NAME not in k})
    return dense.to(device=next(model.parameters()).device, dtype=torch.float32).eval()


@torch.no_grad()
def zero_removed_units(model: nn.Module, keep: Masks) -> None:
    """Zero the weights of the units `keep` removes (q/k/v rows of a KV group and its query heads, o_proj columns;
    gate/up rows and down columns of a neuron), so the plain copy computes what the gated model computes."""
    spec = check_family(model)
    head_dim = spec.head_dim(model.config)
    group = spec.num_heads(model.config) // spec.num_kv_heads(model.config)
    for block, heads, neurons in zip(_blocks(model, spec), keep[HEADS], keep[NEURONS]):
        for unit in [] if heads is None else (~heads).nonzero().flatten().tolist():
            wide = slice(unit * group * head_dim, (unit + 1) * group * head_dim)
            narrow = slice(unit * head_dim, (unit + 1) * head_dim)
            for projection, rows in ((block.q, wide), (block.k, narrow), (block.v, narrow)):
                projection.weight[rows] = 0
                if projection.bias is not None:
                    projection.bias[rows] = 0
            block.o.weight[:, wide] = 0
        for unit in [] if neurons is None else (~neurons).nonzero().flatten().tolist():
            for projection in block.mlp_in:
                projection.weight[unit] = 0
                if projection.bias is not None:
                    projection.bias[unit] = 0
            block.down.weight[:, unit] = 0


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _traced_attention(self, hidden_states, *args, **kwargs):
    """What Torch-Pruning traces instead of the attention forward: the same channel coupling (q, k and v of a head
    meet, o_proj reads the result), without the rotary embedding its tracer cannot follow. Tracing only."""
    return self.o_proj(self.q_proj(hidden_states) * self.k_proj(hidden_states) * self.v_proj(hidden_states)), None


def _cached_taylor():
    """Torch-Pruning's group Taylor importance, computed once per group: the copy does not change while the search
    asks the pruner for decisions at many ratios."""
    import torch_pruning as tp

    class CachedGroupTaylorImportance(tp.importance.GroupTaylorImportance):
        def __init__(self):
            super().__init__()
            self.cache, self.by_root = {}, {}

        def __call__(self, group):
            root = group[0]
            key = (id(root.dep.target.module), root.dep.handler, len(root.idxs))
            if key not in self.cache:
                self.cache[key] = self.by_root[key[0]] = super().__call__(group)  # groups of every channel
            return self.cache[key]

    return CachedGroupTaylorImportance()


class LLMPeer:
    """Torch-Pruning's pruner over a plain copy of a Llama-family decoder, set up to prune whole KV groups and MLP
    neurons, that answers "which units go at these ratios" and prunes the copy once the ratios are chosen.

    Args:
        model: a stock model (it is modified: gradients, widened k/v, finally pruned); units already removed should
            be zero (`zero_removed_units`) and marked in `previous`.
        batches: causal-LM calibration batches (with `labels`) whose summed loss gradients the importance reads.
        previous: keep-masks of units removed before (they stay removed); default: nothing removed.
        heads, neurons: which unit kinds may be pruned.
        min_units: the fewest units each layer keeps, per kind (on top of the 90 % cap).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: list[dict],
        previous: Masks | None = None,
        heads: bool = True,
        neurons: bool = True,
        min_units: dict[str, int] | None = None,
    ):
        import torch_pruning as tp

        self.tp = tp
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.spec = spec = check_family(model)
        config = model.config
        self.head_dim = spec.head_dim(config)
        self.kv_heads = spec.num_kv_heads(config)
        self.group = spec.num_heads(config) // self.kv_heads
        self.blocks = _blocks(model, spec)
        layers = transformer_blocks(model, spec)
        # sizes of the unpruned geometry, in hf_prune's accounting
        self.total = prunable_parameters(model, spec)
        self.costs = [unit_costs(layer, spec, self.head_dim, self.group) for layer in layers]
        self.kinds = [k for k, on in ((HEADS, heads), (NEURONS, neurons)) if on]
        sizes = {HEADS: self.kv_heads, NEURONS: spec.num_neurons(config)}
        previous = previous or {k: [torch.ones(sizes[k], dtype=torch.bool)] * len(layers) for k in (HEADS, NEURONS)}
        self.previous = {k: [None if m is None else m.detach().cpu().bool() for m in previous[k]] for k in previous}
        floors = min_units or {}
        self.floor = {k: max(n - math.floor(MAX_LAYER_RATIO * n + 1e-9), floors.get(k, 0)) for k, n in sizes.items()}

        self._accumulate_gradients(batches)
        self._widen_kv()  # also when heads stay: the traced stand-in multiplies q, k and v channel by channel
        # a short example is enough to trace the graph
        example = {k: v[:1, :8] for k, v in batches[0].items() if k in ("input_ids", "attention_mask")}
        self.pruner = self._pruner(_to(example, self.device))
        self.o_layer = {id(b.o): i for i, b in enumerate(self.blocks)}
        self.down_layer = {id(b.down): i for i, b in enumerate(self.blocks)}
        self._scores = None

    # -- setup ---------------------------------------------------------------------------------------------------
    def _accumulate_gradients(self, batches: list[dict]) -> None:
        """The summed loss gradients of the projections (only theirs: embeddings, norms and lm_head need none)."""
        projections = {
            id(p) for b in self.blocks for m in (b.q, b.k, b.v, b.o, *b.mlp_in, b.down) for p in m.parameters()
        }
        frozen = [p for p in self.model.parameters() if id(p) not in projections and p.requires_grad]
        self.model.zero_grad(set_to_none=True)
        try:
            for p in frozen:
                p.requires_grad_(False)
            with torch.enable_grad():
                for batch in batches:
                    self.model(**_to(batch, self.device)).loss.backward()
        finally:
            for p in frozen:
                p.requires_grad_(True)

    @torch.no_grad()
    def _widen_kv(self) -> None:
        """k_proj and v_proj at the query width: row (g, r, d) of the wide layer is row (g, d) of the original, for
        each of the G query heads r of KV group g; each copy carries 1/G of the original gradient."""
        group, width = self.group, self.head_dim

        def repeat(t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            rows = t.reshape(self.kv_heads, 1, width, -1).expand(-1, group, -1, -1)
            return (rows.reshape(self.kv_heads * group * width, *t.shape[1:]) * scale).clone()

        for block in self.blocks:
            for name in ("k", "v"):
                narrow = getattr(block, name)
                wide = nn.Linear(narrow.in_features, self.kv_heads * group * width, bias=narrow.bias is not None)
                wide.to(device=narrow.weight.device, dtype=narrow.weight.dtype)
                wide.weight.copy_(repeat(narrow.weight))
                wide.weight.grad = repeat(narrow.weight.grad, 1 / group)
                if narrow.bias is not None:
                    wide.bias.copy_(repeat(narrow.bias[:, None])[:, 0])
                    wide.bias.grad = repeat(narrow.bias.grad[:, None], 1 / group)[:, 0]
                setattr(block.attention, f"{name}_proj", wide)
                setattr(block, name, wide)

    def _pruner(self, example: dict):
        tp = self.tp
        roots, num_heads = set(), {}
        for block in self.blocks:
            if HEADS in self.kinds:
                for projection in (block.q, block.k, block.v):
                    roots.add(projection)
                    num_heads[projection] = self.kv_heads  # one Torch-Pruning head = one KV group
            if NEURONS in self.kinds:
                roots.update(block.mlp_in)
        ignored = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m not in roots]
        self.num_heads = dict(num_heads)
        for block in self.blocks:
            block.attention.forward = types.MethodType(_traced_attention, block.attention)
        try:
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore")  # the RMSNorm weights, which stay whole, are "unwrapped parameters"
                return tp.pruner.BasePruner(
                    self.model,
                    example_inputs=example,
                    importance=_cached_taylor(),
                    global_pruning=True,
                    pruning_ratio=0.0,
                    head_pruning_ratio=0.0,
                    max_pruning_ratio=MAX_LAYER_RATIO,
                    ignored_layers=ignored,
                    num_heads=num_heads,
                    prune_num_heads=True,
                    prune_head_dims=False,
                    in_channel_groups={},
                    out_channel_groups={},
                    output_transform=lambda output: output.logits,
                )
        finally:
            for block in self.blocks:
                del block.attention.forward

    @property
    def scores(self) -> dict[str, list[torch.Tensor]]:
        """The importance Torch-Pruning ranks by, per unit (for a KV group the mean over its channels, as its head
        ranking takes); used to pick which units a capped layer keeps back. Read from the importance of the groups
        its pruner scored (rooted at o_proj's input channels and at the MLP's gate/up outputs)."""
        if self._scores is None:
            tp, dg, importance = self.tp, self.pruner.DG, self.pruner.importance
            scores = {HEADS: [], NEURONS: []}
            for block in self.blocks:
                if HEADS in self.kinds:
                    imp = importance.by_root.get(id(block.o))
                    if imp is None:
                        channels = list(range(block.o.in_features))
                        imp = importance(dg.get_pruning_group(block.o, tp.prune_linear_in_channels, channels))
                    scores[HEADS].append(imp.reshape(self.kv_heads, -1).mean(1).cpu())
                if NEURONS in self.kinds:
                    imp = next((importance.by_root[id(m)] for m in block.mlp_in if id(m) in importance.by_root), None)
                    if imp is None:
                        channels = list(range(block.down.in_features))
                        imp = importance(dg.get_pruning_group(block.down, tp.prune_linear_in_channels, channels))
                    scores[NEURONS].append(imp.cpu())
            self._scores = scores
        return self._scores

    # -- decisions -----------------------------------------------------------------------------------------------
    def set_ratios(self, head_ratio: float, channel_ratio: float):
        """Reset the pruner to a fresh one-step pruning at these ratios (its per-step state included) and return it."""
        pruner = self.pruner
        heads = pruner.initial_total_heads
        if heads - int(heads * (1 - head_ratio)) <= 0:
            head_ratio = 0.0  # below one head: Torch-Pruning would have no head threshold
        pruner.current_step = 0
        pruner.per_step_pruning_ratio = [0.0, channel_ratio]
        pruner.per_step_head_pruning_ratio = [0.0, head_ratio]
        pruner.num_heads.update(self.num_heads)
        pruner.out_channel_groups.update(self.num_heads)
        pruner._scope_initial_channels.clear()
        return pruner

    def removed_by_torch_pruning(self, head_ratio: float, channel_ratio: float) -> dict[str, list[set[int]]]:
        """The units Torch-Pruning's pruner removes at these ratios (read from its interactive step, nothing pruned)."""
        pruner = self.set_ratios(head_ratio, channel_ratio)
        removed = {HEADS: [set() for _ in self.blocks], NEURONS: [set() for _ in self.blocks]}
        width = self.group * self.head_dim
        # Torch-Pruning drops a layer's whole decision when it would empty the layer; read the ranking instead (nothing
        # is pruned here) and let `keep_masks` apply the cap
        pruner.DG.check_pruning_group = lambda group: True
        try:
            groups = list(pruner.step(interactive=True))
        finally:
            del pruner.DG.check_pruning_group
        for group in groups:
            for dep, idxs in group:
                if not pruner.DG.is_in_channel_pruning_fn(dep.handler):
                    continue
                module = id(dep.target.module)
                if module in self.o_layer:
                    channels = sorted(set(idxs))
                    units = {i // width for i in channels}
                    if len(channels) != len(units) * width:
                        raise RuntimeError("Torch-Pruning removed part of a KV group; only whole groups are expected")
                    removed[HEADS][self.o_layer[module]] |= units
                elif module in self.down_layer:
                    removed[NEURONS][self.down_layer[module]] |= set(idxs)
        return removed

    def keep_masks(self, removed: dict[str, list[set[int]]]) -> Masks:
        """Keep-masks of Torch-Pruning's removals with the per-layer cap applied, on top of the earlier removals."""
        keep = {HEADS: [], NEURONS: []}
        for kind in (HEADS, NEURONS):
            for layer, before in enumerate(self.previous[kind]):
                if before is None or kind not in self.kinds:
                    keep[kind].append(None if before is None else before.clone())
                    continue
                mask = before.clone()
                mask[sorted(removed[kind][layer])] = False
                missing = min(self.floor[kind], int(before.sum())) - int(mask.sum())
                if missing > 0:  # the cap: keep back the best of what Torch-Pruning removed here
                    candidates = (before & ~mask).nonzero().flatten()
                    best = candidates[torch.argsort(self.scores[kind][layer][candidates], descending=True)]
                    mask[best[:missing]] = True
                keep[kind].append(mask)
        return keep

    def sparsity(self, keep: Masks) -> float:
        """The share of the dense model's prunable parameters that `keep` removes (hf_prune's accounting)."""
        removed = 0
        for layer, (head_cost, neuron_cost) in enumerate(self.costs):
            for kind, cost in ((HEADS, head_cost), (NEURONS, neuron_cost)):
                mask = keep[kind][layer]
                removed += 0 if mask is None else cost * int((~mask).sum())
        return removed / self.total

    def search(self, target: float, steps: int = SEARCH_STEPS) -> dict:
        """The ratios whose keep-masks land closest to `target`: a bisection on one common ratio, then on the
        channel ratio alone with the heads of the lower end. Returns the best try (ratios, masks, sparsity)."""
        tolerance = min(cost for _, cost in self.costs) / self.total  # one neuron
        best = None

        def attempt(head_ratio: float, channel_ratio: float) -> float:
            nonlocal best
            keep = self.keep_masks(self.removed_by_torch_pruning(head_ratio, channel_ratio))
            sparsity = self.sparsity(keep)
            if best is None or abs(sparsity - target) < abs(best["sparsity"] - target):
                best = {"head_ratio": head_ratio, "channel_ratio": channel_ratio, "keep": keep, "sparsity": sparsity}
            return sparsity

        low, high = 0.0, 1.0
        for _ in range(steps):
            ratio = (low + high) / 2
            sparsity = attempt(ratio, ratio)
            if abs(sparsity - target) <= tolerance:
                return best
            low, high = (ratio, high) if sparsity < target else (low, ratio)
        channel_low, channel_high = low, 1.0
        for _ in range(steps):
            ratio = (channel_low + channel_high) / 2
            sparsity = attempt(low, ratio)
            if abs(sparsity - target) <= tolerance:
                break
            channel_low, channel_high = (ratio, channel_high) if sparsity < target else (channel_low, ratio)
        return best

    # -- pruning -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prune(self, keep: Masks) -> nn.Module:
        """Let Torch-Pruning remove every unit `keep` removes through its dependency groups (TP's own `group.prune`),
        then fold the widened k/v back into stock modules. Returns the pruned model (the same object)."""
        tp, dg = self.tp, self.pruner.DG
        width = self.group * self.head_dim
        for layer, block in enumerate(self.blocks):
            if HEADS in self.kinds and keep[HEADS][layer] is not None:
                units = (~keep[HEADS][layer]).nonzero().flatten().tolist()
                channels = [u * width + i for u in units for i in range(width)]
                if channels:
                    group = dg.get_pruning_group(block.o, tp.prune_linear_in_channels, channels)
                    if dg.check_pruning_group(group):
                        group.prune()
            if NEURONS in self.kinds and keep[NEURONS][layer] is not None:
                neurons = (~keep[NEURONS][layer]).nonzero().flatten().tolist()
                if neurons:
                    group = dg.get_pruning_group(block.down, tp.prune_linear_in_channels, neurons)
                    if dg.check_pruning_group(group):
                        group.prune()
        self.narrow_kv()
        self.model.zero_grad(set_to_none=True)
        for layer, block in enumerate(self.blocks):  # the copy holds exactly the kept units
            for kind, size in ((HEADS, block.o.in_features // width), (NEURONS, block.down.in_features)):
                mask = keep[kind][layer]
                if kind in self.kinds and mask is not None and int(mask.sum()) != size:
                    raise RuntimeError(f"layer {layer}: Torch-Pruning kept {size} {kind}, expected {int(mask.sum())}")
        return self.model

    @torch.no_grad()
    def narrow_kv(self) -> None:
        """Fold the widened k/v projections of the pruned copy back into stock ones (one copy per KV head)."""
        group, width = self.group, self.head_dim
        for block in self.blocks:
            for name in ("k", "v"):
                wide = getattr(block, name)
                units = wide.out_features // (group * width)
                rows = wide.weight.reshape(units, group, width, -1)
                if not all(torch.equal(rows[:, 0], rows[:, r]) for r in range(1, group)):
                    raise RuntimeError("the copies of a KV head no longer agree after pruning")
                narrow = nn.Linear(wide.in_features, units * width, bias=wide.bias is not None)
                narrow.to(device=wide.weight.device, dtype=wide.weight.dtype)
                narrow.weight.copy_(rows[:, 0].reshape(units * width, -1))
                if wide.bias is not None:
                    narrow.bias.copy_(wide.bias.reshape(units, group, width)[:, 0].reshape(-1))
                setattr(block.attention, f"{name}_proj", narrow)
                setattr(block, name, narrow)


def prune_llm_to_sparsity(dense: nn.Module, target: float, batches: list[dict]) -> tuple[nn.Module, dict]:
    """A copy of `dense` with about `target` of its prunable parameters removed by Torch-Pruning (group Taylor
    importance on the gradients of `batches`, causal-LM batches with labels), whole KV groups and MLP neurons.

    Returns the pruned copy and a describe dict: sparsity, parameters, flops_ratio, and the ratios found. The copy runs
    with the stock forward; its config still names the dense head and neuron counts (the layers differ in width)."""
    spec = check_family(dense)
    if is_prepared(dense):
        raise ValueError("prune_llm_to_sparsity takes a stock model; this one has hf_prune gates")
    dense_prunable = prunable_parameters(dense, spec)
    dense_flops = forward_flops(dense, spec, spec.head_dim(dense.config))
    peer = LLMPeer(copy.deepcopy(dense).eval(), batches)
    best = peer.search(target)
    pruned = peer.prune(best["keep"])
    info = describe(pruned, dense_prunable, dense_flops)
    return pruned, info | {"head_ratio": best["head_ratio"], "channel_ratio": best["channel_ratio"]}


# -- the peer as a target method -------------------------------------------------------------------------------------
@dataclass
class TorchPruningLLMConfig(TargetConfig):
    """Torch-Pruning's group Taylor importance on a Llama-family decoder, called at each event of the schedule
    (benchmark only)."""

    method = "torch_pruning_llm"


class TorchPruningLLMMethod(TargetMethod):
    """`select(sparsity)` asks Torch-Pruning which KV groups and neurons to remove from a plain copy of the current
    model, in which the units removed so far are zero (so it takes them first); the masks never regrow a unit."""

    calibration: list[dict] = []  # causal-LM training batches (with labels) for the gradients; set by the benchmark

    def check_model(self, model: nn.Module) -> None:
        check_family(model)

    def select(self, sparsity: float) -> Masks:
        return self.torch_pruning_copy(sparsity)[1]

    def torch_pruning_copy(self, sparsity: float) -> tuple[nn.Module, Masks]:
        """Torch-Pruning's pruned copy of the current model at `sparsity` and the keep-masks it stands for (ANDed
        with the current masks); `select` returns the masks."""
        if not self.calibration:
            raise ValueError("TorchPruningLLMMethod.calibration is empty: set it to a list of causal-LM batches")
        state, config = self.state, self.config
        current = current_masks(state)
        dense = plain_copy(self.model)
        zero_removed_units(dense, current)
        peer = LLMPeer(
            dense,
            self.calibration,
            previous=current,
            heads=any(m is not None for m in current[HEADS]),
            neurons=any(m is not None for m in current[NEURONS]),
            min_units={
                HEADS: math.ceil(config.min_heads_per_layer / state.layers[0].group_size),
                NEURONS: config.min_neurons_per_layer,
            },
        )
        keep = peer.search(sparsity)["keep"]
        pruned = peer.prune(keep)
        masks = {k: [None if m is None else m & c for m, c in zip(keep[k], current[k])] for k in (HEADS, NEURONS)}
        return pruned, masks


register_method(TorchPruningLLMConfig, TorchPruningLLMMethod)
