"""`BingoConfig`: the hyper-parameters of BINGO pruning (Panangat, 2025, arXiv:2505.09864; see docs bingo.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...configs import TargetConfig, _require
from .estimators import ESTIMATORS


SIGNALS = ("loss", "accuracy_abs")
PERTURBATIONS = ("zero", "reset")
TIME_WEIGHTINGS = ("linear", "none")
SHRINKAGES = ("kind", "layer", "none")
PRIORS = ("first_order", "second_order")


@dataclass
class BingoConfig(TargetConfig):
    """BINGO: random-subset significance probes during training; units removed on the target schedule.

    Every `probe_interval` optimizer steps (once `probe_start` of training has passed), the method runs extra
    forward passes without gradients, in eval mode, on the current training micro-batch: one clean pass and
    `masked_passes` passes with a random subset of heads and neurons across all layers switched off (each head unit
    with probability `p_head`, each neuron with `p_neuron`, from the method's own random stream, so training is
    unchanged). Units removed by the schedule so far stay off in every pass, so later probes measure the model in
    the context it will be pruned in, and only surviving units are switched off. An estimator turns the probes into
    each unit's effect on the signal, with a standard error. At each pruning event of the schedule (see
    `TargetConfig`; `schedule="final"` is the paper's one shot after training) units are ranked globally by effect per
    prunable parameter freed (lowest first; with the signed loss signal a unit whose removal helps goes first) and
    removed up to the scheduled sparsity. With `max_metric_drop` (and `schedule="final"`) the model is instead pruned
    after training as far as the evaluation metric allows.

    Args:
        target_sparsity (`float`, defaults to `0.5`): fraction of prunable parameters to remove, in [0, 1). Ignored
            when `max_metric_drop` is set.
        probe_interval (`int`, defaults to `4`): optimizer steps between probes (the spec's k; 2-4 for small data
            sets, 8-16 for large ones).
        probe_start (`float`, defaults to `0.0`): fraction of the optimizer steps to skip before probing starts,
            in [0, 1). The gate-gradient prior is accumulated over the same window. With the linear time weighting
            early probes count little, and a pruning schedule needs measurements before its first event.
        p_head (`float`, defaults to `0.1`): probability that a probe switches off a given head unit (a key/value
            group under grouped-query attention), in (0, 1).
        p_neuron (`float`, defaults to `0.05`): probability that a probe switches off a given MLP neuron, in (0, 1).
        masked_passes (`int`, defaults to `1`): masked forward passes per probe, each with its own random subset; they
            share one clean pass. A draw that switches off nothing is recorded as a zero change without a forward.
        estimator (`str`, defaults to `"control_variate"`): how probes become scores. `"control_variate"`:
            inverse-probability weighting with the gate-gradient prior as control variate and empirical-Bayes
            shrinkage (spec §3.6, estimator C). `"ridge"`: ridge regression for heads (estimator D), control variate
            for neurons. `"difference_of_means"`: estimator B. `"ema"`: the paper's update with its sign fixed
            (estimator A; faithful, noisy).
        signal (`str`, defaults to `"loss"`): `"loss"`, the signed relative loss change
            `(L_masked - L_clean) / L_clean`; or `"accuracy_abs"`, the paper's `|A_clean - A_masked| / A_clean` on the
            batch (needs `labels` and logits; probes with `A_clean = 0` are skipped).
        perturbation (`str`, defaults to `"zero"`): `"zero"` switches units off, as removal does; `"reset"` (the
            paper) puts their weights back to the values they had when the model was prepared (the pretrained
            checkpoint when fine-tuning), which measures the fine-tuning change rather than removability. Reset mode
            keeps a copy of the prunable weights and uses no gradient prior.
        time_weighting (`str`, defaults to `"linear"`): `"linear"` weighs a probe (and the prior's gradients) by its
            step, so the end of training counts most; `"none"` weighs all equally.
        shrinkage (`str`, defaults to `"kind"`): empirical-Bayes groups of the control-variate estimator: one per
            unit kind, one per kind and layer (`"layer"`), or no shrinkage (`"none"`).
        prior (`str`, defaults to `"first_order"`): the control variate's prediction of a unit's effect:
            `"first_order"`, `-(dL/dgate) / L`; `"second_order"` adds `½ F / L` with `F` the empirical Fisher (mean
            squared per-example gate gradient), a curvature term that stays positive for trained units whose mean
            gradient has gone to zero.
        ema_decay (`float`, defaults to `0.5`): weight of the previous score in the `"ema"` update (the paper's 0.5).
        ridge_alpha (`float`, defaults to `1.0`): penalty of the `"ridge"` estimator towards the prior, in probes.
        confidence_z (`float`, defaults to `0.0`): rank by `effect + confidence_z * standard error` (an upper bound),
            so that units that are merely poorly measured are not pruned first.
        max_metric_drop (`float`, *optional*): accuracy-preserving mode. After training, binary-search the largest
            sparsity (on a `search_step` grid up to `search_max_sparsity`) whose evaluation metric stays within this
            relative tolerance of the unpruned model's: `metric >= (1 - tol) * dense` when greater is better,
            `metric <= (1 + tol) * dense` otherwise. The metric is `TrainingArguments.metric_for_best_model`
            (direction from `greater_is_better`), else the evaluation loss. Only the trainer's `eval_dataset` is
            used, never training or test data. With `reconstruct` every candidate is judged after its least-squares
            refit, as finalize will hand it back. Needs `PruningTrainer` with an `eval_dataset`.
        search_step (`float`, defaults to `0.01`): sparsity grid step of that search.
        search_max_sparsity (`float`, defaults to `0.9`): largest sparsity the search considers.
        min_heads_per_layer (`int`, defaults to `1`): never keep fewer query heads than this in a layer.
        max_layer_neuron_sparsity (`float`, defaults to `0.9`): never remove more than this fraction of a layer's
            MLP neurons, in (0, 1].
        method_seed (`int`, *optional*): seed of the probe subsets (defaults to the training seed). Each probe's subset is
            derived from `(seed, process rank, step, pass)`, so a resumed run draws the same subsets.
    """

    method = "bingo"

    probe_interval: int = field(default=4, metadata={"help": "Optimizer steps between probes."})
    probe_start: float = field(default=0.0, metadata={"help": "Fraction of training before probing starts."})
    p_head: float = field(default=0.1, metadata={"help": "Probability of switching off a head unit in a probe."})
    p_neuron: float = field(default=0.05, metadata={"help": "Probability of switching off a neuron in a probe."})
    masked_passes: int = field(default=1, metadata={"help": "Masked forward passes per probe."})
    estimator: str = field(default="control_variate", metadata={"help": f"One of {', '.join(ESTIMATORS)}."})
    signal: str = field(default="loss", metadata={"help": f"One of {', '.join(SIGNALS)}."})
    perturbation: str = field(default="zero", metadata={"help": f"One of {', '.join(PERTURBATIONS)}."})
    time_weighting: str = field(default="linear", metadata={"help": f"One of {', '.join(TIME_WEIGHTINGS)}."})
    shrinkage: str = field(default="kind", metadata={"help": f"One of {', '.join(SHRINKAGES)}."})
    prior: str = field(default="first_order", metadata={"help": f"One of {', '.join(PRIORS)}."})
    ema_decay: float = field(default=0.5, metadata={"help": "Weight of the previous score in the EMA update."})
    ridge_alpha: float = field(default=1.0, metadata={"help": "Ridge penalty towards the prior, in probes."})
    confidence_z: float = field(default=0.0, metadata={"help": "Rank by effect + z * standard error."})
    max_metric_drop: float | None = field(
        default=None, metadata={"help": "Largest relative drop of the evaluation metric (accuracy-preserving mode)."}
    )
    search_step: float = field(default=0.01, metadata={"help": "Sparsity grid step of the metric search."})
    search_max_sparsity: float = field(default=0.9, metadata={"help": "Largest sparsity the metric search tries."})
    min_heads_per_layer: int = field(default=1, metadata={"help": "Minimum query heads kept in each layer."})
    max_layer_neuron_sparsity: float = field(
        default=0.9, metadata={"help": "Largest fraction of one layer's MLP neurons that may be removed."}
    )

    def __post_init__(self):
        super().__post_init__()
        _require(
            isinstance(self.probe_interval, int) and self.probe_interval >= 1,
            "probe_interval",
            self.probe_interval,
            "use an integer >= 1 (optimizer steps between probes)",
        )
        _require(
            0.0 <= self.probe_start < 1.0, "probe_start", self.probe_start, "use a fraction of training in [0, 1)"
        )
        _require(0.0 < self.p_head < 1.0, "p_head", self.p_head, "use a probability in (0, 1), e.g. 0.1")
        _require(0.0 < self.p_neuron < 1.0, "p_neuron", self.p_neuron, "use a probability in (0, 1), e.g. 0.05")
        _require(
            isinstance(self.masked_passes, int) and self.masked_passes >= 1,
            "masked_passes",
            self.masked_passes,
            "use an integer >= 1",
        )
        for name, allowed in (
            ("estimator", ESTIMATORS),
            ("signal", SIGNALS),
            ("perturbation", PERTURBATIONS),
            ("time_weighting", TIME_WEIGHTINGS),
            ("shrinkage", SHRINKAGES),
            ("prior", PRIORS),
        ):
            _require(getattr(self, name) in allowed, name, getattr(self, name), f"use one of {', '.join(allowed)}")
        _require(0.0 < self.ema_decay < 1.0, "ema_decay", self.ema_decay, "use a value in (0, 1) (the paper: 0.5)")
        _require(self.ridge_alpha > 0, "ridge_alpha", self.ridge_alpha, "use a positive penalty, e.g. 1.0")
        _require(self.confidence_z >= 0, "confidence_z", self.confidence_z, "use 0 (rank by effect) or a positive z")
        if self.max_metric_drop is not None:
            _require(
                0.0 < self.max_metric_drop < 1.0,
                "max_metric_drop",
                self.max_metric_drop,
                "use a relative tolerance in (0, 1), e.g. 0.01, or None to prune to target_sparsity",
            )
        _require(0.0 < self.search_step <= 0.5, "search_step", self.search_step, "use a grid step in (0, 0.5]")
        _require(
            self.search_step <= self.search_max_sparsity < 1.0,
            "search_max_sparsity",
            self.search_max_sparsity,
            "use a value in [search_step, 1)",
        )
        _require(
            0.0 < self.max_layer_neuron_sparsity <= 1.0,
            "max_layer_neuron_sparsity",
            self.max_layer_neuron_sparsity,
            "use a fraction in (0, 1]",
        )
        if self.max_metric_drop is not None and self.schedule != "final":
            raise ValueError(
                f"Invalid max_metric_drop={self.max_metric_drop!r} with schedule={self.schedule!r}: the metric search "
                "picks the sparsity after training, so it needs schedule='final'; or set target_sparsity and keep the "
                "schedule."
            )
