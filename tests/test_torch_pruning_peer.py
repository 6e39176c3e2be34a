"""The Torch-Pruning peer row of the quality benchmark prunes what it claims: whole heads and MLP neurons, to the
requested share of prunable parameters, and the result computes what hf_prune's own surgery computes when it removes
the same units."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from hf_prune import prune_structures

from .tiny_models import FAMILIES, build, inputs


pytest.importorskip("torch_pruning")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from torch_pruning_peer import prune_to_sparsity  # noqa: E402


def _removed_units(dense, pruned, head_dim: int):
    """Which heads / neurons of `dense` are gone from `pruned`, found by matching weight rows."""
    heads, neurons = {}, {}
    for i, (d, p) in enumerate(zip(dense.bert.encoder.layer, pruned.bert.encoder.layer)):
        q_dense, q_pruned = d.attention.self.query.weight, p.attention.self.query.weight
        kept = [q_pruned[j : j + head_dim] for j in range(0, q_pruned.shape[0], head_dim)]
        n_heads = q_dense.shape[0] // head_dim
        heads[i] = [
            h
            for h in range(n_heads)
            if not any(torch.equal(q_dense[h * head_dim : (h + 1) * head_dim], k) for k in kept)
        ]
        rows = {tuple(r.tolist()) for r in p.intermediate.dense.weight}
        neurons[i] = [n for n, r in enumerate(d.intermediate.dense.weight) if tuple(r.tolist()) not in rows]
    return heads, neurons


@pytest.mark.parametrize("criterion", ["torch_pruning_l2", "torch_pruning_taylor"])
def test_peer_prunes_whole_units_to_the_target(criterion):
    family = next(f for f in FAMILIES if f.name == "bert")
    dense = build(family).eval()
    batch = inputs(family, batch=4, length=9)
    batch["labels"] = torch.tensor([0, 1, 1, 0])
    pruned, info = prune_to_sparsity(dense, criterion, 0.5, [batch], tolerance=0.02)
    assert abs(info["sparsity"] - 0.5) < 0.06 and info["flops_ratio"] < 1
    assert pruned.config.hidden_size == dense.config.hidden_size
    assert pruned.classifier.weight.shape == dense.classifier.weight.shape

    head_dim = dense.config.hidden_size // dense.config.num_attention_heads
    heads, neurons = _removed_units(dense, pruned, head_dim)
    assert any(heads.values()) and any(neurons.values())
    assert all(len(h) < family.heads for h in heads.values())  # the 90 % per-layer cap keeps a head
    reference = prune_structures(copy.deepcopy(dense), heads=heads, neurons=neurons)
    features = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(pruned(**features).logits, reference(**features).logits, rtol=0, atol=1e-5)
