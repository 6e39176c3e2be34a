"""The accuracy-preserving search over sparsity, for any method whose units have a ranking.

It takes the `PruningTrainer` that trained the model. The search works for any method whose units have a fixed
ranking (BINGO, Taylor, magnitude, random): it only sets gate masks, evaluates on the trainer's `eval_dataset`, and
restores the masks.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..constants import HEADS, NEURONS
from ..mapping import PruningState, get_pruning_state, masks_applied
from ..selection import select_to_sparsity


logger = logging.getLogger(__name__)


@contextlib.contextmanager
def preserved_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's `training` flag on exit (`model.train()` would also flip deliberately frozen ones)."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


Masks = dict[str, list[torch.Tensor | None]]


@dataclass
class SearchTrial:
    """One evaluated point of the search: the requested sparsity, the metric, and whether it is within tolerance."""

    sparsity: float
    metric: float
    within_tolerance: bool


@dataclass
class SearchResult:
    """Outcome of `search_max_prune`.

    Args:
        metric (`str`): the metric key that was compared (e.g. `"eval_loss"`, `"eval_accuracy"`).
        greater_is_better (`bool`): its direction.
        dense_metric (`float`): its value with no unit pruned (the reference).
        max_metric_drop (`float`): the relative tolerance.
        sparsity (`float`): the largest grid sparsity found within tolerance.
        trials (`list[SearchTrial]`): every evaluation, in order (the dense one first).
        masks (`dict`): the keep-masks at `sparsity`.
    """

    metric: str
    greater_is_better: bool
    dense_metric: float
    max_metric_drop: float
    sparsity: float
    trials: list[SearchTrial]
    masks: Masks = field(repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("masks")
        return data


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


def search_max_prune(
    trainer,
    max_metric_drop: float,
    step: float = 0.01,
    max_sparsity: float = 0.9,
    select: Callable[[float], Masks] | None = None,
) -> SearchResult:
    """Binary-search the largest sparsity whose evaluation metric stays within `max_metric_drop` of the dense one.

    The candidates are `0, step, 2 * step, ...` up to `max_sparsity`; the masks at each come from `select`
    (default: the method's `select(sparsity)` if it has one, else a global ranking of its `scores()`). The search
    assumes the metric degrades monotonically with sparsity and returns a grid point `s` within tolerance whose
    successor `s + step` was evaluated and is not (unless `s` is `max_sparsity`). About `log2(max_sparsity / step) +
    2` evaluations, all on `trainer.eval_dataset`.

    Args:
        trainer (`PruningTrainer`): the trainer that trained the gated model; its `eval_dataset`,
            `compute_metrics` and `metric_for_best_model` define the metric.
        max_metric_drop (`float`): relative tolerance, e.g. `0.01`.
        step (`float`, defaults to `0.01`): grid step.
        max_sparsity (`float`, defaults to `0.9`): largest sparsity tried.
        select (`Callable[[float], dict]`, *optional*): keep-masks for a sparsity.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    state = get_pruning_state(model)
    if select is None:
        method = state.method
        if hasattr(method, "select"):
            select = method.select
        else:
            scores = method.scores()
            select = lambda sparsity: select_to_sparsity(model, state, scores, sparsity)  # noqa: E731
    key, greater = metric_name(trainer)
    dense_masks = {kind: [None if m is None else m.clone() for m in state.masks(kind)] for kind in (HEADS, NEURONS)}
    dense = evaluate_masks(trainer, state, dense_masks, key)
    allowed = dense - max_metric_drop * abs(dense) if greater else dense + max_metric_drop * abs(dense)
    trials = [SearchTrial(0.0, dense, True)]
    cache: dict[int, tuple[bool, Masks]] = {0: (True, dense_masks)}

    def within(index: int) -> bool:
        if index not in cache:
            sparsity = round(index * step, 10)
            masks = select(sparsity)
            value = evaluate_masks(trainer, state, masks, key)
            ok = value >= allowed if greater else value <= allowed
            trials.append(SearchTrial(sparsity, value, ok))
            cache[index] = (ok, masks)
            logger.info(
                "pruning search: sparsity %.3f -> %s = %.5f (%s)", sparsity, key, value, "ok" if ok else "over"
            )
        return cache[index][0]

    low, high = 0, math.floor(max_sparsity / step + 1e-9)
    if within(high):
        low = high
    while high - low > 1:  # invariant: `low` within tolerance, `high` not
        middle = (low + high) // 2
        if within(middle):
            low = middle
        else:
            high = middle
    return SearchResult(key, greater, dense, max_metric_drop, round(low * step, 10), trials, cache[low][1])
