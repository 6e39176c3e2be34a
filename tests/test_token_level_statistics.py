"""Gate-gradient statistics (Taylor importance, BINGO's prior) under a per-token causal-LM loss: the same sequences
give the same per-example statistics whether they come padded in a batch or packed into one row."""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening

from hf_prune import prepare_model_for_pruning
from hf_prune.mapping import get_pruning_state
from hf_prune.methods.taylor import TaylorConfig

from .tiny_models import FAMILY, build


SEQUENCES = [[5, 9, 13, 17, 21], [4, 8, 12, 16, 20, 24, 28], [30, 31, 32, 33]]


def padded_batch() -> dict[str, torch.Tensor]:
    width = max(map(len, SEQUENCES))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in SEQUENCES])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in SEQUENCES])
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def packed_batch() -> dict[str, torch.Tensor]:
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": s} for s in SEQUENCES])
    return {k: batch[k] for k in ("input_ids", "position_ids", "labels")}


def statistics(model, batch) -> dict[str, torch.Tensor]:
    """The per-unit statistics one training micro-batch adds, for every gate."""
    gradients = get_pruning_state(model).method.gradients
    model.zero_grad()
    model(**batch).loss.backward()
    gradients.record(abs_weight=1.0, rel_weight=1.0)
    out = {}
    for i, gate in enumerate(gradients.gates):
        for name in ("grad_abs_sum", "grad_rel_sum", "grad_curv_sum"):
            out[f"{i}.{name}"] = gate.pending.pop(name)
        gate.pending = {}
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_and_padded_sequences_give_the_same_statistics(family):
    model = build(FAMILY[family], seed=2)
    model.config.use_cache = False  # transformers isolates packed sequences only without a KV cache (training)
    prepare_model_for_pruning(model, TaylorConfig(target_sparsity=0.3))
    model.train()
    padded, packed = padded_batch(), packed_batch()
    with torch.no_grad():  # the model itself sees the same sequences and the same per-token loss
        assert torch.allclose(model(**padded).loss, model(**packed).loss, atol=1e-6)
    by_padding, by_packing = statistics(model, padded), statistics(model, packed)
    for name, value in by_padding.items():
        torch.testing.assert_close(by_packing[name], value, rtol=1e-4, atol=1e-7, msg=name)
    # per example, not per row: the packed row's sum of |per-sequence gradient| is not |sum of them|
    assert any((v > 0).any() for k, v in by_padding.items() if k.endswith("grad_abs_sum"))
