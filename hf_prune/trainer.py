"""`PruningTrainer` and `PruningArguments`: fine-tune and prune in one `Trainer` run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .arguments import PruningArguments
from .callbacks import PruningScheduleCallback
from .configs import CONFIG_NAME, PruningConfig
from .distillation import check_hidden_teacher, check_teacher, distillation_terms, hidden_state_terms
from .evaluation import mask_evaluator
from .export import PrunedExportMixin
from .finalize import finalize_model
from .latency import measure_latency as measure_latency_ms
from .likelihood_terms import count_likelihood_terms
from .mapping import gate_parameters, gates_bypassed, get_pruning_state, is_prepared, prepare_model_for_pruning
from .methods.base import StepContext
from .methods.search import MaskEvaluator
from .model_card import set_card_info, write_model_card
from .report import pruning_metrics, pruning_summary


logger = logging.getLogger(__name__)


_TOKEN_LEVEL_HEADS = (
    "ForCausalLM",
    "LMHeadModel",
    "ForMaskedLM",
    "ForTokenClassification",
    "ForConditionalGeneration",
)


def _normalises_by_num_items(model: nn.Module) -> bool:
    """Whether the model's loss is a sum over label tokens divided by `num_items_in_batch` (token-level heads)."""
    return type(model).__name__.endswith(_TOKEN_LEVEL_HEADS)


def _constant(step: int) -> float:
    return 1.0


class PruningTrainer(Trainer):
    """A `Trainer` that prunes attention heads and MLP neurons while it fine-tunes.

    Args:
        model: a model of a supported family. If it has no gates yet and `pruning_config` is given, it is prepared
            with `prepare_model_for_pruning`.
        args (`PruningArguments` or `TrainingArguments`): plain `TrainingArguments` are converted.
        pruning_config (`PruningConfig`, *optional*): what to prune and how (e.g. `RandomConfig(target_sparsity=0.5)`).
        teacher_model (`nn.Module`, *optional*): a dense model of the same task and tokenizer to distil from while
            units are removed (needs `args.distillation_weight > 0` or `args.distillation_hidden_weight > 0`); e.g.
            the dense model fine-tuned on the same data, or the pretrained model itself. It is frozen, kept in eval
            mode and moved to the training device.
        **kwargs: everything `transformers.Trainer` accepts.

    Example:

    ```python
    trainer = PruningTrainer(model=model, args=PruningArguments(output_dir="out"),
                             pruning_config=MagnitudeConfig(target_sparsity=0.5), train_dataset=train)
    trainer.train()
    pruned = trainer.finalize()
    pruned.save_pretrained("out/pruned")
    ```
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        pruning_config: PruningConfig | None = None,
        teacher_model: nn.Module | None = None,
        **kwargs,
    ):
        if args is None:
            args = PruningArguments(output_dir="tmp_trainer")
        elif not isinstance(args, PruningArguments):
            args = PruningArguments(**{f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init})
        if model is None:
            raise ValueError("PruningTrainer needs a `model` (model_init is not supported).")
        if not is_prepared(model):
            if pruning_config is None:
                raise ValueError(
                    "Pass `pruning_config=` (e.g. `MagnitudeConfig(...)`), or a model already prepared "
                    "with `prepare_model_for_pruning`."
                )
            prepare_model_for_pruning(model, pruning_config)
        elif pruning_config is not None and pruning_config != get_pruning_state(model).config:
            raise ValueError("The model was prepared with a different pruning config than `pruning_config`.")
        if args.distils and teacher_model is None:
            raise ValueError(
                f"distillation_weight={args.distillation_weight} and distillation_hidden_weight="
                f"{args.distillation_hidden_weight} need `teacher_model=`: the dense model to distil from (e.g. the "
                "dense model fine-tuned on the same data). Or set both to 0."
            )
        if teacher_model is not None and not args.distils:
            raise ValueError(
                "`teacher_model` is given but distillation_weight is 0 (and distillation_hidden_weight too): set e.g. "
                "distillation_weight=0.5."
            )
        if teacher_model is not None:
            if args.distillation_weight > 0:
                check_teacher(model, teacher_model)
            if args.distillation_hidden_weight > 0:
                check_hidden_teacher(model, teacher_model)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, PruningScheduleCallback) for c in callbacks):
            # first, so the user's callbacks see each step's pruning decisions
            callbacks.insert(0, PruningScheduleCallback(finalize_on_train_end=args.finalize_on_train_end))
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        if self.model_accepts_loss_kwargs and not _normalises_by_num_items(model) and self.compute_loss_func is None:
            # The Trainer assumes a model taking **kwargs divides its loss by `num_items_in_batch`, and then skips
            # the division by the accumulation steps and multiplies by the process count. Sequence and image
            # classification heads take **kwargs but return a plain mean, so that would scale their gradients by
            # the accumulation steps and the number of processes.
            self.model_accepts_loss_kwargs = False
        self.pruning_config = get_pruning_state(model).config
        self._task_loss_sum, self._task_loss_steps = 0.0, 0.0
        self._pruning_loss_sum = 0.0
        self._pruning_loss_count = 0
        self._distillation_sum, self._distillation_steps = 0.0, 0.0
        self._hidden_sum = 0.0
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            if getattr(teacher_model, "hf_device_map", None) is None:  # a model placed with device_map stays put
                teacher_model.to(self.args.device)

    # -- the pieces that need the trainer ------------------------------------------------------------------------
    @property
    def pruned_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the gate parameters moved to their own group (own lr, no weight decay)."""
        optimizer = super().create_optimizer(model)
        gates = {id(p) for p in gate_parameters(self.pruned_model)}
        if not gates or any(group.get("hf_prune_gates") for group in optimizer.param_groups):
            return optimizer
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in gates]
        method = get_pruning_state(self.pruned_model).method
        lr = self.args.gate_learning_rate or method.gate_learning_rate(self.state.max_steps) or self.args.learning_rate
        optimizer.add_param_group(
            {"params": gate_parameters(self.pruned_model), "lr": lr, "weight_decay": 0.0, "hf_prune_gates": True}
        )
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if self.args.gate_lr_scheduler_type == "constant" and lambdas is not None:
            for i, group in enumerate(scheduler.optimizer.param_groups):
                if group.get("hf_prune_gates"):
                    lambdas[i] = _constant
        return scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")  # the Trainer may pop them
        distilling = model.training and self.teacher_model is not None
        if distilling and self.args.distillation_hidden_weight > 0:
            inputs = {**inputs, "output_hidden_states": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and is_prepared(self.pruned_model):
            self._task_loss_sum += self._step_share(loss, num_items_in_batch)
            self._task_loss_steps += 1 / self.current_gradient_accumulation_steps
        if distilling:
            kl, hidden_error = self._distillation_loss(inputs, labels, outputs, num_items_in_batch)
            if kl is not None:
                weight = self.args.distillation_weight
                loss = (1 - weight) * loss + weight * kl.to(loss.dtype)
            if hidden_error is not None:
                loss = loss + self.args.distillation_hidden_weight * hidden_error.to(loss.dtype)
            if is_prepared(self.pruned_model):  # gradient statistics are for the loss trained
                get_pruning_state(self.pruned_model).method.observe_training_loss(loss)
        if model.training and is_prepared(self.pruned_model) and self.args.pruning_loss_weight > 0:
            extra = get_pruning_state(self.pruned_model).method.loss(self._num_likelihood_terms())
            if extra is not None:
                extra = self.args.pruning_loss_weight * extra
                self._pruning_loss_sum += float(extra.detach())
                self._pruning_loss_count += 1
                # The term must count once per optimizer step. The Trainer divides each micro-batch loss by the
                # accumulation steps unless the loss was already normalised by `num_items_in_batch`; match that.
                # Gradients of this rank-identical term are averaged by DDP, so no process-count factor is needed.
                if self._loss_scaled_for_ga(num_items_in_batch):
                    extra = extra / self.current_gradient_accumulation_steps
                loss = loss + extra.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _distillation_loss(self, inputs, labels, outputs, num_items_in_batch):
        """The KL to the teacher over the task loss's terms and the hidden-state error over the same terms, each
        normalised the way the Trainer normalises that loss; `None` for a term whose weight is 0, so that β alone pays
        for no full-vocabulary softmax."""
        with torch.no_grad():
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            teacher_outputs = self.teacher_model(**teacher_inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
        shift = getattr(self, "_loss_shifts_labels", False)
        self._distillation_steps += 1 / self.current_gradient_accumulation_steps
        kl = error = None
        if self.args.distillation_weight > 0:
            teacher_logits = teacher_outputs["logits"] if isinstance(teacher_outputs, dict) else teacher_outputs[0]
            temperature = self.args.distillation_temperature
            total, count = distillation_terms(logits, teacher_logits, labels, temperature, shift)
            kl = self._normalised(total, count, num_items_in_batch)
            self._distillation_sum += self._step_share(kl, num_items_in_batch)
        if self.args.distillation_hidden_weight > 0:
            total, count = hidden_state_terms(
                outputs["hidden_states"],
                teacher_outputs["hidden_states"],
                labels,
                inputs.get("attention_mask"),
                token_level=logits.dim() > 2,
                shift_labels=shift,
            )
            error = self._normalised(total, count, num_items_in_batch)
            self._hidden_sum += self._step_share(error, num_items_in_batch)
        return kl, error

    def _normalised(self, total: torch.Tensor, count: int, num_items_in_batch) -> torch.Tensor:
        """A sum over the task loss's terms, divided the way the Trainer divides that loss."""
        if self._loss_scaled_for_ga(num_items_in_batch) and num_items_in_batch is not None:
            # the task loss is a sum over the step's terms / num_items_in_batch, times the process count when the
            # count is taken over all processes (Trainer.compute_loss): the same here
            value = total / num_items_in_batch
            if self.args.average_tokens_across_devices:
                value = value * self.accelerator.num_processes
            return value
        return total / max(count, 1)

    def _step_share(self, value: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """A micro-batch's term in the units of the logged `loss` (per optimizer step, summed over its micro-batches),
        kept on the device so that no step waits for it."""
        part = value.detach().float().mean()
        if not self._loss_scaled_for_ga(num_items_in_batch):
            part = part / self.current_gradient_accumulation_steps
        return part

    def _mean_over_processes(self, value):
        return self.accelerator.reduce(value, "mean") if self.args.world_size > 1 else value

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if is_prepared(self.pruned_model):
            get_pruning_state(self.pruned_model).method.after_backward(self._step_context(), model, inputs)
        return loss

    def _step_context(self) -> StepContext:
        """What a method sees of this run at one micro-batch (see `hf_prune.methods.base.StepContext`)."""

        def compute_loss(model, inputs):
            with self.compute_loss_context_manager():
                return self.compute_loss(model, self._prepare_inputs(dict(inputs)), return_outputs=True)

        evaluator = self.mask_evaluator() if self.eval_dataset is not None else None
        return StepContext(
            self.state.global_step,
            self.state.max_steps,
            self.args.seed,
            self.args.process_index,
            compute_loss,
            evaluator,
        )

    def mask_evaluator(self) -> MaskEvaluator:
        """The metric of the gated model under other keep-masks, on `eval_dataset` (`metric_for_best_model`, else the
        evaluation loss): what `hf_prune.methods.search.search_max_prune` needs."""
        return mask_evaluator(self)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if is_prepared(self.pruned_model):
            logs = {**logs, **pruning_metrics(self.pruned_model)}  # a copy: callers' metric dicts stay as they were
            if self._pruning_loss_count:
                logs["pruning/loss_term"] = self._pruning_loss_sum / self._pruning_loss_count
                self._pruning_loss_sum, self._pruning_loss_count = 0.0, 0
            if self._task_loss_steps:
                # mean per optimizer step since the last log, averaged over processes like the logged `loss`
                task = self._task_loss_sum / self._task_loss_steps
                logs["pruning/task_loss"] = float(self._mean_over_processes(task))
                self._task_loss_sum, self._task_loss_steps = 0.0, 0.0
        if self._distillation_steps:
            if self.args.distillation_weight > 0:
                kl = self._distillation_sum / self._distillation_steps
                logs["distillation/kl"] = float(self._mean_over_processes(kl))
            if self.args.distillation_hidden_weight > 0:
                hidden = self._hidden_sum / self._distillation_steps
                logs["distillation/hidden"] = float(self._mean_over_processes(hidden))
            self._distillation_sum, self._distillation_steps, self._hidden_sum = 0.0, 0.0, 0.0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save and is_prepared(self.pruned_model):
            # gated checkpoints: the config plus what would be kept if the model were finalized now
            self.pruning_config.save_pretrained(output_dir, result=pruning_summary(self.pruned_model))

    def _save_rng_state(self, output_dir: str) -> None:
        # called on every process, like the RNG state: each process saves the method state it alone holds
        super()._save_rng_state(output_dir)
        if is_prepared(self.pruned_model):
            state = get_pruning_state(self.pruned_model).method.process_state()
            if state is not None:
                os.makedirs(output_dir, exist_ok=True)
                torch.save(state, self._process_state_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None or not is_prepared(self.pruned_model):
            return
        path = self._process_state_file(checkpoint)
        method = get_pruning_state(self.pruned_model).method
        if os.path.exists(path):
            method.load_process_state(torch.load(path, map_location="cpu", weights_only=True))
        elif method.process_state() is not None:
            logger.warning(
                "%s is missing (the checkpoint was written by another number of processes?): the pruning method's "
                "statistics since the last event start afresh, so the run does not resume exactly.",
                path,
            )

    def _process_state_file(self, folder: str) -> str:
        return os.path.join(folder, f"hf_prune_process_state_{self.args.process_index}.pt")

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint:
            self._check_checkpoint_config(resume_from_checkpoint)
        self._hf_prune_training = True
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._hf_prune_training = False

    def _check_checkpoint_config(self, checkpoint: str | bool) -> None:
        """Refuse to resume a run whose checkpoint was written with another pruning config."""
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                return  # the Trainer raises its own error
        path = os.path.join(checkpoint, CONFIG_NAME)
        if not os.path.exists(path):
            raise ValueError(f"{checkpoint} has no {CONFIG_NAME}: it was not written by a PruningTrainer run.")
        with open(path) as f:
            saved = json.load(f)
        saved.pop("result", None)
        current = self.pruning_config.to_dict()
        diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if diff:
            details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
            raise ValueError(
                f"Cannot resume from {checkpoint}: it was trained with a different pruning config ({details}). "
                "Resume with the checkpoint's config, or start a new run."
            )

    def finalize(self, evaluate: bool | None = None, measure_latency: bool = True) -> nn.Module:
        """Apply the method's final rule, remove the pruned units and return the smaller model (also set as
        `trainer.model`). The optimizer and scheduler are reset, since their parameters no longer exist. Under FSDP2
        every process gets the same plain, unsharded pruned model (see `hf_prune.finalize_model`).

        Args:
            evaluate (`bool`, *optional*): evaluate on `eval_dataset` before and after pruning, for the model card
                (defaults to whether there is an eval dataset).
            measure_latency (`bool`, defaults to `True`): time the dense and the pruned forward pass (batch 8 × 128
                tokens, median of 20) for the model card.
        """
        if getattr(self, "_hf_prune_training", False):
            raise ValueError(
                "finalize() was called while training is running. Finalize after `train()` returns, or set "
                "`finalize_on_train_end=True` in PruningArguments."
            )
        model = self.pruned_model
        if not is_prepared(model):
            return model
        evaluate = self.eval_dataset is not None if evaluate is None else evaluate
        before = self.evaluate() if evaluate else {}
        latency_before = None
        if measure_latency:
            with gates_bypassed(model):
                latency_before = measure_latency_ms(model)
        model = finalize_model(model)  # a new, unsharded model when `model` is sharded with FSDP2
        self.model = self.model_wrapped = model
        self.optimizer, self.lr_scheduler = None, None
        after = self.evaluate() if evaluate else {}
        latency = None
        if measure_latency:
            device = "cuda" if next(model.parameters()).is_cuda else "cpu"
            latency = {
                "device": device,
                "batch_size": 8,
                "seq_len": 128,
                "repeats": 20,
                "before_ms": latency_before,
                "after_ms": measure_latency_ms(model),
            }
        metrics = {
            key.removeprefix("eval_"): {"before": round(before[key], 4), "after": round(after[key], 4)}
            for key in before
            if key in after and not key.endswith(("_runtime", "_per_second", "epoch")) and key != "epoch"
        }
        set_card_info(model, metrics=metrics or None, latency=latency, training=self._training_summary())
        return model

    def create_model_card(self, *args, **kwargs) -> None:
        """For a finalized model, hf_prune's card (kept units, sizes, latency, metrics before/after); otherwise the
        Trainer's own."""
        model = self.pruned_model
        if is_prepared(model) or not isinstance(model, PrunedExportMixin):
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            readme = os.path.join(self.args.output_dir, "README.md")
            write_model_card(model, self.args.output_dir, existing=readme, repo_id=self.hub_model_id)

    def _training_summary(self) -> dict:
        args = self.args
        summary = {
            "learning_rate": args.learning_rate,
            "gate_learning_rate": args.gate_learning_rate,
            "train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": args.world_size,
            "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
            "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "training_steps": self.state.global_step,
            "epochs": round(self.state.epoch or 0, 2),
            "seed": args.seed,
            "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        }
        return {k: v for k, v in summary.items() if v is not None}

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        # mirrors Trainer.training_step's decision to divide the loss by the accumulation steps
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return self.loss_is_scaled_for_ga
        return (
            self.model_accepts_loss_kwargs and num_items_in_batch is not None
        ) or self.compute_loss_func is not None

    def _num_likelihood_terms(self) -> float | None:
        """The likelihood terms of the training set (examples, or label tokens for token-level heads; see
        `hf_prune.likelihood_terms`), counted once through the training collator with unused columns removed."""
        if getattr(self, "_likelihood_terms_of", None) is not self.train_dataset:
            dataset, collator = self.train_dataset, self.data_collator
            if isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset, description="training")
            else:
                collator = self._get_collator_with_removed_columns(collator, description="training")
            self._likelihood_terms = count_likelihood_terms(
                dataset, collator, shifts_labels=getattr(self, "_loss_shifts_labels", False)
            )
            self._likelihood_terms_of = self.train_dataset
        return self._likelihood_terms
