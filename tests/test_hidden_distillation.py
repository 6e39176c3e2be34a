"""Hidden-state distillation (`PruningArguments.distillation_hidden_weight`): the error against a per-position brute
force, the loss against a hand computation, the logged terms under gradient accumulation, its effect, and the
errors."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from hf_prune import MagnitudeConfig, PruningArguments, PruningTrainer
from hf_prune import trainer as trainer_module
from hf_prune.distillation import distillation_terms, hidden_state_terms

from .tiny_models import FAMILY, arguments, build, dataset, distilling_trainer, trained_with_teacher


def _brute_force_error(student, teacher, positions):
    """Σ over `positions` of the mean over blocks (states 1..) of ‖s − t‖² / ‖t‖², position by position."""
    total = 0.0
    for pos in positions:
        per_block = [
            float(((s[pos].double() - t[pos].double()) ** 2).sum() / (t[pos].double() ** 2).sum())
            for s, t in zip(student[1:], teacher[1:])
        ]
        total += sum(per_block) / len(per_block)
    return total


def _states(seed, batch=3, length=6, width=5, blocks=3):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, width, generator=g) * (i + 1) for i in range(blocks + 1))


@pytest.mark.parametrize("shift", [True, False])
def test_token_error_matches_brute_force(shift):
    student, teacher = _states(0), _states(1)
    labels = torch.randint(0, 9, (3, 6), generator=torch.Generator().manual_seed(2))
    labels[0, :3] = -100  # prompt tokens
    labels[2, -2:] = -100  # padding
    total, count = hidden_state_terms(student, teacher, labels, None, token_level=True, shift_labels=shift)
    positions = [
        (b, t)
        for b in range(3)
        for t in range(6 - (1 if shift else 0))
        if (labels[b, t + 1] if shift else labels[b, t]) != -100
    ]
    # the same positions, and so the same count, as the logit KL
    _, kl_count = distillation_terms(torch.randn(3, 6, 4), torch.randn(3, 6, 4), labels, 1.0, shift)
    assert count == len(positions) == kl_count == (11 if shift else 13)
    assert float(total) == pytest.approx(_brute_force_error(student, teacher, positions), rel=1e-5)
    same, _ = hidden_state_terms(student, student, labels, None, token_level=True, shift_labels=shift)
    assert float(same) == 0.0


def test_sequence_error_is_one_term_per_example_over_its_tokens():
    student, teacher = _states(3), _states(4)
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, 4:] = 0
    total, count = hidden_state_terms(student, teacher, torch.zeros(3), mask, token_level=False, shift_labels=False)
    expected = sum(
        _brute_force_error(student, teacher, [(b, t) for t in range(6) if mask[b, t]]) / int(mask[b].sum())
        for b in range(3)
    )
    assert count == 3 and float(total) == pytest.approx(expected, rel=1e-5)


def test_the_error_is_blind_to_the_scale_of_the_stream():
    """A relative error: scaling both models' states (the residual stream's few huge channels) leaves it as it is."""
    student, teacher = _states(5), _states(6)
    total, _ = hidden_state_terms(student, teacher, None, None, token_level=True, shift_labels=False)
    scaled, _ = hidden_state_terms(
        tuple(s * 1e3 for s in student), tuple(t * 1e3 for t in teacher), None, None, True, False
    )
    assert float(scaled) == pytest.approx(float(total), rel=1e-4)


def test_loss_adds_the_hidden_term(tmp_path):
    # llama: no dropout
    trainer = distilling_trainer(tmp_path, distillation_weight=0.3, distillation_hidden_weight=2.0)
    batch = {k: torch.tensor(v) for k, v in dataset(FAMILY["llama"], 4)[:4].items()}
    model = trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train() otherwise
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        teacher = trainer.teacher_model(input_ids=batch["input_ids"], output_hidden_states=True)
    kl, count = distillation_terms(out.logits, teacher.logits, batch["labels"], 1.0, shift_labels=True)
    positions = [(b, t) for b in range(4) for t in range(7)]
    error = _brute_force_error(out.hidden_states, teacher.hidden_states, positions)
    assert count == len(positions) == 4 * 7
    expected = 0.7 * float(out.loss) + 0.3 * float(kl) / count + 2.0 * error / count
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_logged_terms_add_up_to_the_loss(tmp_path, accumulation, family):
    """Under a causal LM's token normalisation and a classifier's mean loss, with and without accumulation, the
    logged task loss, KL and hidden-state error mix into the logged loss."""
    trainer = distilling_trainer(
        tmp_path,
        family,
        distillation_weight=0.4,
        distillation_hidden_weight=0.5,
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "distillation/hidden" in h and "loss" in h]
    assert len(logs) == 4
    for h in logs:
        assert h["distillation/hidden"] > 0
        mixed = 0.6 * h["pruning/task_loss"] + 0.4 * h["distillation/kl"] + 0.5 * h["distillation/hidden"]
        assert mixed == pytest.approx(h["loss"], rel=1e-3)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hidden_term_alone_skips_the_logit_kl(tmp_path, monkeypatch, accumulation):
    """With α 0 the full-vocabulary KL is neither computed nor logged, and the loss is the task loss plus β·E."""

    def not_called(*args, **kwargs):
        raise AssertionError("the logit KL was computed with distillation_weight=0")

    monkeypatch.setattr(trainer_module, "distillation_terms", not_called)
    trainer = distilling_trainer(
        tmp_path,
        distillation_hidden_weight=0.5,
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    for h in logs:
        assert "distillation/kl" not in h and h["distillation/hidden"] > 0
        assert h["pruning/task_loss"] + 0.5 * h["distillation/hidden"] == pytest.approx(h["loss"], rel=1e-3)


def test_hidden_distillation_alone_brings_the_blocks_to_the_teacher(tmp_path):
    """With α 0 the logits are not distilled, yet the blocks' outputs move towards the teacher's: much closer than
    the same run without the term."""
    family = FAMILY["llama"]
    teacher = build(family, seed=1)
    train = dataset(family, 64)
    batch = {k: torch.tensor(v) for k, v in train[:64].items()}

    def error_to_teacher(model):
        model.eval()
        with torch.no_grad():
            mine = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
            theirs = teacher(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
            total, count = hidden_state_terms(mine, theirs, None, None, token_level=True, shift_labels=False)
        return float(total) / count

    def trained(hidden):
        return trained_with_teacher(tmp_path, family, train, teacher, distillation_hidden_weight=hidden)

    distilled, control = error_to_teacher(trained(1.0)), error_to_teacher(trained(0.0))
    assert distilled < 0.5 * control
    assert not any(p.requires_grad for p in teacher.parameters())


def test_bad_hidden_distillation_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="distillation_hidden_weight"):
        PruningArguments(output_dir=str(tmp_path), distillation_hidden_weight=-1.0)
    with pytest.raises(ValueError, match="teacher_model="):
        PruningTrainer(
            model=build(FAMILY["llama"]),
            args=arguments(tmp_path, distillation_hidden_weight=1.0),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
        )
    # a teacher of another depth has no block to match each of the model's
    config = FAMILY["llama"].make_config()
    config.num_hidden_layers = 3
    deeper = tf.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="num_hidden_layers=3"):
        PruningTrainer(
            model=build(FAMILY["llama"]),
            args=arguments(tmp_path, distillation_hidden_weight=1.0),
            pruning_config=MagnitudeConfig(target_sparsity=0.3),
            teacher_model=deeper,
        )
