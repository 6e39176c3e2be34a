"""Evaluating a gated model under other keep-masks with the trainer's own evaluation loop (for the metric search)."""

from __future__ import annotations

from .mapping import PruningState, get_pruning_state, masks_applied
from .methods.search import MaskEvaluator, Masks, preserved_modes


def metric_name(trainer) -> tuple[str, bool]:
    """`(key in the evaluation metrics, greater_is_better)`: `metric_for_best_model`, else the evaluation loss."""
    name = trainer.args.metric_for_best_model
    if not name:
        return "eval_loss", False
    key = name if name.startswith("eval_") else f"eval_{name}"
    greater = trainer.args.greater_is_better
    return key, (not key.endswith("loss")) if greater is None else bool(greater)


def evaluate_masks(trainer, state: PruningState, masks: Masks, key: str) -> float:
    """The trainer's evaluation metric `key` on its `eval_dataset` with the given keep-masks (restored after)."""
    dataset = trainer.eval_dataset
    if dataset is None:
        raise ValueError(
            "The metric search needs an evaluation set: pass `eval_dataset=` (a validation split, never the test "
            "split) to PruningTrainer, or prune to a fixed target_sparsity instead of max_metric_drop."
        )
    if isinstance(dataset, dict):
        raise ValueError("The metric search needs a single `eval_dataset`, not a dict of evaluation sets.")
    model = trainer.accelerator.unwrap_model(trainer.model)
    with masks_applied(state, masks), preserved_modes(model):
        output = trainer.evaluation_loop(
            trainer.get_eval_dataloader(dataset),
            description="Pruning search",
            prediction_loss_only=True if trainer.compute_metrics is None else None,
            metric_key_prefix="eval",
        )
    if key not in output.metrics:
        raise ValueError(
            f"The evaluation returned no {key!r} (it returned {sorted(output.metrics)}): set "
            "`metric_for_best_model` to one of them, or give the trainer a `compute_metrics` that returns it."
        )
    return float(output.metrics[key])


def mask_evaluator(trainer) -> MaskEvaluator:
    """The metric search's view of a `PruningTrainer`: its gated model, `metric_for_best_model` (else the evaluation
    loss) and its `eval_dataset`."""
    key, greater = metric_name(trainer)
    state = get_pruning_state(trainer.accelerator.unwrap_model(trainer.model))
    return MaskEvaluator(state, key, greater, lambda masks: evaluate_masks(trainer, state, masks, key))
