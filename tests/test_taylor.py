"""Taylor importance: gate gradients recorded without parameters are exact; one-shot pruning to a target."""

import pytest
import torch
from torch import nn

import hf_prune
from hf_prune.accounting import prunable_parameters
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state
from hf_prune.methods.search import search_max_prune
from hf_prune.methods.taylor import TaylorConfig
from hf_prune.selection import unit_costs_by_layer

from .tiny_models import FAMILY, build, counting_dataset, dataset, inputs, logits, trainer_for


def test_config_rejects_bad_start_and_criterion():
    with pytest.raises(ValueError, match=r"Invalid start="):
        TaylorConfig(start=1.0)
    with pytest.raises(ValueError, match=r"Invalid criterion='second_order'.*'fisher'"):
        TaylorConfig(criterion="second_order")


def _loss_with_scaled_unit(model, batch, projection: nn.Module, columns: slice, factor: float) -> float:
    saved = projection.weight.detach().clone()
    with torch.no_grad():
        projection.weight[:, columns] *= factor  # scaling a unit's input columns = scaling its gate
        loss = float(model(**batch).loss)
        projection.weight.copy_(saved)
    return loss


def test_gate_gradients_match_finite_differences():
    """The recorded `-dL/dgate / L` and the Fisher term `½ mean_i (dL_i/dgate)² / L` equal central finite differences,
    even though the backward ran on a rescaled loss (as under gradient accumulation); the per-example absolute sum
    bounds the signed one."""
    family = FAMILY["bert"]
    model = build(family).double()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    hf_prune.prepare_model_for_pruning(model, TaylorConfig())
    state = get_pruning_state(model)
    batch = {**inputs(family, batch=4), "labels": torch.tensor([0, 1, 1, 0])}
    model.train()
    output = model(**batch)
    (output.loss * 0.25).backward()  # what the Trainer does for 4 accumulation steps
    state.method.gradients.record(abs_weight=1.0, rel_weight=1.0)
    state.method.gradients.flush()
    loss = float(output.loss.detach())

    layer = model.bert.encoder.layer[0]
    eps = 1e-4
    for kind, gate, projection, width in (
        (HEADS, state.layers[0].head_gate, layer.attention.output.dense, 8),
        (NEURONS, state.layers[0].neuron_gate, layer.output.dense, 1),
    ):
        recorded = -gate.grad_rel_sum.double() * loss  # dL/dgate
        for unit in (0, 3):
            columns = slice(unit * width, (unit + 1) * width)
            numeric = (
                _loss_with_scaled_unit(model, batch, projection, columns, 1 + eps)
                - _loss_with_scaled_unit(model, batch, projection, columns, 1 - eps)
            ) / (2 * eps)
            assert float(recorded[unit]) == pytest.approx(numeric, rel=1e-3, abs=1e-7), (kind, unit)
            # the Fisher term: the mean over examples of (dL_i/dgate)², each L_i the loss of example i alone
            per_example = []
            for i in range(4):
                single = {k: v[i : i + 1] for k, v in batch.items()}
                up = _loss_with_scaled_unit(model, single, projection, columns, 1 + eps)
                down = _loss_with_scaled_unit(model, single, projection, columns, 1 - eps)
                per_example.append((up - down) / (2 * eps))
            fisher = sum(g * g for g in per_example) / 4
            assert float(gate.grad_curv_sum[unit]) * loss == pytest.approx(0.5 * fisher, rel=1e-3, abs=1e-9)
        assert bool((gate.grad_abs_sum.double() >= recorded.abs() - 1e-6).all())
        assert float(gate.grad_weight) == 1.0


@pytest.mark.parametrize("reentrant", [False, True], ids=["checkpointing", "checkpointing-reentrant"])
def test_activation_checkpointing_records_the_same_gradients(reentrant):
    """Checkpointed layers run their projections again in the backward pass: each gradient is still recorded once."""
    ids = torch.randint(3, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    captured = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build(FAMILY["llama"])
        hf_prune.prepare_model_for_pruning(model, TaylorConfig(target_sparsity=0.4, criterion="fisher")).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        model(input_ids=ids, labels=ids).loss.backward()
        state = get_pruning_state(model)
        captured.append([g.take_captured() for kind in (HEADS, NEURONS) for g in state.gates(kind)])
    for plain, checkpointed in zip(*captured):
        for a, b in zip(plain, checkpointed):
            torch.testing.assert_close(b, a)


def test_scores_need_training():
    model = build(FAMILY["bert"])
    hf_prune.prepare_model_for_pruning(model, TaylorConfig())
    with pytest.raises(ValueError, match="no gradients"):
        get_pruning_state(model).method.scores()


@pytest.mark.parametrize(
    "family_name, normalize, criterion",
    [("bert", False, "first_order"), ("qwen2", True, "first_order"), ("llama", False, "fisher")],
)
def test_taylor_end_to_end(family_name, normalize, criterion, tmp_path):
    family = FAMILY[family_name]
    model = build(family)
    trainer = trainer_for(
        model,
        TaylorConfig(
            target_sparsity=0.4,
            normalize_layers=normalize,
            schedule="final",
            time_weighting="none",
            criterion=criterion,
        ),
        tmp_path,
        steps=4,
        train_dataset=dataset(family, 48),
        args={"gradient_accumulation_steps": 2},
    )
    trainer.train()
    method = get_pruning_state(model).method
    assert method.metrics()["taylor_batches"] == 8  # every micro-batch
    importance = method.importance()
    assert all(bool((v > 0).all()) for kind in importance for v in importance[kind])
    for kind, gates in ((HEADS, method.state.gates(HEADS)), (NEURONS, method.state.gates(NEURONS))):
        for gate, value in zip(gates, importance[kind]):  # the statistic the criterion names, per micro-batch
            total, weight = (
                (gate.grad_curv_sum, gate.grad_rel_weight)
                if criterion == "fisher"
                else (gate.grad_abs_sum, gate.grad_weight)
            )
            assert float(weight) == 8
            expected = total.float() / 8
            torch.testing.assert_close(value, expected / expected.mean() if normalize else expected)
    spec = hf_prune.get_architecture(model)
    total = prunable_parameters(model, spec)
    largest_unit = max(max(costs) for costs in unit_costs_by_layer(model, get_pruning_state(model)).values())
    hf_prune.finalize_model(model)
    assert abs(total - prunable_parameters(model, spec) - 0.4 * total) <= largest_unit
    batch = inputs(family)
    model.save_pretrained(tmp_path / "pruned")
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(logits(reloaded, batch), logits(model.eval(), batch), atol=1e-5, rtol=0)


def test_metric_search_works_for_taylor_too(tmp_path):
    data = counting_dataset(96)
    model = build(FAMILY["llama"])
    trainer = trainer_for(
        model,
        TaylorConfig(schedule="final"),
        tmp_path,
        steps=16,
        train_dataset=data.select(range(64)),
        eval_dataset=data.select(range(64, 96)),
        args={"learning_rate": 1e-2},
    )
    trainer.train()
    result = search_max_prune(trainer.mask_evaluator(), max_metric_drop=0.05, step=0.1)
    assert result.trials[0].sparsity == 0.0 and result.masks[HEADS][0] is not None
    within = [t.sparsity for t in result.trials if t.within_tolerance]
    assert result.sparsity == max(within)
    assert all(gate.mask.all() for kind in (HEADS, NEURONS) for gate in get_pruning_state(model).gates(kind))
