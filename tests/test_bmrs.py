"""BMRS method: pruning on a synthetic task, the KL under gradient accumulation, finalize, mixed precision."""

import datasets
import pytest
import torch
from transformers import TrainerCallback

import hf_prune
from hf_prune import BmrsConfig, PruningArguments, PruningTrainer
from hf_prune.mapping import get_pruning_state

from .tiny_models import FAMILIES, build, inputs, logits


def token_search_task(n: int, seed: int) -> datasets.Dataset:
    """Label: does token 7 occur anywhere after position 0? Needs attention, easy for a tiny model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 99, (n, 8), generator=g)
    ids[:, 0] = 2
    present = torch.rand(n, generator=g) < 0.5
    position = torch.randint(1, 8, (n,), generator=g)
    ids[present, position[present]] = 7
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": present.long().tolist()})


def train(tmp_path, config, train_size=512, **overrides):
    args = dict(
        output_dir=str(tmp_path),
        num_train_epochs=8,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        gate_learning_rate=0.1,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = PruningTrainer(
        model=build(FAMILIES[0]),
        args=PruningArguments(**{**args, **overrides}),
        pruning_config=config,
        train_dataset=token_search_task(train_size, 0),
        eval_dataset=token_search_task(256, 1),
    )
    trainer.train()
    return trainer


def accuracy(trainer) -> float:
    prediction = trainer.predict(trainer.eval_dataset)
    return float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())


def test_bmrs_prunes_a_large_share_and_keeps_accuracy(tmp_path):
    shares = {}
    for name, config in {"bmrs_n": BmrsConfig(), "bmrs_u4": BmrsConfig(variant="uniform", p1=4)}.items():
        trainer = train(tmp_path / name, config)
        gated_accuracy = accuracy(trainer)
        trainer.finalize(measure_latency=False, evaluate=False)
        pruned_accuracy = accuracy(trainer)
        result = hf_prune.pruning_summary(trainer.model)
        shares[name] = result["sparsity"]
        assert gated_accuracy >= 0.95 and pruned_accuracy >= gated_accuracy - 0.02, (
            name,
            gated_accuracy,
            pruned_accuracy,
        )
    assert shares["bmrs_n"] >= 0.4, shares
    assert shares["bmrs_u4"] >= shares["bmrs_n"], shares


class GateGradients(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = torch.cat(
                [p.grad.detach().clone().flatten() for p in hf_prune.mapping.gate_parameters(model)]
            )


def kl_gradient(tmp_path, batch, accumulation, weight):
    family = FAMILIES[0]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (8, 8), generator=g)
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] > 50).long().tolist()})
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, BmrsConfig())
    for gate in get_pruning_state(model).gates("heads"):  # a non-trivial posterior, so the KL gradient is not tiny
        gate.log_sigma.data.fill_(-1.0)
    callback = GateGradients()
    args = PruningArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        pruning_loss_weight=weight,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_drop_last=True,
        max_grad_norm=0.0,  # no clipping: it would rescale the task and KL parts differently
    )
    trainer = PruningTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    torch.manual_seed(0)
    trainer.train()
    return callback.grads


def test_kl_counts_once_per_optimizer_step_under_accumulation(tmp_path):
    """The KL's share of the gate gradient is the same with accumulation 1 x 8 and 2 x 4."""
    contributions = []
    for batch, accumulation in ((8, 1), (4, 2)):
        with_kl = kl_gradient(tmp_path / f"{batch}a", batch, accumulation, weight=1.0)
        without = kl_gradient(tmp_path / f"{batch}b", batch, accumulation, weight=0.0)
        contributions.append(with_kl - without)
    assert contributions[0].abs().max() > 1e-6
    torch.testing.assert_close(contributions[0], contributions[1], rtol=1e-4, atol=1e-7)


def test_finalized_model_equals_gated_model_in_eval(tmp_path):
    family = FAMILIES[0]
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, BmrsConfig())
    state = get_pruning_state(model)
    torch.manual_seed(0)
    for gate in state.gates("heads") + state.gates("neurons"):  # a trained-looking posterior, some units diffuse
        gate.mu.data.uniform_(-3, 0.5)
        gate.log_sigma.data.uniform_(-3, 3.5)
    batch = inputs(family)
    model.eval()
    state.method.decide(final=True)
    assert not all(bool(g.mask.all()) for g in state.gates("neurons")), "nothing was pruned"
    gated = logits(model, batch)
    hf_prune.finalize_model(model)
    torch.testing.assert_close(logits(model, batch), gated, atol=1e-5, rtol=0)


def test_masked_units_stay_zero_even_with_nan_state():
    from hf_prune.methods.bmrs import BmrsGate

    gate = BmrsGate(4, BmrsConfig())
    gate.mask[1] = False
    gate.mu.data[1] = float("nan")
    gate.eval()
    values = gate(2)
    assert values[1] == 0 and torch.isfinite(values).all()
    gate.train()
    assert torch.isfinite(gate(3)).all() and (gate(3)[:, 1] == 0).all()


def test_gate_math_in_float32_under_bf16_autocast():
    family = FAMILIES[5]  # llama
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, BmrsConfig())
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs(family), labels=inputs(family)["input_ids"])
    out.loss.backward()
    gate = get_pruning_state(model).gates("heads")[0]
    assert gate.mu.dtype == torch.float32 and gate.mu.grad is not None and torch.isfinite(gate.mu.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "spike"}, "variant"),
        ({"kl_weighting": "sum"}, "kl_weighting"),
        ({"p1": 30}, "p1"),
        ({"noise": "batch"}, "noise"),
        ({"pruning_interval": 0}, "pruning_interval"),
        ({"upper": 1.0}, "upper"),
        ({"pretrained_evidence": -1}, "pretrained_evidence"),
    ],
)
def test_invalid_bmrs_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BmrsConfig(**kwargs)


def test_default_gate_learning_rate_follows_the_run_length(tmp_path):
    family = FAMILIES[0]
    for max_steps, expected in ((100, 0.1), (1000, 0.02), (100000, 0.01)):
        args = PruningArguments(output_dir=str(tmp_path), max_steps=max_steps, use_cpu=True, report_to=[])
        trainer = PruningTrainer(
            model=build(family), args=args, pruning_config=BmrsConfig(), train_dataset=token_search_task(8, 0)
        )
        trainer.state.max_steps = max_steps
        groups = [g for g in trainer.create_optimizer().param_groups if g.get("hf_prune_gates")]
        assert groups[0]["lr"] == pytest.approx(expected)


def test_mean_kl_weight_of_a_surviving_gate_does_not_grow_as_units_go():
    """`kl_weighting="mean"` divides each layer's KL by its full unit count: masking other units (a whole layer
    included) leaves the gradient of a surviving gate unchanged."""
    model = build(FAMILIES[0])
    hf_prune.prepare_model_for_pruning(model, BmrsConfig(kl_weighting="mean"))
    state = get_pruning_state(model)
    heads, neurons = state.gates("heads"), state.gates("neurons")
    for gate in heads + neurons:
        gate.log_sigma.data.fill_(-1.0)

    def gradient():
        for gate in heads + neurons:
            gate.mu.grad = None
        state.method.loss(None).backward()
        return neurons[0].mu.grad[:4].clone(), heads[1].mu.grad[:2].clone()

    before = gradient()
    assert before[0].abs().min() > 0
    neurons[0].mask[4:] = False  # most of the layer goes
    heads[1].mask[2:] = False
    heads[0].mask[:] = False  # and a whole layer
    after = gradient()
    for b, a in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)


def test_gate_parameters_stay_float32_when_the_model_is_cast_to_bf16():
    family = FAMILIES[5]  # llama
    model = build(family)
    hf_prune.prepare_model_for_pruning(model, BmrsConfig())
    model.to(torch.bfloat16)
    state = get_pruning_state(model)
    gates = state.gates("heads") + state.gates("neurons")
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert all(g.mu.dtype == g.log_sigma.dtype == torch.float32 for g in gates)
    assert all(g.mask.dtype == torch.bool for g in gates)
    model.train()
    batch = inputs(family)
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert out.logits.dtype == torch.bfloat16
    assert all(g.mu.grad is not None and g.mu.grad.dtype == torch.float32 for g in gates)
    assert all(torch.isfinite(g.mu.grad).all() and torch.isfinite(g.log_sigma.grad).all() for g in gates)
    assert any(bool(g.mu.grad.abs().sum() > 0) for g in gates)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_task_loss_is_logged_beside_the_kl_term(tmp_path, accumulation):
    trainer = train(
        tmp_path,
        BmrsConfig(pretrained_evidence=0),  # the plain ELBO: the KL weighs most
        train_size=64,
        num_train_epochs=4,
        per_device_train_batch_size=16 // accumulation,
        gradient_accumulation_steps=accumulation,
        logging_steps=2,
    )
    logs = [h for h in trainer.state.log_history if "loss" in h and "pruning/task_loss" in h]
    assert len(logs) >= 4
    for h in logs:
        assert h["pruning/task_loss"] < 0.1 * h["loss"]  # the KL of 104 gates / 64 examples dominates `loss`
        # both are means per optimizer step over the same steps: they add up to the logged loss
        assert h["pruning/task_loss"] + h["pruning/loss_term"] == pytest.approx(h["loss"], rel=1e-3)


@pytest.mark.parametrize("evidence", [None, 0, 50])
def test_elbo_counts_the_pretrained_model_as_examples(evidence):
    """`kl_weighting="elbo"` divides the KL by N + `pretrained_evidence` (default: the number of gated units G), so
    the weight per gate never exceeds 1/G however few examples there are, and tends to the plain ELBO's 1/N for
    N >> G. Masked units leave the divisor unchanged."""
    model = build(FAMILIES[0])
    hf_prune.prepare_model_for_pruning(model, BmrsConfig(pretrained_evidence=evidence))
    state = get_pruning_state(model)
    gates = state.gates("heads") + state.gates("neurons")
    total_units = sum(g.num_units for g in gates)
    assert total_units == 2 * (4 + 48)
    offset = total_units if evidence is None else evidence
    for gate in gates:
        gate.log_sigma.data.uniform_(-3, 2)
    kl = sum(g.kl().sum() for g in gates)
    for n in (1, 64, 10**6):
        torch.testing.assert_close(state.method.loss(n), kl / (n + offset))
    if evidence is None:
        assert float(state.method.loss(1)) <= float(kl) / total_units  # the per-gate weight is capped at 1/G
        assert float(state.method.loss(10**6)) == pytest.approx(float(kl) / 10**6, rel=2 * total_units / 10**6)
    gates[0].mask[:2] = False
    masked_kl = kl - gates[0].kl()[:2].sum()
    torch.testing.assert_close(state.method.loss(64), masked_kl / (64 + offset))
