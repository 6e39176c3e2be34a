"""BMRS as a `PruningMethod`: KL loss, periodic ΔF decisions with monotone masks, and the final rule."""

from __future__ import annotations

import logging
import math

import torch

from ...constants import HEADS, NEURONS
from ...distributed import full_tensor
from ...selection import Masks, current_masks, enforce_structure
from ..base import PruningMethod
from .config import BmrsConfig
from .functional import delta_f_normal, delta_f_uniform, truncated_lognormal_mean, truncated_lognormal_snr
from .gate import BmrsGate


logger = logging.getLogger(__name__)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel")

CITATION = """@inproceedings{wright2024bmrs,
  title = {{BMRS}: Bayesian Model Reduction for Structured Pruning},
  author = {Wright, Dustin and Igel, Christian and Selvan, Raghavendra},
  booktitle = {Advances in Neural Information Processing Systems},
  year = {2024},
  eprint = {2406.01345},
  archivePrefix = {arXiv}
}"""


class BmrsMethod(PruningMethod):
    """Bayesian model reduction on truncated log-normal gates.

    Decisions run every `pruning_interval` optimizer steps (default: once per epoch) after `decision_warmup_steps`, with a
    final pass `finetune_steps` before the end; masks only ever lose units. The KL term is added once per optimizer
    step and covers unmasked gates only.

    The gates need their own, larger learning rate. Adam moves a parameter by about its learning rate per step
    whatever the gradient, and log σ must travel from -5 to about +2 (and μ away from 0) before ΔF can become
    positive, i.e. ~10-20 learning-rate units. At fine-tuning rates (2e-5 to 5e-5) nothing would ever be pruned, so
    the default gate learning rate is `clip(20 / max_steps, 0.01, 0.1)`: large enough that gates which the data do
    not need can relax to the prior within the run, small enough to stay stable in long runs.
    """

    title = "BMRS (Bayesian model reduction for structured pruning)"
    paper = "Wright, Igel & Selvan, NeurIPS 2024, arXiv:2406.01345"
    citation = CITATION
    config: BmrsConfig

    def __init__(self, config: BmrsConfig):
        super().__init__(config)
        self.interval: int | None = config.pruning_interval
        self.final_step: int | None = None

    def create_gate(self, kind: str, layer: int, num_units: int) -> BmrsGate:
        gate = BmrsGate(num_units, self.config)
        gate.register_buffer("frozen", torch.zeros((), dtype=torch.bool))  # set by the final pass (checkpointed)
        return gate

    def check_model(self, model) -> None:
        if self.config.noise == "element" and type(model).__name__.endswith(_GENERATIVE_HEADS):
            raise ValueError(
                f"noise='element' draws one gate sample per token and unit, kept for the backward pass (batch x "
                f"sequence x units values per gated layer), which does not fit a {type(model).__name__}'s memory "
                "budget; use noise='example' (one sample per sequence, the default)."
            )

    def gate_learning_rate(self, max_steps: int) -> float:
        return min(0.1, max(0.01, 20.0 / max(max_steps, 1)))

    def on_train_begin(self, max_steps: int, steps_per_epoch: int) -> None:
        self.interval = self.config.pruning_interval or steps_per_epoch
        self.final_step = max(1, max_steps - self.config.finetune_steps)

    def _gates(self) -> list[BmrsGate]:
        return [g for kind in (HEADS, NEURONS) for g in self.state.gates(kind) if g is not None]

    # -- loss -------------------------------------------------------------------------------------------------------
    def loss(self, num_likelihood_terms: float | None) -> torch.Tensor:
        """The KL term of one optimizer step; masked units contribute nothing.

        `"elbo"`: sum of the unmasked gates' KL / (`num_likelihood_terms` + `evidence_offset()`), the free energy per
        likelihood term: per training example for a sequence-level head, per label token for a causal LM (whose
        loss is a mean over tokens). `"mean"`: per
        gate layer, the KL sum of its unmasked gates divided by the layer's *full* unit count, averaged over all gate
        layers. Dividing by the full counts keeps each surviving gate's weight fixed as units go (a mean over
        survivors would push the last units of a layer harder and harder, and removed every unit in our benchmark).
        """
        gates = self._gates()
        if self.config.kl_weighting == "elbo":
            if not num_likelihood_terms:
                raise ValueError(
                    "kl_weighting='elbo' needs the size of the training set (a sized train_dataset); "
                    "use kl_weighting='mean' for iterable datasets."
                )
            return sum(g.kl()[g.mask].sum() for g in gates) / (num_likelihood_terms + self.evidence_offset())
        return sum(g.kl()[g.mask].sum() / g.num_units for g in gates) / len(gates)

    def evidence_offset(self) -> int:
        """Pseudo-examples of evidence credited to the pretrained starting point: `pretrained_evidence`, by default
        the number of gated units (masked ones included, so the weight does not change as units go)."""
        if self.config.pretrained_evidence is not None:
            return self.config.pretrained_evidence
        return sum(g.num_units for g in self._gates())

    # -- decisions --------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def delta_f(self, gate: BmrsGate) -> torch.Tensor:
        """ΔF of every unit of `gate` under the configured reduced prior (float64); prune where ΔF ≥ 0."""
        c = self.config
        mu, sigma = full_tensor(gate.mu.detach()).double(), gate.sigma().double()
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
            raise ValueError("BMRS gate parameters hold NaN/inf values; lower the gate learning rate.")
        if c.variant == "uniform":
            return delta_f_uniform(mu, sigma, p1=c.p1, p2=c.p2, lower=c.lower, upper=c.upper)
        return delta_f_normal(
            mu, sigma, prior_sigma=c.prior_sigma, lower=c.lower, upper=c.upper, code_parity=c.code_parity
        )

    @torch.no_grad()
    def proposal(self) -> tuple[Masks, Masks]:
        """The BMR proposal: keep-masks without the units whose ΔF ≥ 0, and the scores −ΔF (higher = more worth
        keeping), per kind and layer, on the CPU. Frozen gates propose no change."""
        keep, scores = {}, {}
        for kind in (HEADS, NEURONS):
            keep[kind], scores[kind] = [], []
            for gate in self.state.gates(kind):
                if gate is None:
                    keep[kind].append(None)
                    scores[kind].append(None)
                    continue
                delta = self.delta_f(gate).cpu()
                mask = gate.mask.detach().cpu()
                keep[kind].append(mask.clone() if bool(gate.frozen) else mask & ~(delta >= 0))
                scores[kind].append(-delta)
        return keep, scores

    @torch.no_grad()
    def decide(self, final: bool = False) -> None:
        """Remove the units with ΔF ≥ 0, within the config's guard rails (`min_heads_per_layer`,
        `min_neurons_per_layer`, `uniform_layers`, `neuron_multiple`; when a rail stops a removal, the units with the
        lowest ΔF stay). Masks are monotone."""
        gates = self._gates()
        if all(bool(g.frozen) for g in gates):
            return
        keep, scores = self.proposal()
        keep = enforce_structure(self.state, keep, scores, current_masks(self.state), self.config)
        self._tighten(keep)
        if final:
            for gate in gates:
                gate.frozen.fill_(True)

    def _tighten(self, keep: Masks) -> None:
        for kind in (HEADS, NEURONS):
            for gate, mask in zip(self.state.gates(kind), keep[kind]):
                if gate is not None and mask is not None:
                    gate.mask &= mask.to(gate.mask.device)

    def on_optimizer_step(self, global_step: int, max_steps: int) -> None:
        if self.final_step is None:
            self.on_train_begin(max_steps, max_steps)
        if global_step <= self.config.decision_warmup_steps or global_step > self.final_step:
            return
        if global_step == self.final_step:
            self.decide(final=True)
        elif (global_step - self.config.decision_warmup_steps) % self.interval == 0:
            self.decide()

    @torch.no_grad()
    def keep_masks(self) -> Masks:
        """The current masks after the final pass (run now if training stopped before it), with the guard rails
        applied once more: masks restored from an older checkpoint may not satisfy them."""
        if not all(bool(g.frozen) for g in self._gates()):
            self.decide(final=True)  # training stopped before the scheduled final pass
        current = current_masks(self.state)
        return enforce_structure(self.state, current, self.proposal()[1], current, self.config)

    # -- logging ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        c = self.config
        counts = {"bmrs_n": 0, "bmrs_n_exact": 0, "bmrs_u8": 0, "bmrs_u4": 0, "snr_lt_1": 0, "mean_lt_0.1": 0}
        metrics, log_sigmas = {}, []
        for kind in (HEADS, NEURONS):
            for layer, gate in enumerate(self.state.gates(kind)):
                if gate is None:
                    continue
                metrics[f"bmrs/layer_{layer}_{kind}_kept"] = int(gate.mask.sum())
                mu, sigma = full_tensor(gate.mu.detach()).double()[gate.mask], gate.sigma().double()[gate.mask]
                bounds = {"lower": c.lower, "upper": c.upper}
                exact = delta_f_normal(mu, sigma, prior_sigma=c.prior_sigma, **bounds)
                counts["bmrs_n_exact"] += int((exact >= 0).sum())
                counts["bmrs_n"] += int((exact + (_HALF_LOG_2PI if c.code_parity else 0.0) >= 0).sum())
                for p1 in (8, 4):
                    counts[f"bmrs_u{p1}"] += int((delta_f_uniform(mu, sigma, p1=p1, p2=c.p2, **bounds) >= 0).sum())
                counts["snr_lt_1"] += int((truncated_lognormal_snr(mu, sigma, **bounds) < 1).sum())
                counts["mean_lt_0.1"] += int((truncated_lognormal_mean(mu, sigma, **bounds) < 0.1).sum())
                log_sigmas.append(full_tensor(gate.log_sigma.detach())[gate.mask].float())
        metrics.update({f"bmrs/would_prune/{rule}": n for rule, n in counts.items()})
        if log_sigmas:
            metrics["bmrs/mean_log_sigma"] = (
                float(torch.cat(log_sigmas).mean()) if torch.cat(log_sigmas).numel() else 0.0
            )
        return metrics
