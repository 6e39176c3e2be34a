"""BMRS honours the shared guard rails (floors, uniform layers, neuron multiples) at every decision and at finalize."""

import pytest
import torch
import transformers

import hf_prune
from hf_prune import BmrsConfig
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state

from .tiny_models import FAMILY, build, inputs, logits, run_with_history


def aggressive_run(tmp_path, config, family="bert", steps=12):
    """A run whose KL swamps the task: most gates relax to the prior within a few steps, decisions every step."""
    options = {"per_device_train_batch_size": 8, "gate_learning_rate": 1.0, "pruning_loss_weight": 100.0}
    return run_with_history(tmp_path, config, family, steps, size=32, logging_steps=100, **options)


def counts(masks, kind):
    return [int(m.sum()) for m in masks[kind]]


def assert_monotone(history):
    for earlier, later in zip(history.masks, history.masks[1:]):
        for kind in (HEADS, NEURONS):
            for a, b in zip(earlier[kind], later[kind]):
                assert not bool((b & ~a).any()), f"a removed {kind} unit came back"


def test_floors_hold_at_every_decision(tmp_path):
    _, free = aggressive_run(tmp_path / "free", BmrsConfig(pruning_interval=1))
    assert min(counts(free.masks[-1], HEADS)) < 2  # without floors the same run goes below them
    assert min(counts(free.masks[-1], NEURONS)) < 10

    config = BmrsConfig(pruning_interval=1, min_heads_per_layer=2, min_neurons_per_layer=10)
    trainer, history = aggressive_run(tmp_path / "floors", config)
    assert_monotone(history)
    for masks in history.masks:
        assert min(counts(masks, HEADS)) >= 2 and min(counts(masks, NEURONS)) >= 10
    assert sum(counts(history.masks[-1], NEURONS)) < 0.5 * 2 * 48  # pruning still happened
    trainer.finalize(evaluate=False, measure_latency=False)
    result = hf_prune.pruning_summary(trainer.model)
    assert min(len(v) for v in result["kept_neurons"].values()) >= 10
    assert min(len(v) for v in result["kept_heads"].values()) >= 2


def test_uniform_layers_and_multiples_export_to_the_stock_config(tmp_path):
    family = FAMILY["llama"]
    config = BmrsConfig(pruning_interval=1, uniform_layers=True, neuron_multiple=4)
    trainer, history = aggressive_run(tmp_path, config, family="llama")
    assert_monotone(history)
    for masks in history.masks:
        assert len(set(counts(masks, HEADS))) == 1 and len(set(counts(masks, NEURONS))) == 1
        assert all(c % 4 == 0 for c in counts(masks, NEURONS))
    assert counts(history.masks[-1], NEURONS)[0] < 48  # something was removed
    model = trainer.finalize(evaluate=False, measure_latency=False)
    batch = inputs(family)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "pruned")
    assert transformers.AutoConfig.from_pretrained(tmp_path / "pruned").model_type == "llama"
    assert not (tmp_path / "pruned" / "modeling_hf_prune.py").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()  # no remote code
    assert type(reloaded) is transformers.LlamaForCausalLM
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=0)


def trained_looking(family, config, seed=0):
    """A prepared model whose gates look trained: many units diffuse (ΔF ≥ 0), the rest sharp."""
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, config)
    state = get_pruning_state(model)
    g = torch.Generator().manual_seed(seed)
    for gate in state.gates(HEADS) + state.gates(NEURONS):
        diffuse = torch.rand(gate.num_units, generator=g) < 0.8
        gate.mu.data = torch.where(diffuse, torch.empty(gate.num_units).uniform_(-12, -2, generator=g), 0.0)
        gate.log_sigma.data = torch.where(diffuse, torch.empty(gate.num_units).uniform_(2, 3.5, generator=g), -3.0)
    return model, state


def test_a_floor_keeps_the_units_with_the_lowest_delta_f():
    family = FAMILY["bert"]
    _, free = trained_looking(family, BmrsConfig())
    proposal, scores = free.method.proposal()
    assert min(counts(proposal, NEURONS)) < 20  # the raw BMR proposal goes below the floor

    _, state = trained_looking(family, BmrsConfig(min_neurons_per_layer=20))
    state.method.decide()
    for layer, gate in enumerate(state.gates(NEURONS)):
        kept = gate.mask
        assert int(kept.sum()) == max(20, counts(proposal, NEURONS)[layer])
        delta_f = state.method.delta_f(gate)
        assert delta_f[kept].max() <= delta_f[~kept].min()  # the kept ones are the lowest-ΔF units


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_finalize_applies_the_rails_when_no_decision_ran(family):
    config = BmrsConfig(uniform_layers=True, neuron_multiple=8, min_heads_per_layer=1)
    model, state = trained_looking(FAMILY[family], config)
    keep = state.method.keep_masks()  # no training: the final pass runs here
    neurons = counts(keep, NEURONS)
    assert len(set(neurons)) == 1 and neurons[0] % 8 == 0 and neurons[0] < 48
    heads = counts(keep, HEADS)
    assert len(set(heads)) == 1 and heads[0] >= 1
    if family == "bert":  # the stock BERT config cannot express a head count: all heads stay
        assert heads[0] == FAMILY[family].kv_heads
