"""`PruningArguments`: `TrainingArguments` plus the run-time knobs of pruning."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PruningArguments(TrainingArguments):
    """`TrainingArguments` plus the run-time knobs of pruning.

    Args:
        gate_learning_rate (`float`, *optional*): learning rate of the gate parameters (their own optimizer group,
            without weight decay). Defaults to the method's recommended value, or `learning_rate` when it has none.
        gate_lr_scheduler_type (`str`, defaults to `"constant"`): `"constant"` keeps the gate learning rate fixed;
            `"same"` applies `lr_scheduler_type` to the gates too.
        pruning_loss_weight (`float`, defaults to `1.0`): multiplier of the method's loss term (e.g. BMRS's KL).
        finalize_on_train_end (`bool`, defaults to `False`): finalize the model (remove pruned units) when `train()`
            ends; otherwise call `trainer.finalize()`.
        distillation_weight (`float`, defaults to `0.0`): weight α of the logit KL to `PruningTrainer(teacher_model=)`:
            the loss is `(1 - α) · task loss + α · T² · KL(teacher ‖ model)` (see `hf_prune.distillation`), and the
            gradient statistics of Taylor and BINGO are taken for it. 0 is off; 1 is distillation alone.
        distillation_temperature (`float`, defaults to `1.0`): the softmax temperature `T` of that KL.
        distillation_hidden_weight (`float`, defaults to `0.0`): weight β of the hidden-state term, added to the loss
            above: the relative squared error of every block's output against the teacher's (CoFi's layer
            distillation; see `hf_prune.distillation`). Needs the teacher to have the model's depth and width, as the
            dense model it started from has. 0 is off.
    """

    gate_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the pruning gates (default: the method's recommendation)."}
    )
    pruning_loss_weight: float = field(default=1.0, metadata={"help": "Weight of the method's loss term."})
    gate_lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "'constant': gates keep their learning rate all run (a decayed gate lr would stop pruning "
            "decisions from moving late in training); 'same': they follow lr_scheduler_type."
        },
    )
    finalize_on_train_end: bool = field(
        default=False, metadata={"help": "Remove the pruned units when training ends."}
    )

    distillation_weight: float = field(
        default=0.0,
        metadata={"help": "Weight in [0, 1] of the logit KL to the teacher model (0: no distillation)."},
    )
    distillation_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of that KL."})
    distillation_hidden_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the error of every block's output against the teacher's (0: off)."},
    )

    @property
    def distils(self) -> bool:
        """Whether the loss has a term from a teacher model."""
        return self.distillation_weight > 0 or self.distillation_hidden_weight > 0

    def __post_init__(self):
        super().__post_init__()
        if self.gate_learning_rate is not None and self.gate_learning_rate <= 0:
            raise ValueError(f"Invalid gate_learning_rate={self.gate_learning_rate}: use a positive value or None.")
        if self.gate_lr_scheduler_type not in ("constant", "same"):
            raise ValueError(
                f"Invalid gate_lr_scheduler_type={self.gate_lr_scheduler_type!r}: use 'constant' or 'same'."
            )
        if self.pruning_loss_weight < 0:
            raise ValueError(f"Invalid pruning_loss_weight={self.pruning_loss_weight}: use a value >= 0.")
        if not 0 <= self.distillation_weight <= 1:
            raise ValueError(f"Invalid distillation_weight={self.distillation_weight}: use a value in [0, 1].")
        if self.distillation_hidden_weight < 0:
            raise ValueError(
                f"Invalid distillation_hidden_weight={self.distillation_hidden_weight}: use a value >= 0 (0 is off)."
            )
        if self.distillation_temperature <= 0:
            raise ValueError(
                f"Invalid distillation_temperature={self.distillation_temperature}: use a positive value (1.0 is usual)."
            )
