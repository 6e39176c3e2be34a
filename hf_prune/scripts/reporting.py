"""What the fine-tune-and-prune script reports: the content of `metrics.json`, the latency entry, the model card's
metrics, and the summary logged at the end."""

from __future__ import annotations

import logging
from typing import Any

import torch
import transformers
from torch import nn

import hf_prune
from hf_prune.configs import PruningConfig


logger = logging.getLogger(__name__)

CARD_METRICS = ("accuracy", "macro_f1", "loss")


def latency_report(
    dense: dict[str, float], pruned: dict[str, float], settings: dict[str, int], model: nn.Module
) -> dict[str, Any]:
    """The `latency` entry of `metrics.json`: the settings (`batch_size`, `seq_len`, `repeats`, `warmup`), both
    medians and their ratio, and the `latency_stats` of each model."""
    return {
        "device": next(model.parameters()).device.type,
        "torch_threads": torch.get_num_threads(),
        **settings,
        "dense_ms": dense["median_ms"],
        "pruned_ms": pruned["median_ms"],
        "speedup": dense["median_ms"] / pruned["median_ms"],
        "dense": dense,
        "pruned": pruned,
        "note": "dense = the fine-tuned model before finalize (all units present), timed without gate hooks",
    }


def card_info(
    validation_before: dict[str, float], validation_after: dict[str, float], latency: dict[str, Any] | None
) -> dict[str, Any]:
    """The `metrics` and `latency` arguments of `hf_prune.set_card_info` (validation before and after pruning; "before"
    is the dense reference when the run has one)."""
    metrics = {
        name: {"before": round(validation_before[name], 4), "after": round(validation_after[name], 4)}
        for name in CARD_METRICS
    }
    card_latency = None
    if latency is not None:
        card_latency = {k: latency[k] for k in ("device", "batch_size", "seq_len", "repeats")}
        card_latency.update(before_ms=latency["dense_ms"], after_ms=latency["pruned_ms"])
    return {"metrics": metrics, "latency": card_latency}


def build_report(
    *,
    model_name_or_path: str,
    dataset: str,
    labels: list[str],
    num_examples: dict[str, int],
    pruning_config: PruningConfig,
    result: dict,
    train: dict[str, float],
    evaluations: dict[str, dict[str, float] | None],
    latency: dict | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of `metrics.json`; `result` is `hf_prune.report.pruning_summary(model)` of the pruned model (the
    `result` entry of its `pruning_config.json`), `evaluations` the metrics of each model and split."""
    before, after = result["before"], result["after"]
    flops_key = next((k for k in after if k.startswith("flops_per_sequence")), None)
    kept = {
        unit: {
            "before": sum(layer[unit] for layer in before["layers"]),
            "after": sum(layer[unit] for layer in after["layers"]),
            "per_layer": [layer[unit] for layer in after["layers"]],
        }
        for unit in ("heads", "neurons")
    }
    return {
        "model_name_or_path": model_name_or_path,
        "dataset": dataset,
        "labels": labels,
        "num_examples": num_examples,
        "method": pruning_config.method,
        "pruning_config": pruning_config.to_dict(),
        "train": train,
        **evaluations,
        "sparsity": result["sparsity"],
        "parameters": {
            "before": before["parameters"],
            "after": after["parameters"],
            "ratio": after["parameters"] / before["parameters"],
        },
        "prunable_parameters": {"before": before["prunable_parameters"], "after": after["prunable_parameters"]},
        "flops": {"key": flops_key, "before": before.get(flops_key), "after": after.get(flops_key)},
        "kept": kept,
        "export": result.get("export"),
        "latency": latency,
        "timings_s": timings,
        "versions": {
            "hf_prune": hf_prune.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def log_summary(results: dict[str, Any], pruned_dir: str) -> None:
    """Log what the run did: sizes, kept units, accuracy (dense vs pruned on test when both exist), latency, and
    how to load the saved model."""
    before, after, test = results["validation_before"], results["validation_after"], results["test_after"]
    params, kept = results["parameters"], results["kept"]
    lines = [
        f"method {results['method']}: sparsity {results['sparsity']:.3f}, parameters {params['before']:,} -> "
        f"{params['after']:,} ({params['ratio']:.1%})",
        f"heads {kept['heads']['after']}/{kept['heads']['before']}, neurons "
        f"{kept['neurons']['after']}/{kept['neurons']['before']}",
        f"validation accuracy (gated -> finalized) {before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro-F1 "
        f"{before['macro_f1']:.4f} -> {after['macro_f1']:.4f}",
    ]
    dense = results.get("test_dense")
    if test is not None and dense is not None:
        lines.append(
            f"test accuracy: dense {dense['accuracy']:.4f}, pruned {test['accuracy']:.4f} "
            f"({100 * (test['accuracy'] - dense['accuracy']):+.2f} points); macro-F1: dense {dense['macro_f1']:.4f}, "
            f"pruned {test['macro_f1']:.4f}"
        )
    elif test is not None:
        lines.append(f"test (pruned) accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}")
    if results["latency"] is not None:
        lat = results["latency"]
        lines.append(
            f"latency ({lat['device']}, batch {lat['batch_size']} x {lat['seq_len']} tokens): "
            f"{lat['dense_ms']:.1f} ms -> {lat['pruned_ms']:.1f} ms (x{lat['speedup']:.2f})"
        )
    load = (
        "hf_prune.AutoPrunedModel.from_pretrained(path), or AutoModelForSequenceClassification.from_pretrained("
        "path, trust_remote_code=True)"
        if results["export"] == "remote_code"
        else "AutoModelForSequenceClassification.from_pretrained(path)"
    )
    lines.append(f"pruned model saved to {pruned_dir}; load it with {load}")
    logger.info("*** Summary ***\n  " + "\n  ".join(lines))
