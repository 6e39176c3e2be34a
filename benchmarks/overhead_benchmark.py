"""Overhead benchmark: wall time and peak memory of `PruningTrainer` with each method against a plain `Trainer`,
same model (the embedded pretrained MiniLM-L6), same data (embedded tweets), same steps and seed.

Each run is a fresh Python process, so its peak resident memory (`ru_maxrss`, CPU) or peak CUDA allocation is its
own. The methods are run in rounds (plain, then each method, then the next round) and the median per method is
reported, so slow drift of a shared machine falls on every method alike. Training time is `trainer.train()` only
(not model loading); pruning is not finalized, so the numbers are the cost of training with the method.

    python benchmarks/overhead_benchmark.py                  # the committed numbers (about 20 min on 2 idle cores)
    python benchmarks/overhead_benchmark.py --steps 2 --rounds 1 --output_md /tmp/BENCHMARKS.md --results /tmp/o.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, command, environment, sentiment_splits, train, training_arguments, write_section


METHODS = ("plain", "magnitude", "random", "taylor", "taylor_refit", "bingo", "bmrs", "bingo_kd")


def one_run(method: str, steps: int, batch_size: int, threads: int) -> dict:
    """Train `steps` optimizer steps with `method` in this process; time and peak memory."""
    import torch

    import hf_prune

    torch.set_num_threads(threads)
    splits, tokenizer = sentiment_splits(steps * batch_size, 32, 32, seed=0)
    configs = {
        "plain": None,
        "magnitude": hf_prune.MagnitudeConfig(),
        "random": hf_prune.RandomConfig(),
        "taylor": hf_prune.TaylorConfig(),
        # + the least-squares refit: input statistics of every gated projection, a solve at each pruning event
        "taylor_refit": hf_prune.TaylorConfig(reconstruct=True),
        "bingo": hf_prune.BingoConfig(),  # the defaults a user gets
        "bmrs": hf_prune.BmrsConfig(),
        "bingo_kd": hf_prune.BingoConfig(),  # + distillation: the cost of the teacher's forward pass
    }
    teacher, distillation = None, {}
    if method == "bingo_kd":
        from common import pretrained_path
        from transformers import AutoModelForSequenceClassification

        teacher = AutoModelForSequenceClassification.from_pretrained(pretrained_path(), num_labels=2)
        distillation = dict(distillation_weight=0.5, distillation_temperature=2.0)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        args = training_arguments(tmp, 1, 0, max_steps=steps, per_device_train_batch_size=batch_size, **distillation)
        trainer, seconds = train(configs[method], splits, tokenizer, args, teacher)
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {"method": method, "seconds": seconds, "steps": trainer.state.global_step, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "overhead.json"))
    parser.add_argument("--output_md", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(one_run(args.worker, args.steps, args.batch_size, args.threads)))
        return

    methods = ["plain", *[m for m in args.methods if m != "plain"]]
    runs = []
    for round_ in range(args.rounds):
        for method in methods:
            began = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    method,
                    "--steps",
                    str(args.steps),
                    "--batch_size",
                    str(args.batch_size),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parent,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]) | {"round": round_})
            print(
                f"round {round_} {method:<10} {runs[-1]['seconds']:.1f} s  peak {runs[-1]['peak_bytes'] / 2**20:.0f} MiB"
                f"  (process {time.perf_counter() - began:.0f} s)",
                flush=True,
            )

    def median(method, key):
        return statistics.median(r[key] for r in runs if r["method"] == method)

    plain = {r["round"]: r["seconds"] for r in runs if r["method"] == "plain"}

    def ratio(method):
        """Median over rounds of the time against the plain run of the same round (drift cancels in a round)."""
        return statistics.median(r["seconds"] / plain[r["round"]] for r in runs if r["method"] == method)

    base_peak = median("plain", "peak_bytes")
    device = (
        "peak CUDA memory allocated"
        if "cuda" in environment().lower()
        else "peak resident memory (RSS) of the process"
    )
    lines = [
        "## Overhead: training with each method against a plain Trainer",
        "",
        f"MiniLM-L6 (pretrained, 22.7M parameters) on embedded tweets, {args.steps} optimizer steps of batch "
        f"{args.batch_size} (64 tokens max), the method's default config, one fresh process per run, {args.rounds} rounds "
        f"(median; 'vs plain' is the median of each round's ratio to the plain run of that round). Memory: "
        f"{device}, which includes the model, the optimizer state and the Python runtime.",
        "",
        "| trainer | method | train time (s) | vs plain | s / step | peak memory (MiB) | vs plain (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for method in methods:
        seconds, peak = median(method, "seconds"), median(method, "peak_bytes")
        trainer = "`Trainer`" if method == "plain" else "`PruningTrainer`"
        name = {
            "plain": "–",
            "taylor_refit": "taylor + least-squares refit (`reconstruct=True`)",
            "bingo_kd": "bingo + distillation (a teacher of the same size)",
        }.get(method, method)
        lines.append(
            f"| {trainer} | {name} | {seconds:.1f} | {ratio(method):.2f}× | "
            f"{seconds / args.steps:.2f} | {peak / 2**20:.0f} | {(peak - base_peak) / 2**20:+.0f} |"
        )
    spread = {m: [round(r["seconds"], 1) for r in runs if r["method"] == m] for m in methods}
    lines += [
        "",
        f"Times of every round: {', '.join(f'{m} {v}' for m, v in spread.items())}.",
        "",
        f"Measured on {environment()}, {args.threads} threads. Reproduce: `{command()}`",
    ]
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    markdown = "\n".join(lines)
    write_section("overhead", markdown, Path(args.output_md))
    print(markdown)


if __name__ == "__main__":
    main()
