"""Every registered method × every supported family: identity at init, hard masks equal the finalized model, and
train -> finalize -> reload. Each method runs with settings that make it actually prune, and BMRS moves its gates
away from 1, so the gate-baking paths (GPT-2's Conv1D, grouped-query attention) are exercised."""

import pytest
import torch

import hf_prune
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state, masks_applied

from .tiny_models import FAMILIES, FAMILY_IDS, build, dataset, inputs, logits, method_config, trainer_for


# settings that make each method prune within a short run (BMRS: a KL that swamps the task, decisions every step)
SETTINGS = {
    "bmrs": (
        {"pruning_interval": 1, "pretrained_evidence": 0, "min_heads_per_layer": 2, "min_neurons_per_layer": 8},
        {"gate_learning_rate": 1.0, "pruning_loss_weight": 100.0},
    ),
    "bingo": ({"probe_interval": 1, "p_head": 0.3, "p_neuron": 0.2, "prune_start": 0.0, "prune_end": 0.75}, {}),
}
TARGET_DEFAULTS = ({"prune_start": 0.0, "prune_end": 0.75}, {})


def config_and_args(method: str):
    fields, args = SETTINGS.get(method, TARGET_DEFAULTS)
    return method_config(method, 0.4, **fields), args


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("method", hf_prune.available_methods())
def test_method_on_family(method, family, tmp_path):
    batch = inputs(family)
    reference = logits(build(family), batch)
    # identity at init, with the method's default config: exact for mask-only gates, within BMRS's E[θ] ≈ 0.995
    default = hf_prune.prepare_model_for_pruning(build(family), method_config(method, 0.4))
    atol = 0.05 * float(reference.abs().max()) if method == "bmrs" else 0.0
    torch.testing.assert_close(logits(default, batch), reference, atol=atol, rtol=0)

    model = build(family)
    config, args = config_and_args(method)
    hf_prune.prepare_model_for_pruning(model, config)
    state = get_pruning_state(model)
    gates = [g for kind in (HEADS, NEURONS) for g in state.gates(kind) if g is not None]
    steps = 10 if method == "bmrs" else 4
    trainer = trainer_for(model, config, tmp_path, steps=steps, args=args, train_dataset=dataset(family, 32))
    trainer.train()
    model.eval()
    keep = state.method.keep_masks()
    removed = sum(int((~m).sum()) for kind in (HEADS, NEURONS) for m in keep[kind] if m is not None)
    assert removed > 0, f"{method} pruned nothing on {family.name}"
    if method == "bmrs":  # the surviving gates moved away from 1, so finalize has values to bake in
        assert float((1 - torch.cat([g.expected()[g.mask] for g in gates])).abs().max()) > 1e-3
    with masks_applied(state, keep):
        hard = logits(model, batch)  # the gated model with the final rule's hard masks

    pruned = trainer.finalize(evaluate=False, measure_latency=False).eval()
    finalized = logits(pruned, batch)
    torch.testing.assert_close(finalized, hard, atol=1e-5, rtol=1e-4)
    assert hf_prune.pruning_summary(pruned)["sparsity"] > 0

    pruned.save_pretrained(tmp_path / "pruned")
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path / "pruned").eval()
    torch.testing.assert_close(logits(reloaded, batch), finalized, atol=1e-5, rtol=0)
