"""`BmrsConfig`: Bayesian model reduction for structured pruning (Wright, Igel & Selvan, NeurIPS 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...configs import PruningConfig, _require


@dataclass
class BmrsConfig(PruningConfig):
    """Multiplicative log-normal noise gates on heads and neurons; a unit is removed when Bayesian model reduction
    says the evidence is at least as high without it (ΔF ≥ 0). No threshold or target sparsity to tune.

    Each gate θ has the posterior log θ ~ N(μ, σ²) truncated to [`lower`, `upper`] and a log-uniform prior on the same
    interval; training adds the exact KL of the two to the task loss.

    Args:
        variant (`str`, defaults to `"normal"`): the reduced prior. `"normal"` (BMRS_N): a spike at the lower bound;
            `"uniform"` (BMRS_U): log-uniform on [2^-p2, 2^-p1].
        p1 (`int`, defaults to `8`): BMRS_U's upper precision bound, 2^-p1 (the paper uses 8 and 4; 4 prunes more).
        p2 (`int`, defaults to `23`): BMRS_U's lower precision bound (float32 mantissa bits).
        prior_sigma (`float`, defaults to `1e-6`): width of BMRS_N's spike (the paper's variance 1e-12).
        code_parity (`bool`, defaults to `True`): add the ½·log 2π that the authors' released code drops from ΔF_N,
            so a unit is pruned when the paper's ΔF ≥ −0.919, as in the code that produced the published results.
            Why the default: a gate the data do not need relaxes to the flat prior, where the paper-exact ΔF_N tends
            to 0 from below (about −0.1), so the exact rule keeps it forever. Measured on the synthetic test task:
            104 of 104 units became diffuse (SNR < 1, E[θ] < 0.1) and the exact rule pruned none. Both counts are
            logged (`pruning/bmrs/would_prune/bmrs_n_exact` and `.../bmrs_n`); set `False` for the exact rule.
        kl_weighting (`str`, defaults to `"elbo"`): `"elbo"` = sum of the gates' KL / (N + `pretrained_evidence`),
            the variational free energy per likelihood term, where N counts the terms the task loss averages over:
            training examples for a sequence-level head, label tokens for a causal LM (counted through the training
            collator, see `hf_prune.likelihood_terms`); `"mean"` = per gate layer, the KL
            of its unmasked gates divided by its full unit count, averaged over layers (the authors' code; the
            weights of the G gates sum to 1, 1/G on average; removed units count as 0, so a survivor's weight
            never grows as units go).
        pretrained_evidence (`int`, *optional*): the evidence the pretrained starting point is worth, in training
            examples; the KL is divided by N + this. Defaults to the number of gated units G (one pseudo-example per
            unit); `0` gives the plain ELBO (a model trained from scratch). Why: the KL is the description length of
            the gates, and with weight 1/N only the N labels pay for it (a binary label carries at most log 2 nats).
            With N below G the labels cannot pay for an average unit, whatever the pretrained model already knows.
            Under the plain ELBO on little data every gate relaxes at the same rate, so the likelihood never tells
            units apart, and one decision removes nearly all of them. Counting the pretrained model as G examples
            caps the weight per gate at 1/G, a gate's average weight under the authors' `mean` weighting, with which
            the paper's results were obtained, and fades once N ≫ G. Measured: BENCHMARKS.md, 500-example section.
        noise (`str`, defaults to `"example"`): one gate sample per example shared across tokens (`"example"`), or
            one per element as in the authors' code (`"element"`; refused for causal LMs, where the samples of every
            token and unit would be kept for the backward pass).
        lower, upper (`float`, default to `-20.0` and `0.0`): truncation bounds of log θ.
        init_mu, init_log_sigma (`float`, default to `0.0` and `-5.0`): initial posterior; E[θ] ≈ 0.995, so the
            pretrained model is essentially unchanged when the gates are inserted.
        pruning_interval (`int`, *optional*): optimizer steps between pruning decisions; default once per epoch.
        decision_warmup_steps (`int`, defaults to `0`): no decisions before this optimizer step (named apart from
            `TrainingArguments.warmup_steps`, the learning-rate warm-up).
        finetune_steps (`int`, defaults to `0`): the last decision happens this many steps before the end; the
            remaining steps fine-tune with the masks frozen.
    """

    method = "bmrs"

    variant: str = field(
        default="normal", metadata={"help": "Reduced prior: 'normal' (BMRS_N) or 'uniform' (BMRS_U)."}
    )
    p1: int = field(default=8, metadata={"help": "BMRS_U upper precision bound 2^-p1 (8 or 4 in the paper)."})
    p2: int = field(default=23, metadata={"help": "BMRS_U lower precision bound 2^-p2."})
    prior_sigma: float = field(default=1e-6, metadata={"help": "Width of BMRS_N's reduced-prior spike."})
    code_parity: bool = field(
        default=True, metadata={"help": "Use the reference code's BMRS_N (without 1/2 log(2 pi)); False: paper-exact."}
    )
    kl_weighting: str = field(
        default="elbo", metadata={"help": "'elbo' (sum KL / (N + pretrained_evidence)) or 'mean' (authors' code)."}
    )
    pretrained_evidence: int | None = field(
        default=None,
        metadata={"help": "Examples the pretrained start is worth (default: number of gated units; 0: plain ELBO)."},
    )
    noise: str = field(default="example", metadata={"help": "'example' (shared across tokens) or 'element'."})
    lower: float = field(default=-20.0, metadata={"help": "Lower truncation bound of log theta."})
    upper: float = field(default=0.0, metadata={"help": "Upper truncation bound of log theta."})
    init_mu: float = field(default=0.0, metadata={"help": "Initial posterior mean of log theta."})
    init_log_sigma: float = field(default=-5.0, metadata={"help": "Initial log of the posterior scale."})
    pruning_interval: int | None = field(
        default=None, metadata={"help": "Optimizer steps between pruning decisions (default: once per epoch)."}
    )
    decision_warmup_steps: int = field(default=0, metadata={"help": "No pruning decisions before this step."})
    finetune_steps: int = field(default=0, metadata={"help": "Steps at the end with frozen masks."})

    def __post_init__(self):
        super().__post_init__()
        _require(self.variant in ("normal", "uniform"), "variant", self.variant, "use 'normal' or 'uniform'")
        _require(self.kl_weighting in ("elbo", "mean"), "kl_weighting", self.kl_weighting, "use 'elbo' or 'mean'")
        _require(self.noise in ("example", "element"), "noise", self.noise, "use 'example' or 'element'")
        _require(
            self.pretrained_evidence is None or self.pretrained_evidence >= 0,
            "pretrained_evidence",
            self.pretrained_evidence,
            "use a number of examples >= 0 (0: the plain ELBO), or None for the number of gated units",
        )
        _require(self.lower < self.upper <= 0, "upper", self.upper, "use lower < upper <= 0 (log of a gate in (0, 1])")
        _require(0 <= self.p1 < self.p2, "p1", self.p1, "use integers with 0 <= p1 < p2")
        _require(
            -self.p2 * math.log(2) > self.lower,
            "p2",
            self.p2,
            f"2^-p2 must lie above exp(lower); use p2 < {-self.lower / math.log(2):.1f}",
        )
        _require(self.prior_sigma > 0, "prior_sigma", self.prior_sigma, "use a positive width")
        _require(
            self.pruning_interval is None or self.pruning_interval > 0,
            "pruning_interval",
            self.pruning_interval,
            "use a positive number of steps, or None for once per epoch",
        )
        _require(self.decision_warmup_steps >= 0, "decision_warmup_steps", self.decision_warmup_steps, "use >= 0")
        _require(self.finetune_steps >= 0, "finetune_steps", self.finetune_steps, "use >= 0")
