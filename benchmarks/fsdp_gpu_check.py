"""FSDP2 through the Trainer/Accelerate route, on the GPUs of this machine: a tiny random Llama is pruned by
`PruningTrainer` (magnitude to 30 % of the prunable parameters by default, bf16 mixed precision, a few steps) with
`fsdp=True, fsdp_config={"fsdp_version": 2, ...}`, then finalized, saved with `trainer.save_model`, reloaded with
`hf_prune.AutoPrunedModel`, and the reloaded logits are compared with the finalized model's. Run
`python benchmarks/fsdp_gpu_check.py` on a machine with at least one CUDA GPU: it relaunches itself with torchrun on
every visible GPU (`--processes N` to choose; one GPU gives world size 1) and prints one JSON object (`"ok"` says
whether every check passed; exit status 0 when it did). Without a CUDA device it says so and exits with status 2;
`--allow-cpu` runs the same script on two CPU processes to check its plumbing only (there the Trainer falls back to
DDP, so nothing is sharded). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="magnitude", help="pruning method (default: magnitude)")
    parser.add_argument("--target", type=float, default=0.3, help="target sparsity of target-based methods")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps")
    parser.add_argument("--processes", type=int, default=None, help="processes (default: one per visible GPU)")
    parser.add_argument("--output", default=None, help="working folder (default: a new temporary folder)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds before the launch is stopped")
    parser.add_argument("--allow-cpu", action="store_true", help="plumbing check on 2 CPU processes (DDP, no FSDP)")
    return parser.parse_args()


def launch(args: argparse.Namespace) -> int:
    """Check for GPUs, start the workers with torchrun, print the JSON result of rank 0."""
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    if not cuda and not args.allow_cpu:
        print(
            "fsdp_gpu_check: no CUDA device on this machine. The Trainer/Accelerate FSDP2 route needs GPUs (with "
            "use_cpu=True the Trainer wraps the model in DDP instead); nothing was run. Use --allow-cpu to check "
            "this script's plumbing on CPU.",
            file=sys.stderr,
        )
        return 2
    processes = args.processes or (torch.cuda.device_count() if cuda else 2)
    output = Path(args.output or tempfile.mkdtemp(prefix="fsdp_gpu_check_"))
    output.mkdir(parents=True, exist_ok=True)
    forwarded = ["--method", args.method, "--target", str(args.target), "--steps", str(args.steps)]
    forwarded += ["--output", str(output)] + (["--allow-cpu"] if args.allow_cpu else [])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += [str(Path(__file__).resolve()), *forwarded]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    try:
        run = subprocess.run(command, env=env, timeout=args.timeout, check=False)
        returncode = run.returncode
    except subprocess.TimeoutExpired:
        returncode = "timeout"
    result_file = output / "result.json"
    if returncode != 0 or not result_file.exists():
        print(json.dumps({"ok": False, "returncode": returncode, "output": str(output)}, indent=2))
        return 1
    result = json.loads(result_file.read_text())
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


def worker(args: argparse.Namespace) -> None:
    """One process of the run: train with PruningTrainer under FSDP2, finalize, save, reload, compare."""
    import accelerate
    import datasets
    import torch
    import torch.distributed as dist
    import transformers as tf
    from transformers import TrainerCallback

    import hf_prune
    from hf_prune import PruningArguments, PruningTrainer
    from hf_prune.distributed import is_dtensor, is_fsdp2
    from hf_prune.mapping import gate_parameters, get_pruning_state, masks_applied
    from hf_prune.record import find_record
    from hf_prune.registry import get_method

    cuda = torch.cuda.is_available()
    output = Path(args.output)
    config = tf.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (256, 1), generator=generator) + torch.arange(16)  # sequences that count up
    train = datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})

    config_class = get_method(args.method).config_class
    fields = getattr(config_class, "__dataclass_fields__", {})
    pruning = config_class(target_sparsity=args.target) if "target_sparsity" in fields else config_class()

    class ShardingProbe(TrainerCallback):
        """What the model looks like while it trains: sharded, and gate parameters sharded with it."""

        seen: dict | None = None

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if self.seen is None:
                weight = model.get_input_embeddings().weight
                self.seen = {
                    "fsdp2_during_training": is_fsdp2(model),
                    "weights_sharded": is_dtensor(weight),
                    "gate_parameters_sharded": [is_dtensor(p) for p in gate_parameters(model)][:4],
                    "model_class_during_training": type(model).__name__,
                }

    probe = ShardingProbe()
    training = PruningArguments(
        output_dir=str(output / "run"),
        max_steps=args.steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        bf16=cuda,
        fsdp=True,
        fsdp_config={
            "fsdp_version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
            "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT",
        },
        use_cpu=not cuda,
        ddp_backend=None if cuda else "gloo",
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        seed=0,
        disable_tqdm=True,
    )
    trainer = PruningTrainer(
        model=model, args=training, pruning_config=pruning, train_dataset=train, callbacks=[probe]
    )
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started

    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    batch = ids[:2].to(device)
    gated = trainer.pruned_model
    state = get_pruning_state(gated)
    keep = state.method.keep_masks()  # collective under FSDP2 (magnitude gathers weights)
    gated.eval()
    with torch.no_grad(), masks_applied(state, keep):
        gated_logits = gated(input_ids=batch).logits.float().cpu()
    pruned = trainer.finalize(measure_latency=False).eval()
    with torch.no_grad():
        pruned_logits = pruned(input_ids=batch).logits.float().cpu()
    kept = find_record(pruned).kept
    digest = hashlib.sha256(json.dumps([kept["heads"], kept["neurons"]], sort_keys=True).encode()).hexdigest()
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, digest)
    trainer.save_model(str(output / "pruned"))
    dist.barrier()

    if dist.get_rank() == 0:
        reloaded = hf_prune.AutoPrunedModel.from_pretrained(str(output / "pruned")).to(device).eval()
        with torch.no_grad():
            reloaded_logits = reloaded(input_ids=batch).logits.float().cpu()
        summary = hf_prune.pruning_summary(pruned)
        losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
        reload_diff = float((reloaded_logits - pruned_logits).abs().max())
        seen = probe.seen or {}
        checks = {
            "sharded_while_training": bool(seen.get("fsdp2_during_training") and seen.get("weights_sharded"))
            or not cuda,
            "finalized_model_is_plain": not is_fsdp2(pruned)
            and not any(is_dtensor(p) for p in pruned.parameters())
            and not type(pruned).__name__.startswith("FSDP"),
            "ranks_agree": len(set(everyone)) == 1,
            "sparsity_near_target": "target_sparsity" not in fields or abs(summary["sparsity"] - args.target) < 0.05,
            "reload_matches": reload_diff < 1e-4,
        }
        result = {
            "ok": all(checks.values()),
            "checks": checks,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu (plumbing check: DDP, not FSDP)",
            "world_size": dist.get_world_size(),
            "versions": {
                "torch": torch.__version__,
                "transformers": tf.__version__,
                "accelerate": accelerate.__version__,
            },
            "method": args.method,
            "steps": trainer.state.global_step,
            "train_seconds": round(train_seconds, 2),
            "losses": losses,
            **seen,
            "finalized_class": type(pruned).__name__,
            "finalized_dtype": str(next(pruned.parameters()).dtype),
            "sparsity": round(summary["sparsity"], 4),
            "parameters": {"before": summary["before"]["parameters"], "after": summary["after"]["parameters"]},
            "kept_heads": summary["kept_heads"],
            "kept_neurons_per_layer": {k: len(v) for k, v in summary["kept_neurons"].items()},
            "max_abs_logits_reloaded_vs_finalized": reload_diff,
            # informative: the gated model ran under bf16 mixed precision, the finalized copy holds the fp32 weights
            "max_abs_logits_gated_vs_finalized": float((gated_logits - pruned_logits).abs().max()),
        }
        (output / "result.json").write_text(json.dumps(result, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    arguments = parse_args()
    if "LOCAL_RANK" in os.environ:
        worker(arguments)
    else:
        sys.exit(launch(arguments))
