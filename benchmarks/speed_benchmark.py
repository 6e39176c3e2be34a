"""Inference speed of pruned models against the dense one: latency and throughput at batch 1, 8 and 32 and sequence
lengths 64 and 128, next to the FLOPs ratio (the physical limit for compute-bound inference), with and without
rounding kept widths to multiples of 8.

The pruned models are the project's pretrained MiniLM-L6 pruned one-shot by weight magnitude (speed depends only on
the kept shapes, not on how they were chosen). Writes `benchmarks/results/speed.json` and the speed section of
BENCHMARKS.md.

    python benchmarks/speed_benchmark.py
    python benchmarks/speed_benchmark.py --repeats 3 --batch_sizes 1 --seq_lens 64 --dry_run   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import command, environment, pretrained_path, save_json, write_section
from transformers import AutoModelForSequenceClassification

import hf_prune
from hf_prune import MagnitudeConfig


def pruned_model(sparsity: float, multiple: int):
    model = AutoModelForSequenceClassification.from_pretrained(pretrained_path(), num_labels=2).eval()
    if sparsity == 0:
        return model, 1.0
    hf_prune.prepare_model_for_pruning(model, MagnitudeConfig(target_sparsity=sparsity, neuron_multiple=multiple))
    hf_prune.finalize_model(model)
    result = hf_prune.pruning_summary(model)
    return model.eval(), result["after"]["flops_per_sequence_128"] / result["before"]["flops_per_sequence_128"]


@torch.no_grad()
def paired_latency_ms(dense, pruned, batch: int, seq_len: int, repeats: int) -> tuple[float, float]:
    """Median forward times of the two models, measured alternately so that drifts of the machine (frequency, other
    load) hit both equally."""
    ids = torch.randint(1000, 20000, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for _ in range(3):
        dense(**inputs)
        pruned(**inputs)
    times = {"dense": [], "pruned": []}
    for _ in range(repeats):
        for name, model in (("dense", dense), ("pruned", pruned)):
            start = time.perf_counter()
            model(**inputs)
            times[name].append((time.perf_counter() - start) * 1000)
    return statistics.median(times["dense"]), statistics.median(times["pruned"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    parser.add_argument("--batch_sizes", default="1,8,32")
    parser.add_argument("--seq_lens", default="64,128")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dry_run", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dense, _ = pruned_model(0.0, 1)
    shapes = [(b, s) for b in map(int, args.batch_sizes.split(",")) for s in map(int, args.seq_lens.split(","))]
    records = []
    for sparsity in map(float, args.sparsities.split(",")):
        for multiple in (1, 8):
            model, flops_ratio = pruned_model(sparsity, multiple)
            for batch, seq_len in shapes:
                dense_ms, ms = paired_latency_ms(dense, model, batch, seq_len, args.repeats)
                records.append(
                    {
                        "sparsity": sparsity,
                        "neuron_multiple": multiple,
                        "batch": batch,
                        "seq_len": seq_len,
                        "dense_ms": dense_ms,
                        "pruned_ms": ms,
                        "flops_ratio": flops_ratio,
                        "speedup": dense_ms / ms,
                        "throughput": 1000 * batch / ms,
                    }
                )
                r = records[-1]
                print(
                    f"sparsity {sparsity:.0%} x{multiple} batch {batch} seq {seq_len}: {r['dense_ms']:.1f} -> "
                    f"{ms:.1f} ms, speedup {r['speedup']:.2f}x, FLOPs limit {1 / flops_ratio:.2f}x",
                    flush=True,
                )
    if args.dry_run:
        return
    rows = [
        "| prunable removed | widths | batch | seq | dense ms | pruned ms | speedup | FLOPs-limit speedup | "
        "speedup / limit | pruned sequences/s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        limit = 1 / r["flops_ratio"]
        rows.append(
            f"| {r['sparsity']:.0%} | {'multiple of 8' if r['neuron_multiple'] == 8 else 'any'} | {r['batch']} "
            f"| {r['seq_len']} | {r['dense_ms']:.1f} | {r['pruned_ms']:.1f} | {r['speedup']:.2f}× | "
            f"{limit:.2f}× | {r['speedup'] / limit:.2f} | {r['throughput']:.0f} |"
        )
    markdown = "\n".join(
        [
            "## Speed (pruned vs dense inference)",
            "",
            f"MiniLM-L6 sequence classifier, float32, `torch.no_grad`, {args.threads} threads, median of {args.repeats} "
            "forward passes after 3 warm-up passes. FLOPs-limit speedup = dense FLOPs / pruned FLOPs per 128-token "
            "sequence (projections plus attention products): the best a compute-bound run can do. Goal: ≥ 0.9× that "
            "limit at batch 32.",
            "",
            *rows,
            "",
            f"Measured on {environment()}. Reproduce: `{command()}`",
        ]
    )
    save_json("speed", {"args": vars(args), "records": records, "environment": environment()})
    write_section("speed", markdown)


if __name__ == "__main__":
    main()
