"""Prune-while-fine-tuning benchmark: every target-based method on the target schedule, against the peer.

The setting of `quality_benchmark.py` (the embedded pretrained MiniLM-L6 fine-tuned on the embedded tweets, the
same splits, budget and held-out test split), but units are removed *during* fine-tuning by the schedule of
`TargetConfig` (default: cubic from 20 % to 70 % of the optimizer steps) and the rest of the run fine-tunes the
pruned model. One training run per (method, target, seed); the finalized model is scored on the test split.

The peer, Torch-Pruning's group Taylor importance, gets the same schedule and recovery budget: at each pruning event
Torch-Pruning prunes a copy of the current model (units the schedule removed are zeroed, so it removes them first) to
the scheduled sparsity with the gradients of 256 training examples, and the units it removed become the mask (see
`TorchPruningMethod`). The comparison therefore measures the criterion, not the schedule.

BMRS (`--methods BMRS_N BMRS_U-4`) prunes during the same fine-tuning to its own stopping point, with the same guard
rails. The dense rows are this benchmark's own `dense` runs when it has them (`--methods dense`, needed for other
training-set sizes), else the quality benchmark's (same data, budget and seeds). Finished runs are appended to
`benchmarks/results/schedule_runs.jsonl`; an interrupted benchmark continues where it stopped, and `--report_only`
rewrites the section of BENCHMARKS.md.

    python benchmarks/schedule_benchmark.py                       # every row (about 5 min per run, 2 idle cores)
    python benchmarks/schedule_benchmark.py --train_samples 64 --eval_samples 32 --test_samples 64 --max_steps 6 \\
        --sparsities 0.5 --seeds 0 --methods magnitude --results_dir /tmp/sched --output_md /tmp/B.md   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from common import (
    BMRS_VARIANTS,
    ROOT,
    Variant,
    cached_model_dir,
    environment,
    finalized_record,
    fit,
    mean_sd,
    save_model_atomically,
    sentiment_splits,
    test_metrics,
)
from torch_pruning_peer import MAX_LAYER_RATIO, prune_to_sparsity
from transformers import DataCollatorWithPadding

import hf_prune
from hf_prune.architectures import transformer_blocks
from hf_prune.configs import TargetConfig
from hf_prune.constants import GATE_NAME, HEADS, NEURONS
from hf_prune.methods.base import TargetMethod
from hf_prune.registry import register_method


METHODS = ("bingo", "taylor", "magnitude", "random", "torch_pruning_taylor")
# rows other than a plain method, by name (run with --methods NAME)
BMRS_ROWS = {name: Variant("bmrs", fields) for name, fields in BMRS_VARIANTS.items()}
# BMRS with an end phase: decisions every sixth of the steps until prune_end, then the masks are frozen and the rest of
# the run fine-tunes (the main BMRS rows decide once per epoch, the last decision at the end of training)
BMRS_END_PHASE = {"BMRS_N_end": Variant("bmrs", BMRS_VARIANTS["BMRS_N"])}
VARIANTS = {
    "bingo_second_order": Variant("bingo", {"prior": "second_order"}),
    "taylor_normalized": Variant("taylor", {"normalize_layers": True}),
    "bingo_one_shot": Variant("bingo", {"schedule": "one_shot"}),
    "bingo_proportional": Variant("bingo", {"kind_budget": "proportional"}),
    "taylor_proportional": Variant("taylor", {"kind_budget": "proportional"}),
    # distilled from the dense model fine-tuned with the same seed and budget
    "bingo_kd": Variant("bingo", distillation_weight=0.5, distillation_temperature=2.0),
    "BMRS_N_kd": Variant("bmrs", BMRS_VARIANTS["BMRS_N"], distillation_weight=0.5, distillation_temperature=2.0),
}
ROWS = {**BMRS_ROWS, **BMRS_END_PHASE, **{name: Variant(name) for name in METHODS}, **VARIANTS}  # in report order
TITLES = {
    "dense": "dense (no pruning)",
    "bingo": "BINGO",
    "taylor": "Taylor",
    "magnitude": "magnitude",
    "random": "random",
    "torch_pruning_taylor": "Torch-Pruning, group Taylor (same schedule)",
    "bingo_second_order": "BINGO, second-order prior (ablation)",
    "taylor_normalized": "Taylor, normalised per layer (ablation)",
    "bingo_one_shot": "BINGO, one event at prune_end (schedule ablation)",
    "bingo_proportional": "BINGO, each kind the target share of its parameters (ablation)",
    "taylor_proportional": "Taylor, each kind the target share of its parameters (ablation)",
    "bingo_kd": "BINGO + distillation from the dense fine-tuned model (α 0.5, T 2)",
    "BMRS_N_end": "BMRS_N, decisions until prune_end, then frozen masks (ablation)",
    "BMRS_N_kd": "BMRS_N + distillation from the dense fine-tuned model (α 0.5, T 2)",
}
TRAINING_KEYS = ("train_samples", "test_samples", "epochs", "max_steps", "batch_size", "max_length", "learning_rate")
SCHEDULE_KEYS = ("schedule", "prune_start", "prune_end")


# -- the peer as a target method -------------------------------------------------------------------------------------
@dataclass
class TorchPruningConfig(TargetConfig):
    """Torch-Pruning's group Taylor importance, called at each event of the schedule (benchmark only)."""

    method = "torch_pruning_taylor"


class TorchPruningMethod(TargetMethod):
    """`select(sparsity)` asks Torch-Pruning which heads and neurons to remove from a copy of the current model."""

    calibration: list[dict] = []  # training batches for the gradients; set by the benchmark

    def select(self, sparsity: float):
        model = self.model
        dense = type(model)(model.config)
        state = {k: v for k, v in model.state_dict().items() if GATE_NAME not in k}
        dense.load_state_dict(state)
        blocks, gated = transformer_blocks(dense, self.state.spec), self.state.layers
        with torch.no_grad():  # removed units read as zero weights, so Torch-Pruning takes them first
            for block, layer in zip(blocks, gated):
                attention, width = block.attention.self, self.state.head_dim
                for head in (~layer.head_gate.mask).nonzero().flatten().tolist():
                    rows = slice(head * width, (head + 1) * width)
                    for projection in (attention.query, attention.key, attention.value):
                        projection.weight[rows] = 0
                        projection.bias[rows] = 0
                    block.attention.output.dense.weight[:, rows] = 0
                for neuron in (~layer.neuron_gate.mask).nonzero().flatten().tolist():
                    block.intermediate.dense.weight[neuron] = 0
                    block.intermediate.dense.bias[neuron] = 0
                    block.output.dense.weight[:, neuron] = 0
        with torch.enable_grad():  # finalize runs under no_grad; Torch-Pruning's Taylor needs gradients
            pruned, _ = prune_to_sparsity(dense, "torch_pruning_taylor", sparsity, self.calibration)
        keep = {HEADS: [], NEURONS: []}
        for before, after in zip(blocks, transformer_blocks(pruned, self.state.spec)):
            keep[NEURONS].append(_kept(before.intermediate.dense.weight, after.intermediate.dense.weight, 1))
            keep[HEADS].append(
                _kept(before.attention.self.query.weight, after.attention.self.query.weight, self.state.head_dim)
            )
        return {k: [m & g.mask.cpu() for m, g in zip(keep[k], self.state.gates(k))] for k in keep}


def _kept(original: torch.Tensor, pruned: torch.Tensor, width: int) -> torch.Tensor:
    """Which units (blocks of `width` rows) of `original` survive in `pruned` (rows kept in order)."""
    units = original.shape[0] // width
    mask = torch.zeros(units, dtype=torch.bool)
    if pruned.shape[0]:
        a = original.detach().reshape(units, -1).float()
        b = pruned.detach().reshape(pruned.shape[0] // width, -1).float()
        mask[torch.cdist(b, a).argmin(dim=1)] = True
    return mask


register_method(TorchPruningConfig, TorchPruningMethod)


# -- runs ------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=["dense", *ROWS],
        help="'dense': a plain fine-tune with the same budget (default: the quality benchmark's dense runs); BMRS "
        "variants prune to their own stopping point, with the same guard rails",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--schedule", default="cubic", choices=("cubic", "one_shot"))
    parser.add_argument("--prune_start", type=float, default=0.2)
    parser.add_argument("--prune_end", type=float, default=0.7)
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--eval_samples", type=int, default=500)
    parser.add_argument("--test_samples", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--output_md", default=str(ROOT / "BENCHMARKS.md"))
    return parser.parse_args(argv)


def variant_of(name: str) -> Variant:
    """The row's method and settings (a plain method runs as itself)."""
    return ROWS.get(name, Variant(name))


def config_class_of(name: str) -> type:
    return hf_prune.registry.get_method(variant_of(name).method).config_class


def config_for(name: str, args, target: float, neurons: int) -> hf_prune.PruningConfig:
    """Every run with the same guard rails as the quality benchmark; methods that take a target also get the same
    schedule. `name` is a registered method, a BMRS variant or an ablation variant."""
    config_class = config_class_of(name)
    common = dict(min_heads_per_layer=1, min_neurons_per_layer=round((1 - MAX_LAYER_RATIO) * neurons))
    if issubclass(config_class, TargetConfig):
        common.update(
            target_sparsity=target, schedule=args.schedule, prune_start=args.prune_start, prune_end=args.prune_end
        )
    if name in BMRS_END_PHASE:
        steps = args.max_steps if args.max_steps > 0 else math.ceil(args.train_samples / args.batch_size) * args.epochs
        common.update(pruning_interval=max(1, int(steps) // 6), finetune_steps=round((1 - args.prune_end) * steps))
    return config_class(**{**common, **variant_of(name).pruning})


def calibration_batches(splits, tokenizer, size: int = 256, batch: int = 32) -> list[dict]:
    """The first `size` training examples in batches: the gradients Torch-Pruning's Taylor importance reads."""
    collator = DataCollatorWithPadding(tokenizer)
    rows = splits["train"].select(range(min(size, len(splits["train"]))))
    return [dict(collator([rows[j] for j in range(i, min(i + batch, len(rows)))])) for i in range(0, len(rows), batch)]


def dense_teacher(seed: int, args, splits, tokenizer) -> torch.nn.Module:
    """The dense model fine-tuned with this seed and budget, trained on first use and cached."""
    folder = cached_model_dir("schedule", run_key(args, "dense", None, seed))
    if not folder.exists():
        with tempfile.TemporaryDirectory() as workdir:
            trainer, _ = fit(None, args, splits, tokenizer, seed, workdir)
        save_model_atomically(trainer.model, folder)
    return transformers.AutoModelForSequenceClassification.from_pretrained(folder)


def run_one(method: str, target: float, seed: int, args, splits, tokenizer, neurons: int, workdir: str) -> dict:
    config = None if method == "dense" else config_for(method, args, target, neurons)
    distillation = variant_of(method).distillation()
    teacher = dense_teacher(seed, args, splits, tokenizer) if distillation else None
    trainer, seconds = fit(config, args, splits, tokenizer, seed, workdir, teacher=teacher, **distillation)
    record = {"sparsity": 0.0, "flops_ratio": 1.0}
    if config is not None:
        record = finalized_record(trainer)
        record.pop("layers")
    result = {"method": method, "seed": seed, "target": target, "train_seconds": seconds, **record}
    result.update(test_metrics(trainer, splits))
    print(json.dumps(result), flush=True)
    return result


def run_key(args, method: str, target: float, seed: int) -> dict:
    return {
        "method": method,
        "target": target,
        "seed": seed,
        **{k: getattr(args, k) for k in (*TRAINING_KEYS, *SCHEDULE_KEYS)},
    }


def dense_rows(args, rows: list[dict]) -> list[dict]:
    """This benchmark's own dense runs, else the quality benchmark's with the same data and budget."""
    own = [r for r in rows if r["method"] == "dense"]
    if own:
        return own
    path = Path(args.results_dir) / "quality_runs.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        key = entry["key"]
        if key["run"] == "plain" and all(key.get(k) == getattr(args, k) for k in TRAINING_KEYS):
            rows += [r for r in entry["rows"] if r["method"] == "dense" and r["seed"] in args.seeds]
    return rows


# -- report ----------------------------------------------------------------------------------------------------------
def markdown(args, rows: list[dict], dense: list[dict], raw: str) -> str:
    budget = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.epochs:g} epochs"
    lines = [
        "## Prune while fine-tuning: every target-based method on the schedule, with the peer"
        + ("" if args.train_samples == 2000 else f" ({args.train_samples} training examples)"),
        "",
        f"Pretrained MiniLM-L6 fine-tuned on {args.train_samples} tweets, {budget}, batch {args.batch_size}, lr "
        f"{args.learning_rate:g}, {args.max_length} tokens, as in the quality section. Units are removed during "
        f"fine-tuning on the `{args.schedule}` schedule from {args.prune_start:.0%} to {args.prune_end:.0%} of the "
        "optimizer steps; the remaining steps fine-tune the pruned model (same optimizer and learning-rate schedule). "
        f"Test accuracy and macro-F1 (%) of the finalized model on {args.test_samples} held-out tweets; mean ± sd over "
        "the seeds that have finished (the seed count is in the last column). Same guard rails for all: at least one "
        "head per layer, at most 90 % of a layer's neurons. Δ vs dense: the mean difference to the dense run of the same "
        "seed (points). Train times were taken while other jobs shared the 2 cores: compare them within a row group "
        "only; the overhead section is the controlled measurement.",
        "",
        "| method | target | test accuracy | Δ vs dense | test macro-F1 | prunable removed | FLOPs | train time (s) | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense_by_seed = {r["seed"]: r["test_accuracy"] for r in dense}
    if dense:
        lines.append(
            f"| {TITLES['dense']} | 0 % | {mean_sd([r['test_accuracy'] for r in dense])} | – | "
            f"{mean_sd([r['test_macro_f1'] for r in dense])} | 0 % | 1.00× | "
            f"{mean_sd([r['train_seconds'] for r in dense], 1, 0)} | {len(dense)} |"
        )
    for target in [None, *sorted({r["target"] for r in rows if r["target"] is not None})]:
        for method in ROWS:
            cell = [r for r in rows if r["method"] == method and r["target"] == target]
            if not cell:
                continue
            accuracy = [r["test_accuracy"] for r in cell]
            paired = [r["test_accuracy"] - dense_by_seed[r["seed"]] for r in cell if r["seed"] in dense_by_seed]
            delta = f"{100 * statistics.fmean(paired):+.1f}" if len(paired) == len(cell) else "–"
            lines.append(
                f"| {TITLES.get(method, method)} | {'own' if target is None else f'{target:.0%}'} | {mean_sd(accuracy)} | "
                f"{delta} | "
                f"{mean_sd([r['test_macro_f1'] for r in cell])} | {mean_sd([r['sparsity'] for r in cell])} % | "
                f"{mean_sd([r['flops_ratio'] for r in cell], 1, 2)}× | "
                f"{mean_sd([r['train_seconds'] for r in cell], 1, 0)} | {len(cell)} |"
            )
    command = ["python", "benchmarks/schedule_benchmark.py", "--seeds", *map(str, args.seeds)]
    command += ["--sparsities", *map(str, args.sparsities), "--methods", *args.methods]
    for name in (*TRAINING_KEYS, *SCHEDULE_KEYS, "eval_samples", "threads"):
        command += [f"--{name}", str(getattr(args, name))]
    lines += [
        "",
        f"Reproduce: `{shlex.join(command)}`",
        "",
        f"Measured on {environment()}, {args.threads} threads. Raw rows: `{raw}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from common import write_section
    from quality_benchmark import RunLog

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results_dir)
    log = RunLog(results / "schedule_runs.jsonl")
    neurons = None
    splits = tokenizer = None
    rows: list[dict] = []
    for seed in args.seeds:
        for target in args.sparsities:
            for method in args.methods:
                own_point = method == "dense" or not issubclass(config_class_of(method), TargetConfig)
                if own_point and target != args.sparsities[0]:
                    continue  # one run per seed: no target
                key = run_key(args, method, None if own_point else target, seed)
                found = log.find(key)
                if found is None and not args.report_only:
                    if splits is None:
                        splits, tokenizer = sentiment_splits(
                            args.train_samples, args.eval_samples, args.test_samples, args.max_length, seed=0
                        )
                        from common import pretrained_path

                        neurons = transformers.AutoConfig.from_pretrained(pretrained_path()).intermediate_size
                        TorchPruningMethod.calibration = calibration_batches(splits, tokenizer)
                    with tempfile.TemporaryDirectory() as workdir:
                        point = None if own_point else target
                        found = [run_one(method, point, seed, args, splits, tokenizer, neurons, workdir)]
                    log.add(key, found)
                rows.extend(found or [])
                if rows and not args.report_only:
                    report(args, rows, results, write_section)
    report(args, rows, results, write_section)


def report(args, rows, results: Path, write_section) -> None:
    if not rows:
        print("nothing recorded for these settings")
        return
    raw = results / ("schedule.json" if args.train_samples == 2000 else f"schedule-{args.train_samples}.json")
    raw.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    output = Path(args.output_md)
    raw_ref = Path(os.path.relpath(raw, output.resolve().parent)).as_posix()
    section = "schedule" if args.train_samples == 2000 else f"schedule-{args.train_samples}"
    pruned = [r for r in rows if r["method"] != "dense"]
    write_section(section, markdown(args, pruned, dense_rows(args, rows), raw_ref), output)


if __name__ == "__main__":
    main()
