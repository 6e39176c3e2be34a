"""The Torch-Pruning peer for Llama-family decoders (benchmarks/torch_pruning_llm_peer.py) removes whole key/value
groups and MLP neurons, lands on the requested share of prunable parameters, never brings a removed unit back, and the
keep-masks it returns compute what Torch-Pruning's physically pruned copy computes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import hf_prune
from hf_prune.accounting import prunable_parameters
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state, masks_applied
from hf_prune.selection import unit_costs_by_layer

from .tiny_models import FAMILY, build, counting_dataset, inputs, logits, trainer_for


pytest.importorskip("torch_pruning")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def llm_peer():
    """The peer module, its method registered for these tests only: the registry is global, and other tests list
    every registered method, also to subprocesses that never import benchmarks/."""
    from hf_prune import configs, registry

    module = importlib.import_module("torch_pruning_llm_peer")  # registers "torch_pruning_llm" on first import
    name = module.TorchPruningLLMConfig.method
    if name not in registry.available_methods():  # imported before, unregistered by an earlier teardown
        registry.register_method(module.TorchPruningLLMConfig, module.TorchPruningLLMMethod)
        configs._CONFIG_CLASSES[name] = module.TorchPruningLLMConfig
    module.TorchPruningLLMMethod.calibration = _calibration()
    yield module
    module.TorchPruningLLMMethod.calibration = []
    registry._METHODS.pop(name, None)
    configs._CONFIG_CLASSES.pop(name, None)


def _calibration(batches: int = 2, size: int = 4) -> list[dict]:
    ids = torch.tensor(counting_dataset(batches * size, seed=1)["input_ids"])
    return [{"input_ids": ids[i : i + size], "labels": ids[i : i + size]} for i in range(0, len(ids), size)]


def _removed_parameters(model, masks) -> int:
    costs = unit_costs_by_layer(model, get_pruning_state(model))
    return sum(costs[k][i] * int((~m).sum()) for k in (HEADS, NEURONS) for i, m in enumerate(masks[k]))


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_select_lands_on_target_in_whole_kv_groups_and_matches_torch_pruning(llm_peer, name):
    family = FAMILY[name]
    model = hf_prune.prepare_model_for_pruning(build(family), llm_peer.TorchPruningLLMConfig(target_sparsity=0.4))
    state = get_pruning_state(model)
    method = state.method
    total = prunable_parameters(model, state.spec)
    neuron = min(unit_costs_by_layer(model, state)[NEURONS])
    batch = inputs(family)

    for target in (0.2, 0.4):  # two events of a schedule: the second starts from the first one's masks
        before = {k: [m.clone() for m in state.masks(k)] for k in (HEADS, NEURONS)}
        pruned, masks = method.torch_pruning_copy(target)
        assert all(m.numel() == family.kv_heads for m in masks[HEADS])  # one entry per KV group
        assert all(m.any() for m in masks[HEADS])  # the 90 % cap keeps a group in every layer
        assert abs(_removed_parameters(model, masks) - target * total) <= neuron  # within one unit (a neuron)
        for kind in (HEADS, NEURONS):  # monotone: nothing removed before comes back
            assert all(not (m & ~b).any() for m, b in zip(masks[kind], before[kind]))
        # the mapping back is right: the gated model with these hard masks computes Torch-Pruning's pruned copy
        with masks_applied(state, masks):
            gated = logits(model, batch)
        torch.testing.assert_close(logits(pruned, batch), gated, atol=1e-4, rtol=0)
        # ... and it is, weight for weight, what hf_prune's own surgery makes of the same units
        group = family.heads // family.kv_heads
        heads = {
            i: [u * group + r for u in (~m).nonzero().flatten().tolist() for r in range(group)]
            for i, m in enumerate(masks[HEADS])
        }
        neurons = {i: (~m).nonzero().flatten().tolist() for i, m in enumerate(masks[NEURONS])}
        surgery = hf_prune.prune_structures(llm_peer.plain_copy(model), heads=heads, neurons=neurons)
        for (key, ours), theirs in zip(surgery.named_parameters(), pruned.parameters(), strict=True):
            assert torch.equal(ours, theirs), key
        assert pruned.model.embed_tokens.weight.shape == model.model.embed_tokens.weight.shape
        assert pruned.lm_head.weight.shape == model.lm_head.weight.shape
        method.apply_masks(masks)
    assert any(not m.all() for m in state.masks(HEADS)) and any(not m.all() for m in state.masks(NEURONS))
    assert hf_prune.pruning_summary(model)["sparsity"] == pytest.approx(0.4, abs=neuron / total)


def test_units_removed_before_rank_first(llm_peer):
    """Zeroed units get exactly zero group-Taylor importance, so Torch-Pruning takes them before any other."""
    family = FAMILY["llama"]
    model = hf_prune.prepare_model_for_pruning(build(family), llm_peer.TorchPruningLLMConfig(target_sparsity=0.4))
    state = get_pruning_state(model)
    keep = {HEADS: [torch.tensor([False, True]), torch.ones(2, dtype=torch.bool)], NEURONS: []}
    for layer in range(2):
        mask = torch.ones(family.neurons, dtype=torch.bool)
        mask[[3, 7 + layer]] = False
        keep[NEURONS].append(mask)
    state.method.apply_masks(keep)
    dense = llm_peer.plain_copy(model)
    llm_peer.zero_removed_units(dense, keep)
    peer = llm_peer.LLMPeer(dense, _calibration(), previous=keep)
    for kind in (HEADS, NEURONS):
        for scores, mask in zip(peer.scores[kind], keep[kind]):
            assert (scores[~mask] == 0).all() and (scores[mask] > 0).all()
    removed = peer.removed_by_torch_pruning(0.25, 0.25)
    assert 0 in removed[HEADS][0] and {3, 7} <= removed[NEURONS][0] and {3, 8} <= removed[NEURONS][1]


@pytest.mark.parametrize("ratio", [0.2, 0.45])
def test_decisions_read_are_what_torch_pruning_prunes(llm_peer, ratio):
    """Where the per-layer cap does not bind, the units read from Torch-Pruning's interactive step are exactly what
    its own `step()` removes: both copies hold the same weights."""
    dense = build(FAMILY["qwen2"])
    reader = llm_peer.LLMPeer(llm_peer.plain_copy(dense), _calibration())
    keep = reader.keep_masks(reader.removed_by_torch_pruning(ratio, ratio))
    assert any(not m.all() for m in keep[HEADS]) and any(not m.all() for m in keep[NEURONS])
    ours = reader.prune(keep)
    own = llm_peer.LLMPeer(llm_peer.plain_copy(dense), _calibration())
    own.set_ratios(ratio, ratio).step()
    own.narrow_kv()
    theirs = own.model
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kind", [HEADS, NEURONS])
def test_one_kind_only(llm_peer, kind):
    dense = build(FAMILY["llama"])
    peer = llm_peer.LLMPeer(llm_peer.plain_copy(dense), _calibration(), heads=kind == HEADS, neurons=kind == NEURONS)
    best = peer.search(0.3)
    other = NEURONS if kind == HEADS else HEADS
    assert all(m.all() for m in best["keep"][other]) and any(not m.all() for m in best["keep"][kind])
    unit = max(cost[0 if kind == HEADS else 1] for cost in peer.costs)
    assert abs(best["sparsity"] - 0.3) * peer.total <= unit
    pruned = peer.prune(best["keep"])
    assert 1 - prunable_parameters(pruned, hf_prune.get_architecture(pruned)) / peer.total == pytest.approx(
        best["sparsity"]
    )
    logits(pruned, inputs(FAMILY["llama"]))


def test_one_shot_helper_and_unsupported_families(llm_peer):
    family = FAMILY["llama"]
    dense = build(family)
    pruned, info = llm_peer.prune_llm_to_sparsity(dense, 0.5, _calibration())
    total = prunable_parameters(dense, hf_prune.get_architecture(dense))
    assert abs(info["sparsity"] - 0.5) * total <= 3 * family.make_config().hidden_size  # one neuron: gate, up, down
    assert info["flops_ratio"] < 1 and info["parameters"] < sum(p.numel() for p in dense.parameters())
    assert logits(pruned, inputs(family)).shape == logits(dense, inputs(family)).shape
    with pytest.raises(ValueError, match="stock model"):
        llm_peer.prune_llm_to_sparsity(
            hf_prune.prepare_model_for_pruning(dense, llm_peer.TorchPruningLLMConfig()), 0.5, _calibration()
        )
    with pytest.raises(ValueError, match="llama, mistral, qwen2"):
        hf_prune.prepare_model_for_pruning(build(FAMILY["bert"]), llm_peer.TorchPruningLLMConfig())


def test_schedule_reaches_target_and_finalizes(llm_peer, tmp_path):
    family = FAMILY["llama"]
    model = build(family)
    config = llm_peer.TorchPruningLLMConfig(target_sparsity=0.3, schedule="cubic", prune_start=0.2, prune_end=0.7)
    trainer = trainer_for(model, config, tmp_path, steps=10, train_dataset=counting_dataset(64))
    method = get_pruning_state(model).method
    events = []
    select = method.select
    method.select = lambda sparsity: events.append(sparsity) or select(sparsity)
    trainer.train()
    assert len(events) >= 3 and events[-1] == pytest.approx(0.3)
    total = prunable_parameters(model, get_pruning_state(model).spec)
    neuron = min(unit_costs_by_layer(model, get_pruning_state(model))[NEURONS])
    assert hf_prune.pruning_summary(model)["sparsity"] == pytest.approx(0.3, abs=neuron / total)
    batch = inputs(family)
    state = get_pruning_state(model)
    with masks_applied(state, state.method.keep_masks()):
        gated = logits(model.eval(), batch)
    finalized = trainer.finalize(evaluate=False, measure_latency=False).eval()
    assert hf_prune.pruning_summary(finalized)["sparsity"] == pytest.approx(0.3, abs=neuron / total)
    torch.testing.assert_close(logits(finalized, batch), gated, atol=1e-5, rtol=1e-4)
