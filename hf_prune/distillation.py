"""Distillation from a dense teacher while units are removed: the logit KL and the hidden-state term of CoFi and
Minitron.

The student is trained on `(1 - α) · task loss + α · T² · KL(teacher_T ‖ student_T) + β · hidden-state error`, where
`_T` are the softmaxes at temperature `T` and the hidden-state error of a position is the mean over the blocks of
`‖h_student − h_teacher‖² / ‖h_teacher‖²`, each block's output against the teacher's (pruning heads and neurons
keeps the hidden size, so no projection is needed; the relative error is blind to the scale of the residual stream,
whose few huge channels would dominate a plain MSE). Both terms are counted over the same terms as the task loss: one
per example for sequence-level heads (the hidden-state error averaged over the example's tokens), one per label
token for token-level heads (the next token's label for causal LMs), so that under the Trainer's
`num_items_in_batch` normalisation all are sums over the same terms divided by the same count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


IGNORE_INDEX = -100


def check_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a pair that cannot be distilled: a regression head (no distribution) or a different label space."""
    config = student.config
    if getattr(config, "problem_type", None) == "regression" or (
        type(student).__name__.endswith("ForSequenceClassification") and config.num_labels == 1
    ):
        raise ValueError(
            "distillation_weight > 0 needs a model whose logits are a distribution (classification or language "
            "modelling); this is a regression head. Set distillation_weight=0."
        )
    student_head = student.get_output_embeddings() if hasattr(student, "get_output_embeddings") else None
    teacher_head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
    if student_head is not None and teacher_head is not None:
        student_vocab, teacher_vocab = student_head.weight.shape[0], teacher_head.weight.shape[0]
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"teacher_model predicts {teacher_vocab} tokens and the model {student_vocab}: the teacher must "
                "share the model's tokenizer."
            )
    elif getattr(config, "num_labels", None) != getattr(teacher.config, "num_labels", None):
        raise ValueError(
            f"teacher_model has {teacher.config.num_labels} labels and the model {config.num_labels}: the teacher "
            "must be a model of the same task."
        )


def check_hidden_teacher(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a teacher whose blocks cannot be matched one to one with the student's (another depth or width)."""
    for name in ("num_hidden_layers", "hidden_size"):
        mine, theirs = getattr(student.config, name, None), getattr(teacher.config, name, None)
        if mine != theirs:
            raise ValueError(
                f"distillation_hidden_weight > 0 matches every block's output with the teacher's, but the teacher has "
                f"{name}={theirs} and the model {mine}: distil hidden states from the dense model the pruned one "
                "started from, or set distillation_hidden_weight=0."
            )


def distillation_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    shift_labels: bool,
) -> tuple[torch.Tensor, int]:
    """The sum of `T² · KL(teacher_T ‖ student_T)` over the scored positions, and their number.

    Positions are the examples for logits of shape `(batch, classes)`; for token logits `(batch, length, vocab)` they
    are the tokens whose label is not -100 (with `shift_labels`, the logits at position t are scored where the label
    at t + 1 is set, as a causal LM's loss does), or every token when there are no labels.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"The teacher's logits have shape {tuple(teacher_logits.shape)} and the model's "
            f"{tuple(student_logits.shape)}: distill from a model with the same tokenizer and labels."
        )
    if student_logits.dim() > 2:
        keep = _label_positions(student_logits, labels, shift_labels)
        length = keep.shape[1]
        student_logits, teacher_logits = student_logits[:, :length][keep], teacher_logits[:, :length][keep]
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum")
    return kl * temperature**2, student_logits.shape[0]


def hidden_state_terms(
    student_states: tuple[torch.Tensor, ...],
    teacher_states: tuple[torch.Tensor, ...],
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_level: bool,
    shift_labels: bool,
) -> tuple[torch.Tensor, int]:
    """The sum of the hidden-state error over the scored terms, and their number.

    `*_states` are a model's `output_hidden_states` (the embeddings, then one tensor per block); the embeddings are
    skipped. The error of a position is the mean over the blocks of `‖h_s − h_t‖² / ‖h_t‖²`. With `token_level` the
    terms are the positions `distillation_terms` scores; otherwise one per example, the mean of its tokens (those of
    `attention_mask`, or all).
    """
    if len(student_states) != len(teacher_states) or any(
        s.shape != t.shape for s, t in zip(student_states, teacher_states)
    ):
        raise ValueError(
            f"The teacher returns {len(teacher_states)} hidden states of shape {tuple(teacher_states[-1].shape)} and "
            f"the model {len(student_states)} of shape {tuple(student_states[-1].shape)}: distil hidden states from "
            "the dense model the pruned one started from."
        )
    blocks = zip(student_states[1:], teacher_states[1:])  # the embeddings are not pruned
    errors = torch.stack([_relative_error(s, t) for s, t in blocks]).mean(0)  # (batch, length)
    if token_level:
        keep = _label_positions(errors, labels, shift_labels)
        return errors[:, : keep.shape[1]][keep].sum(), int(keep.sum())
    mask = attention_mask.to(errors.dtype) if attention_mask is not None else torch.ones_like(errors)
    per_example = (errors * mask).sum(1) / mask.sum(1).clamp_min(1)
    return per_example.sum(), errors.shape[0]


def _relative_error(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    teacher = teacher.float()
    return (student.float() - teacher).pow(2).sum(-1) / teacher.pow(2).sum(-1).clamp_min(1e-12)


def _label_positions(values: torch.Tensor, labels: torch.Tensor | None, shift_labels: bool) -> torch.Tensor:
    """A `(batch, length')` boolean mask of the scored positions of `values` (`(batch, length, ...)`): those whose
    label is set (with `shift_labels`, the positions before them, `length' = length - 1`), or every position without
    labels."""
    batch, length = values.shape[0], values.shape[1] - (1 if shift_labels else 0)
    if labels is None:
        return torch.ones(batch, length, dtype=torch.bool, device=values.device)
    labels = labels[:, 1:] if shift_labels else labels
    return labels != IGNORE_INDEX
