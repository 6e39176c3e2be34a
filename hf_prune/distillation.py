"""Logit distillation from a dense teacher while units are removed (the KL term of CoFi and Minitron).

The student is trained on `(1 - α) · task loss + α · T² · KL(teacher_T ‖ student_T)`, where `_T` are the softmaxes
at temperature `T`. The KL is counted over the same terms as the task loss: one per example for sequence-level
heads, one per label token for token-level heads (the next token's label for causal LMs), so that under the
Trainer's `num_items_in_batch` normalisation both are sums over the same terms divided by the same count.
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
        if shift_labels:
            student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
            labels = labels[:, 1:] if labels is not None else None
        if labels is not None:
            keep = labels != IGNORE_INDEX
            student_logits, teacher_logits = student_logits[keep], teacher_logits[keep]
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    student_log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum")
    return kl * temperature**2, student_logits.shape[0]
