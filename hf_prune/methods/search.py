"""The accuracy-preserving search over sparsity, for any method whose units have a ranking.

It takes the `PruningTrainer` that trained the model. The search works for any method whose units have a fixed
ranking (BINGO, Taylor, magnitude, random): it only sets gate masks (and, with `reconstruct`, refits the kept weights
for each candidate), evaluates on the trainer's `eval_dataset`, and restores both.
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
from ..mapping import PruningState
from .base import TargetMethod


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


@dataclass
class MaskEvaluator:
    """What the metric search needs from a run: the gated model's state and its evaluation metric under given
    keep-masks (`PruningTrainer.mask_evaluator()` builds one on the trainer's evaluation split).

    Args:
        state (`PruningState`): the gated model's state.
        metric (`str`): the metric key, e.g. `"eval_loss"` or `"eval_accuracy"`.
        greater_is_better (`bool`): its direction.
        evaluate (`Callable[[dict], float]`): the metric with the given keep-masks applied (and restored after).
    """

    state: PruningState
    metric: str
    greater_is_better: bool
    evaluate: Callable[[Masks], float]


def search_max_prune(
    evaluator: MaskEvaluator,
    max_metric_drop: float,
    step: float = 0.01,
    max_sparsity: float = 0.9,
    select: Callable[[float], Masks] | None = None,
) -> SearchResult:
    """Binary-search the largest sparsity whose evaluation metric stays within `max_metric_drop` of the dense one.

    The candidates are `0, step, 2 * step, ...` up to `max_sparsity`; the masks at each come from `select`
    (default: the method's `select(sparsity)`; every `TargetMethod` has one). With `reconstruct`, each candidate is
    judged after the least-squares refit it would get (`Reconstruction.refitted`; the weights are restored after), so
    the search measures the model that finalize hands back. The search
    assumes the metric degrades monotonically with sparsity and returns a grid point `s` within tolerance whose
    successor `s + step` was evaluated and is not (unless `s` is `max_sparsity`). About `log2(max_sparsity / step) +
    2` evaluations, all through `evaluator` (the evaluation split, never the test split).

    Args:
        evaluator (`MaskEvaluator`): the gated model and its metric, e.g. `trainer.mask_evaluator()`.
        max_metric_drop (`float`): relative tolerance, e.g. `0.01`.
        step (`float`, defaults to `0.01`): grid step.
        max_sparsity (`float`, defaults to `0.9`): largest sparsity tried.
        select (`Callable[[float], dict]`, *optional*): keep-masks for a sparsity.
    """
    state, key, greater = evaluator.state, evaluator.metric, evaluator.greater_is_better
    if select is None:
        if not isinstance(state.method, TargetMethod):
            raise ValueError(
                f"The metric search ranks units with the method's `select(sparsity)`; {type(state.method).__name__} "
                "decides its own sparsity. Use a target-based method (BINGO, Taylor, magnitude, random) or pass `select`."
            )
        select = state.method.select
    dense_masks = {kind: [None if m is None else m.clone() for m in state.masks(kind)] for kind in (HEADS, NEURONS)}
    evaluate = evaluator.evaluate
    reconstruction = getattr(state.method, "reconstruction", None)
    if reconstruction is not None:

        def evaluate(masks: Masks) -> float:
            with reconstruction.refitted(dense_masks, masks):
                return evaluator.evaluate(masks)

    dense = evaluator.evaluate(dense_masks)  # nothing removed, nothing to refit
    allowed = dense - max_metric_drop * abs(dense) if greater else dense + max_metric_drop * abs(dense)
    trials = [SearchTrial(0.0, dense, True)]
    cache: dict[int, tuple[bool, Masks]] = {0: (True, dense_masks)}

    def within(index: int) -> bool:
        if index not in cache:
            sparsity = round(index * step, 10)
            masks = select(sparsity)
            value = evaluate(masks)
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
