"""PruningTrainer end to end on tiny models of every family: a few CPU steps, finalize, reload."""

import json

import pytest
import torch

import hf_prune
from hf_prune import MagnitudeConfig, PruningArguments, PruningTrainer, RandomConfig

from .tiny_models import FAMILIES, FAMILY_IDS, arguments, build, dataset, inputs, logits, method_config


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_train_finalize_reload(family, tmp_path):
    model = build(family)
    trainer = PruningTrainer(
        model=model,
        args=arguments(tmp_path),
        pruning_config=MagnitudeConfig(target_sparsity=0.5),
        train_dataset=dataset(family),
    )
    trainer.train()

    logged = [entry for entry in trainer.state.log_history if "pruning/sparsity" in entry]
    assert logged and {"pruning/heads_kept", "pruning/neurons_kept", "pruning/parameter_ratio"} <= logged[0].keys()
    checkpoint = json.loads((tmp_path / "run" / "checkpoint-2" / "pruning_config.json").read_text())
    assert checkpoint["method"] == "magnitude" and checkpoint["target_sparsity"] == 0.5
    assert "kept_heads" in checkpoint["result"] and "after" in checkpoint["result"]

    batch = inputs(family)
    pruned = trainer.finalize().eval()
    assert trainer.model is pruned and not hf_prune.mapping.is_prepared(pruned)
    expected = logits(pruned, batch)
    pruned.save_pretrained(tmp_path / "pruned")
    saved = json.loads((tmp_path / "pruned" / "pruning_config.json").read_text())
    spec = hf_prune.get_architecture(pruned)
    head_cost, neuron_cost = hf_prune.accounting.unit_costs(
        pruned.base_model.get_submodule(spec.layers)[0],
        spec,
        spec.head_dim(pruned.config),
        family.heads // family.kv_heads,
    )
    total = saved["result"]["before"]["prunable_parameters"]
    removed = total - saved["result"]["after"]["prunable_parameters"]
    assert abs(removed - 0.5 * total) <= max(head_cost, neuron_cost)  # within one unit of the target
    assert saved["result"]["after"]["flops_per_sequence_128"] < saved["result"]["before"]["flops_per_sequence_128"]
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path / "pruned")
    torch.testing.assert_close(logits(reloaded, batch), expected, atol=1e-5, rtol=0)


def test_trainer_save_model_after_finalize_writes_a_reloadable_folder(tmp_path):
    family = FAMILIES[0]
    trainer = PruningTrainer(
        model=build(family),
        args=arguments(tmp_path, max_steps=2),
        pruning_config=RandomConfig(target_sparsity=0.3, method_seed=1),
        train_dataset=dataset(family),
    )
    trainer.train()
    pruned = trainer.finalize().eval()
    trainer.save_model(str(tmp_path / "final"))
    batch = inputs(family)
    reloaded = hf_prune.AutoPrunedModel.from_pretrained(tmp_path / "final")
    torch.testing.assert_close(logits(reloaded, batch), logits(pruned, batch), atol=1e-5, rtol=0)


def test_gate_parameter_group_and_plain_training_arguments(tmp_path):
    """Plain TrainingArguments are accepted; gate parameters get their own optimizer group."""
    from transformers import TrainingArguments

    family = FAMILIES[0]
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, RandomConfig())
    for gate in hf_prune.mapping.get_pruning_state(model).gates("heads"):  # a method whose gates are trainable
        gate.register_parameter("scale", torch.nn.Parameter(torch.ones(gate.num_units)))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to=[], weight_decay=0.1)
    trainer = PruningTrainer(model=model, args=args, train_dataset=dataset(family))
    assert isinstance(trainer.args, PruningArguments)
    optimizer = trainer.create_optimizer()
    gate_groups = [g for g in optimizer.param_groups if g.get("hf_prune_gates")]
    assert len(gate_groups) == 1 and gate_groups[0]["weight_decay"] == 0.0
    assert len(gate_groups[0]["params"]) == 2  # one trainable tensor per head gate, two layers
    assert all(p.requires_grad for group in optimizer.param_groups for p in group["params"])


def test_trainer_requires_a_config_or_a_prepared_model(tmp_path):
    with pytest.raises(ValueError, match="pruning_config"):
        PruningTrainer(model=build(FAMILIES[0]), args=arguments(tmp_path))


@pytest.mark.parametrize("method", hf_prune.available_methods())
def test_bf16_autocast_on_cpu_for_every_method(method, tmp_path):
    family = FAMILIES[0]
    config = method_config(method, 0.3)
    trainer = PruningTrainer(
        model=build(family),
        args=arguments(tmp_path, max_steps=3, bf16=True, save_strategy="no"),
        pruning_config=config,
        train_dataset=dataset(family),
    )
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)
    gates = hf_prune.mapping.gate_parameters(trainer.model)
    assert all(p.dtype == torch.float32 for p in gates)
    pruned = trainer.finalize(measure_latency=False).eval()
    assert torch.isfinite(logits(pruned, inputs(family))).all()


def test_finalize_during_training_is_refused(tmp_path):
    from transformers import TrainerCallback

    family = FAMILIES[0]
    errors = []

    class FinalizeTooEarly(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            try:
                trainer.finalize()
            except ValueError as error:
                errors.append(str(error))

    trainer = PruningTrainer(
        model=build(family),
        args=arguments(tmp_path, max_steps=1, save_strategy="no"),
        pruning_config=MagnitudeConfig(),
        train_dataset=dataset(family),
        callbacks=[FinalizeTooEarly()],
    )
    trainer.train()
    assert errors and "while training is running" in errors[0]
    assert hf_prune.mapping.is_prepared(trainer.model)  # nothing was changed


def test_nan_gate_state_is_refused_at_finalize():
    from hf_prune.gates import UnitGate

    class BrokenGate(UnitGate):
        def expected(self):
            return torch.full((self.num_units,), float("nan"))

    family = FAMILIES[0]
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=0.0))
    hf_prune.mapping.get_pruning_state(model).gates("neurons")[0].__class__ = BrokenGate
    with pytest.raises(ValueError, match="NaN/inf"):
        hf_prune.finalize_model(model)


def test_masks_applied_evaluates_another_sparsity_and_restores():
    from hf_prune import prune_structures
    from hf_prune.constants import HEADS, NEURONS
    from hf_prune.mapping import get_pruning_state, masks_applied

    family = next(f for f in FAMILIES if f.name == "bert")
    model = build(family).eval()
    batch = inputs(family)
    reference = prune_structures(build(family).eval(), heads={0: [1, 2]}, neurons={1: [0, 5, 7]})
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig())
    state = get_pruning_state(model)
    masks = {kind: [None if m is None else torch.ones_like(m) for m in state.masks(kind)] for kind in (HEADS, NEURONS)}
    masks[HEADS][0][[1, 2]] = False
    masks[NEURONS][1][[0, 5, 7]] = False
    with masks_applied(state, masks):
        assert int((~state.masks(HEADS)[0]).sum()) == 2
        torch.testing.assert_close(logits(model, batch), logits(reference, batch), rtol=0, atol=1e-5)
    assert all(bool(m.all()) for kind in (HEADS, NEURONS) for m in state.masks(kind) if m is not None)
