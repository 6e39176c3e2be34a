"""Logit distillation from a dense teacher (`PruningArguments.distillation_weight`, `PruningTrainer(teacher_model=)`):
the KL against a per-position brute force, the mixed loss against a hand computation, the logged terms under
gradient accumulation, the gradient statistics of the mixed loss, its effect, and the errors."""

from __future__ import annotations

import copy
import math

import datasets
import pytest
import torch

from hf_prune import BingoConfig, BmrsConfig, MagnitudeConfig, PruningArguments, PruningTrainer, TaylorConfig
from hf_prune.distillation import distillation_terms
from hf_prune.mapping import get_pruning_state

from .tiny_models import FAMILY, arguments, build, dataset, distilling_trainer, trained_with_teacher


def _brute_force_kl(student, teacher, labels, temperature, shift):
    """T² Σ_positions Σ_v p_teacher(v) (log p_teacher(v) - log p_student(v)), position by position."""
    total, count = 0.0, 0
    if student.dim() == 2:
        positions = [(i,) for i in range(student.shape[0])]
    else:
        positions = []
        for b in range(student.shape[0]):
            for t in range(student.shape[1] - (1 if shift else 0)):
                label = labels[b, t + 1] if shift else labels[b, t]
                if label != -100:
                    positions.append((b, t))
    for pos in positions:
        p = torch.softmax(teacher[pos].double() / temperature, -1)
        q = torch.softmax(student[pos].double() / temperature, -1)
        total += float((p * (p.log() - q.log())).sum())
        count += 1
    return total * temperature**2, count


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_token_kl_matches_brute_force(shift, temperature):
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 6, 11, generator=g), torch.randn(3, 6, 11, generator=g) * 2
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[0, :3] = -100  # prompt tokens
    labels[2, -2:] = -100  # padding
    total, count = distillation_terms(student, teacher, labels, temperature, shift)
    expected, expected_count = _brute_force_kl(student, teacher, labels, temperature, shift)
    assert count == expected_count == (11 if shift else 13)
    assert float(total) == pytest.approx(expected, rel=1e-5)


def test_class_kl_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    total, count = distillation_terms(student, teacher, torch.zeros(5, dtype=torch.long), 2.0, shift_labels=False)
    expected, _ = _brute_force_kl(student, teacher, None, 2.0, False)
    assert count == 5 and float(total) == pytest.approx(expected, rel=1e-5)
    same, _ = distillation_terms(student, student.clone(), None, 1.0, shift_labels=False)
    assert float(same) == pytest.approx(0.0, abs=1e-6)


def test_loss_mixes_task_loss_and_kl(tmp_path):
    trainer = distilling_trainer(tmp_path, distillation_weight=0.3, distillation_temperature=2.0)  # llama: no dropout
    batch = {k: torch.tensor(v) for k, v in dataset(FAMILY["llama"], 4)[:4].items()}
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        out = model(**batch)
        teacher = trainer.teacher_model(input_ids=batch["input_ids"]).logits
    kl, count = _brute_force_kl(out.logits, teacher, batch["labels"], 2.0, shift=True)
    assert count == 4 * 7
    assert float(loss.detach()) == pytest.approx(0.7 * float(out.loss) + 0.3 * kl / count, rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_logged_terms_add_up_to_the_loss(tmp_path, accumulation, family):
    """Under the token normalisation of a causal LM (`num_items_in_batch`) and the mean loss of a classifier, with
    and without accumulation, the logged task loss and KL are means per optimizer step whose mix is the logged loss."""
    trainer = distilling_trainer(
        tmp_path,
        family,
        distillation_weight=0.4,
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "distillation/kl" in h and "loss" in h]
    assert len(logs) == 4
    for h in logs:
        assert h["distillation/kl"] > 0
        assert 0.6 * h["pruning/task_loss"] + 0.4 * h["distillation/kl"] == pytest.approx(h["loss"], rel=1e-3)


def test_the_methods_loss_term_stays_outside_the_mix(tmp_path):
    """With BMRS the KL of the gates is added to the mixed loss, not scaled by (1 - α)."""
    family = FAMILY["llama"]
    trainer = PruningTrainer(
        model=build(family),
        args=arguments(tmp_path, max_steps=4, save_strategy="no", logging_steps=1, distillation_weight=0.4),
        pruning_config=BmrsConfig(),
        train_dataset=dataset(family, 32),
        teacher_model=build(family, seed=1),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "distillation/kl" in h and "loss" in h]
    assert len(logs) == 4
    for h in logs:
        mixed = 0.6 * h["pruning/task_loss"] + 0.4 * h["distillation/kl"] + h["pruning/loss_term"]
        assert mixed == pytest.approx(h["loss"], rel=1e-3)


@pytest.mark.parametrize("method", ["taylor", "bingo"])
@pytest.mark.parametrize("weight", [0.5, 1.0], ids=["mixed", "distillation-alone"])
def test_gradient_statistics_are_taken_for_the_loss_trained(tmp_path, weight, method):
    """With a teacher, the gate-gradient statistics that Taylor and BINGO read (`-dL/dgate / L`) are for the loss
    trained, (1 - α) task loss + α KL, even when the backward ran on a rescaled loss: scaling a unit's gate is scaling
    its input columns of the projection, so `dL/dgate = Σ W ∘ dL/dW` over those columns, from the weight gradients of
    the same backward. With distillation alone (α = 1) the task loss gets no gradient, and the Fisher statistics are
    still recorded."""
    family = FAMILY["bert"]
    model = build(family, seed=0).double()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    teacher = build(family, seed=1).double()
    with torch.no_grad():
        teacher.classifier.weight.mul_(300)  # a confident teacher: the KL weighs as much as the task loss
    trainer = PruningTrainer(
        model=model,
        args=arguments(tmp_path, max_steps=1, save_strategy="no", distillation_weight=weight),
        pruning_config=TaylorConfig(target_sparsity=0.3, criterion="fisher")
        if method == "taylor"
        else BingoConfig(target_sparsity=0.3),
        train_dataset=dataset(family, 4),
        teacher_model=teacher,
    )
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    state = get_pruning_state(model.train())
    batch = {k: torch.tensor(v) for k, v in dataset(family, 4)[:4].items()}
    loss = trainer.compute_loss(model, dict(batch))
    (loss * 0.25).backward()  # as under 4 accumulation steps
    state.method.gradients.record(abs_weight=1.0, rel_weight=1.0)
    state.method.gradients.flush()

    layer = model.bert.encoder.layer[0]
    for gate, projection, width in (
        (state.layers[0].head_gate, layer.attention.output.dense, 8),
        (state.layers[0].neuron_gate, layer.output.dense, 1),
    ):
        assert float(gate.grad_rel_weight) == 1.0
        recorded = -gate.grad_rel_sum.double() * float(loss.detach())  # dL/dgate
        by_unit = (projection.weight * projection.weight.grad / 0.25).detach().sum(0).reshape(-1, width).sum(1)
        torch.testing.assert_close(recorded, by_unit, rtol=1e-5, atol=1e-9)
        assert bool((gate.grad_curv_sum > 0).all())


def test_distillation_pulls_the_model_to_the_teacher(tmp_path):
    """Trained on the teacher's KL alone, the model ends much closer to the teacher than when trained on the labels."""
    family = FAMILY["bert"]
    teacher = build(family, seed=1)
    with torch.no_grad():
        teacher.classifier.weight.mul_(300)  # a confident teacher, far from the random student
    train = dataset(family, 64)
    batch = {k: torch.tensor(v) for k, v in train[:64].items()}

    def kl_to_teacher(model):
        model.eval()
        with torch.no_grad():
            total, count = distillation_terms(model(**batch).logits, teacher(**batch).logits, None, 1.0, False)
        return float(total) / count

    def trained(weight):
        return trained_with_teacher(tmp_path, family, train, teacher, distillation_weight=weight)

    distilled, control = kl_to_teacher(trained(1.0)), kl_to_teacher(trained(0.0))
    assert distilled < 0.5 * control
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen


def test_bad_distillation_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="teacher_model="):
        PruningTrainer(
            model=build(FAMILY["llama"]),
            args=arguments(tmp_path, distillation_weight=0.5),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
        )
    with pytest.raises(ValueError, match="distillation_weight is 0"):
        PruningTrainer(
            model=build(FAMILY["llama"]),
            args=arguments(tmp_path),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
            teacher_model=build(FAMILY["llama"]),
        )
    with pytest.raises(ValueError, match="distillation_weight"):
        PruningArguments(output_dir=str(tmp_path), distillation_weight=1.5)
    with pytest.raises(ValueError, match="distillation_temperature"):
        PruningArguments(output_dir=str(tmp_path), distillation_temperature=0)
    # a teacher with another vocabulary
    other = copy.deepcopy(build(FAMILY["llama"]))
    other.resize_token_embeddings(120)
    with pytest.raises(ValueError, match="tokenizer"):
        PruningTrainer(
            model=build(FAMILY["llama"]),
            args=arguments(tmp_path, distillation_weight=0.5),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
            teacher_model=other,
        )
    # a regression head has no distribution to distil
    regression = build(FAMILY["bert"])
    regression.config.num_labels, regression.config.problem_type = 1, "regression"
    with pytest.raises(ValueError, match="regression"):
        PruningTrainer(
            model=regression,
            args=arguments(tmp_path, distillation_weight=0.5),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
            teacher_model=build(FAMILY["bert"]),
            train_dataset=datasets.Dataset.from_dict({"input_ids": [[3, 4]], "labels": [math.pi]}),
        )
