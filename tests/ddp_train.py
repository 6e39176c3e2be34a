"""Launched by test_distributed.py with `torchrun --nproc_per_node 2` (gloo on CPU): every method trains a few
steps under DDP; all ranks must end with identical masks and identical pruned models, and only rank 0 writes."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from hf_prune import BmrsConfig, PruningArguments, PruningTrainer


sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import FAMILIES, FAMILY, build, dataset, inputs, logits, method_config  # noqa: E402


def digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().numpy().tobytes())
    return h.hexdigest()


def main(output: Path, methods: list[str]) -> None:
    family = FAMILIES[0]
    train = dataset(family, 64)
    report = {}
    for method in methods:
        config = method_config(method, 0.4)
        args = PruningArguments(
            output_dir=str(output / method),
            max_steps=6,
            per_device_train_batch_size=4,
            logging_steps=2,
            save_steps=3,
            use_cpu=True,
            ddp_backend="gloo",
            report_to=[],
            seed=0,
            learning_rate=1e-3,
        )
        trainer = PruningTrainer(model=build(family), args=args, pruning_config=config, train_dataset=train)
        trainer.train()
        pruned = trainer.finalize(measure_latency=False).eval()
        trainer.save_model(str(output / method / "pruned"))
        mine = {
            "digest": digest(pruned),
            "logits": logits(pruned, inputs(family)).tolist(),
            "world": dist.get_world_size(),
        }
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        report[method] = everyone
    if dist.get_rank() == 0:
        (output / "report.json").write_text(json.dumps(report))


WORLD = int(os.environ.get("WORLD_SIZE", 1))


class FirstGradients(TrainerCallback):
    """Records every parameter's gradient (after the DDP all-reduce) before the first optimizer step."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def one_step_arguments(output_dir: Path, average_tokens: bool, **extra) -> PruningArguments:
    """One optimizer step over 8 examples split across the processes, gradients unclipped."""
    return PruningArguments(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=8 // WORLD,
        use_cpu=True,
        ddp_backend="gloo",
        report_to=[],
        seed=0,
        max_grad_norm=0.0,
        average_tokens_across_devices=average_tokens,
        save_strategy="no",
        **extra,
    )


def gradients(output: Path, average_tokens: bool) -> None:
    """One optimizer step over the same 8 examples (8 on one process, or 4 on each of two) with deterministic
    gates: the averaged gradients, task loss and BMRS KL term alike, must not depend on the process count."""
    family = FAMILIES[0]
    train = dataset(family, 8)
    model = build(family)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = BmrsConfig(init_log_sigma=-20.0, init_mu=-0.5)  # sigma ~ 2e-9: the gates are deterministic
    callback = FirstGradients()
    args = one_step_arguments(output / "grads", average_tokens)
    trainer = PruningTrainer(model=model, args=args, pruning_config=config, train_dataset=train, callbacks=[callback])
    trainer.train()
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save(callback.grads, output / f"grads_world{WORLD}_avg{int(average_tokens)}.pt")


def distilled_gradients(output: Path, average_tokens: bool) -> None:
    """The same for a causal LM (loss normalised by `num_items_in_batch`) distilled from a teacher: the mixed task
    loss, KL and hidden-state error must give the same averaged gradients on 1 and 2 processes."""
    family = FAMILY["llama"]  # no dropout
    callback = FirstGradients()
    args = one_step_arguments(
        output / "grads_kd", average_tokens, distillation_weight=0.5, distillation_hidden_weight=1.0
    )
    trainer = PruningTrainer(
        model=build(family),
        args=args,
        pruning_config=method_config("magnitude", 0.3),
        train_dataset=dataset(family, 8),
        teacher_model=build(family, seed=1),
        callbacks=[callback],
    )
    trainer.train()
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save(callback.grads, output / f"grads_kd_world{WORLD}_avg{int(average_tokens)}.pt")


if __name__ == "__main__":
    if sys.argv[2] == "gradients":
        for average in (True, False):
            gradients(Path(sys.argv[1]), average)
            distilled_gradients(Path(sys.argv[1]), average)
    else:
        main(Path(sys.argv[1]), sys.argv[2].split(","))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()  # a clean shutdown: gloo threads alive at exit abort the process
