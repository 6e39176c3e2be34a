"""The target schedule: units removed inside the Trainer run, monotone masks, recovery with removed units at zero."""

import json

import pytest
import torch

import hf_prune
from hf_prune import MagnitudeConfig
from hf_prune.accounting import prunable_parameters
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state
from hf_prune.selection import select_to_sparsity, unit_costs_by_layer

from .tiny_models import FAMILY, build, dataset, method_config, run_with_history


TARGET_METHODS = ["bingo", "magnitude", "random", "taylor"]


def train(tmp_path, config, family="bert", steps=10, **overrides):
    return run_with_history(tmp_path, config, family, steps, **overrides)


def largest_unit(model) -> int:
    return max(max(costs) for costs in unit_costs_by_layer(model, get_pruning_state(model)).values())


@pytest.mark.parametrize("steps, start, end", [(10, 0.2, 0.7), (100, 0.1, 0.9), (7, 0.0, 1.0)])
def test_cubic_schedule_follows_zhu_and_gupta(steps, start, end):
    model = build(FAMILY["bert"])
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=0.6, prune_start=start, prune_end=end))
    method = get_pruning_state(model).method
    values = {t: method.scheduled_sparsity(t, steps) for t in range(steps + 1)}
    t0, t1 = round(start * steps), round(end * steps)
    events = {t: s for t, s in values.items() if s is not None}
    assert min(events) > t0 and max(events) == t1 and 1 <= len(events) <= 11
    assert events[t1] == pytest.approx(0.6)
    for t, s in events.items():
        assert s == pytest.approx(0.6 * (1 - (1 - (t - t0) / (t1 - t0)) ** 3))
    assert list(events.values()) == sorted(events.values())  # never decreases


def test_one_shot_and_final_schedules():
    model = build(FAMILY["bert"])
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=0.5, schedule="one_shot", prune_end=0.5))
    method = get_pruning_state(model).method
    assert {t: method.scheduled_sparsity(t, 10) for t in range(11) if method.scheduled_sparsity(t, 10)} == {5: 0.5}
    method.config = MagnitudeConfig(schedule="final")
    assert all(method.scheduled_sparsity(t, 10) is None for t in range(11))


@pytest.mark.parametrize("schedule", ["cubic", "one_shot"])
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_schedule_reaches_the_target_at_prune_end_and_masks_never_regrow(method, schedule, tmp_path):
    config = method_config(method, 0.5, schedule=schedule, prune_start=0.2, prune_end=0.6, method_seed=1)
    trainer, history = train(tmp_path, config)
    model = trainer.pruned_model
    end = 6  # round(0.6 * 10): the optimizer step after which the target holds
    for earlier, later in zip(history.masks, history.masks[1:]):
        for kind in (HEADS, NEURONS):
            for a, b in zip(earlier[kind], later[kind]):
                assert not bool((b & ~a).any()), f"{method}: a removed {kind} unit came back"
    total = prunable_parameters(model, hf_prune.get_architecture(model))
    assert abs(history.sparsity[end - 1] - 0.5) * total <= largest_unit(model)
    assert history.sparsity[end - 1 :] == [history.sparsity[end - 1]] * (10 - end + 1)  # unchanged while recovering
    if schedule == "one_shot":
        assert set(history.sparsity[: end - 1]) == {0.0}
    else:
        assert 0 < history.sparsity[2] < 0.5 - largest_unit(model) / total
        assert history.sparsity[2] < history.sparsity[3] < history.sparsity[4]
    kept = {k: [m.clone() for m in get_pruning_state(model).masks(k)] for k in (HEADS, NEURONS)}
    gated = hf_prune.pruning_summary(model)
    trainer.finalize(measure_latency=False)
    result = hf_prune.pruning_summary(trainer.model)
    assert (gated["stage"], result["stage"]) == ("gated", "finalized")
    assert result["sparsity"] == pytest.approx(history.sparsity[-1])  # finalize removes exactly what the schedule did
    assert [len(v) for v in result["kept_neurons"].values()] == [int(m.sum()) for m in kept[NEURONS]]
    # one summary for both stages: the gated projection is what finalizing gave
    assert (result["kept_heads"], result["kept_neurons"]) == (gated["kept_heads"], gated["kept_neurons"])
    for key in ("parameters", "prunable_parameters"):  # FLOPs: the gated projection is approximate (within 2 %)
        assert result["after"][key] == gated["after"][key], key
    flops = "flops_per_sequence_128"
    assert result["after"][flops] == pytest.approx(gated["after"][flops], rel=0.02)


def test_recovery_trains_the_rest_while_removed_units_stay_at_zero(tmp_path):
    config = MagnitudeConfig(target_sparsity=0.5, schedule="one_shot", prune_end=0.5)
    trainer, history = train(tmp_path, config, family="llama")
    model = trainer.pruned_model
    state = get_pruning_state(model)
    seen = []

    def record(module, args):
        seen.append(args[0].detach())

    layer = state.layers[0]
    down = hf_prune.architectures.transformer_blocks(model, state.spec)[0].get_submodule(state.spec.mlp_out)
    handle = down.register_forward_pre_hook(record)  # after the gate's hook: sees the gated input
    model.train()
    batch = {k: torch.tensor(v) for k, v in dataset(FAMILY["llama"], 4)[:4].items()}
    model(**batch).loss.backward()
    handle.remove()
    removed = ~layer.neuron_gate.mask
    assert bool(removed.any()) and bool((seen[0][..., removed] == 0).all())
    assert bool((seen[0][..., ~removed] != 0).any())
    for name, p in model.named_parameters():  # no gradient reaches a removed neuron's up/gate rows
        if name.endswith(("mlp.up_proj.weight", "mlp.gate_proj.weight")) and ".0." in name:
            assert bool((p.grad[removed] == 0).all()), name
    changed = [n for n, w in history.weights[-1].items() if not torch.equal(w, history.weights[4][n])]
    assert len(changed) > 10  # the kept units go on training after prune_end


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_uniform_layers_and_multiples_hold_at_every_event(family, tmp_path):
    config = MagnitudeConfig(target_sparsity=0.5, uniform_layers=True, neuron_multiple=4, prune_start=0.0)
    trainer, history = train(tmp_path, config, family=family)
    for masks in history.masks:
        counts = {k: {int(m.sum()) for m in masks[k]} for k in (HEADS, NEURONS)}
        assert len(counts[HEADS]) == 1 and len(counts[NEURONS]) == 1  # the same in every layer
        assert all(c % 4 == 0 for c in counts[NEURONS])
    assert history.sparsity[-1] > 0.3
    if family == "bert":  # the BERT config cannot express a head count: all heads stay
        assert all(bool(m.all()) for m in history.masks[-1][HEADS])


def test_checkpoint_in_the_middle_of_the_schedule_holds_the_partial_masks(tmp_path):
    config = MagnitudeConfig(target_sparsity=0.5, prune_start=0.2, prune_end=0.6)
    trainer, history = train(tmp_path, config, save_steps=3, save_strategy="steps")
    saved = json.loads((tmp_path / "run" / "checkpoint-3" / "pruning_config.json").read_text())
    assert saved["result"]["sparsity"] == pytest.approx(history.sparsity[2])
    assert 0 < history.sparsity[2] < 0.45


@pytest.mark.parametrize("kind_budget", ["global", "proportional"])
def test_kind_budget_splits_the_target_between_heads_and_neurons(kind_budget):
    model = build(FAMILY["bert"])
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=0.5, kind_budget=kind_budget))
    state = get_pruning_state(model)
    costs = unit_costs_by_layer(model, state)
    # every head scores below every neuron: a global ranking spends the budget on heads first
    scores = {
        HEADS: [torch.rand(g.num_units) for g in state.gates(HEADS)],
        NEURONS: [1 + torch.rand(g.num_units) for g in state.gates(NEURONS)],
    }
    masks = select_to_sparsity(model, state, scores, 0.5)
    removed = {k: sum(c * int((~m).sum()) for c, m in zip(costs[k], masks[k])) for k in (HEADS, NEURONS)}
    total = {k: sum(c * m.numel() for c, m in zip(costs[k], masks[k])) for k in (HEADS, NEURONS)}
    assert sum(removed.values()) == pytest.approx(
        0.5 * prunable_parameters(model, state.spec), abs=largest_unit(model)
    )
    if kind_budget == "proportional":
        for kind in (HEADS, NEURONS):
            assert removed[kind] == pytest.approx(0.5 * total[kind], abs=max(costs[kind]))
    else:  # the cheap heads go first, beyond their share
        assert removed[HEADS] > 0.5 * total[HEADS] and removed[NEURONS] < 0.5 * total[NEURONS]


def test_kind_budget_rejects_unknown_values():
    with pytest.raises(ValueError, match="kind_budget"):
        MagnitudeConfig(kind_budget="per_layer")
