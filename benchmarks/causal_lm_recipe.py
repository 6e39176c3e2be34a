"""The decoder-LLM recipe of examples/README.md, run through the example itself, as a user would run it.

The reference: SmolLM2 fine-tuned on the tweets + 45 % Wikipedia blocks for 240 steps at 2e-4 with nothing removed
(`--target_sparsity 0`, no distillation), the dense model a row is compared with unless another fits it better
(`reference`: its dense teacher, or the dense run with its seed and steps). The recipe: 20 % of the prunable parameters removed while fine-tuning the same way, heads
and neurons each giving up their share, units ranked by the gate's Fisher, the kept weights refit, and distillation
from the model as loaded (the pretrained SmolLM2), in one run; also with more weight on that KL, another seed, more
general text, earlier pruning, twice the steps on three seeds (each against a dense model fine-tuned as long; also a
dense one at 5e-5, and the recipe distilled from it) and at 40 % (two seeds, and twice the steps). Before it, the
same levers distilled from the dense fine-tune instead (it is their teacher), at 20 % and 40 %, and the stock form
(the example's defaults: MLP neurons only, the same count in every layer) with either teacher and without one. Each
finished run's `metrics.json` goes into `benchmarks/results/causal_lm_recipe.json` as it ends. Runs already there
are skipped; a teacher folder that is gone is trained again before a row that distils from it (`TEACHERS`). The
table goes into BENCHMARKS.md.

    python benchmarks/causal_lm_recipe.py                  # about 11 hours on 2 CPU cores
    python benchmarks/causal_lm_recipe.py --report_only
    python benchmarks/causal_lm_recipe.py --runs dense --results /tmp/r.json --extra --max_steps 4 --eval_tokens 512 \\
        --max_train_samples 200                            # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import RESULTS, ROOT, cached_model_dir, environment, write_section


EXAMPLE = ROOT / "examples" / "prune_causal_lm.py"
TEACHER = "TEACHER"  # stands for the dense run's exported folder in the recorded flags
TEACHER_5E5 = "TEACHER_5E5"  # the same for the dense run at 5e-5, the best dense model on both splits
TEACHERS = {TEACHER: "dense", TEACHER_5E5: "dense_long_5e5"}  # placeholder -> the run whose model it stands for
DATA = ["--general_text", "wikipedia", "--general_fraction", "0.45", "--max_steps", "240", "--learning_rate", "2e-4"]
DISTIL = ["--distillation_weight", "0.5", "--teacher_model_name_or_path", TEACHER]
UNITS = [
    "--prune_heads", "true", "--uniform_layers", "false", "--kind_budget", "proportional", "--criterion", "fisher",
    "--min_heads_per_layer", "1", "--min_neurons_per_layer", "154",  # at least one group and 10 % of 1,536 neurons
]  # fmt: skip
PRUNE = [*UNITS, *DISTIL]
RECIPE = [*UNITS, "--distillation_weight", "0.5", "--neuron_multiple", "1", *DATA]
DENSE = ["--target_sparsity", "0", "--reconstruct", "false", "--distillation_weight", "0", *DATA]
LONG_SEEDS = ("1", "2")  # the seeds the twice-the-steps pair also runs with, besides 0


def changed(argv: list[str], **changes: str) -> list[str]:
    """`argv` with some values changed (or added), each flag once, as a user would type them."""
    argv = list(argv)
    for name, value in changes.items():
        flag = f"--{name}"
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


RUNS = {
    "dense": DENSE,
    "pruned_20": [*PRUNE, "--neuron_multiple", "1", *DATA],
    "pruned_20_multiple_64": [*PRUNE, *DATA],  # the example's default: per-layer counts in multiples of 64
    "pruned_40": [*PRUNE, "--target_sparsity", "0.4", "--neuron_multiple", "1", *DATA],
    # the example's defaults (MLP neurons only, the same count in every layer): the export vLLM and TGI load
    "stock_20": ["--criterion", "fisher", *DISTIL, *DATA],
    # one run, no teacher to train first: the example's defaults on the same data and steps, alone and distilled
    # from the model as loaded (the pretrained model, which the general blocks should not drift from)
    "stock_20_one_run": ["--distillation_weight", "0", *DATA],
    "stock_20_self_distilled": ["--distillation_weight", "0.5", *DATA],
    # the recipe: the best levers in one run, distilled from the model as loaded instead of a dense fine-tune
    "pruned_20_self_distilled": RECIPE,
    "pruned_20_self_distilled_075": [*UNITS, "--distillation_weight", "0.75", "--neuron_multiple", "1", *DATA],
    "dense_seed1": changed(DENSE, seed="1"),
    "pruned_20_self_distilled_seed1": [*RECIPE, "--seed", "1"],
    # the levers left for the news: more general text, more steps after the last removal, twice the steps (against
    # the dense model fine-tuned as long)
    "pruned_20_self_distilled_general_070": changed(RECIPE, general_fraction="0.7", max_train_samples="6600"),
    "pruned_20_self_distilled_early": changed(RECIPE, prune_start="0.1", prune_end="0.5"),
    "dense_long": changed(DENSE, max_steps="480"),
    "pruned_20_self_distilled_long": changed(RECIPE, max_steps="480"),
    **{  # the same pair on more seeds
        f"{name}_seed{seed}": changed(argv, max_steps="480", seed=seed)
        for seed in LONG_SEEDS
        for name, argv in (("dense_long", DENSE), ("pruned_20_self_distilled_long", RECIPE))
    },
    "dense_long_5e5": changed(DENSE, max_steps="480", learning_rate="5e-5"),  # the dense model's better rate
    # the recipe distilled from the best dense model instead of the model as loaded: the lever left for the news
    "pruned_20_distilled_5e5_long": changed(RECIPE, max_steps="480", teacher_model_name_or_path=TEACHER_5E5),
    "pruned_40_self_distilled": changed(RECIPE, target_sparsity="0.4"),
    "pruned_40_self_distilled_seed1": changed(RECIPE, target_sparsity="0.4", seed="1"),
    "pruned_40_self_distilled_long": changed(RECIPE, target_sparsity="0.4", max_steps="480"),
    "pruned_40_self_distilled_long_seed1": changed(RECIPE, target_sparsity="0.4", max_steps="480", seed="1"),
}
LABELS = {  # in table order
    "dense": "dense: fine-tuned the same way, nothing removed, not distilled (`--target_sparsity 0 --reconstruct false "
    "--distillation_weight 0`); the teacher of the rows distilled from the dense model",
    "dense_seed1": "dense, seed 1 (`--seed 1`)",
    "pruned_20": "20 %, heads and neurons each their share, Fisher, refit, distilled (`--neuron_multiple 1`)",
    "pruned_20_multiple_64": "as above, neuron counts in multiples of 64 (the example's default `--neuron_multiple`)",
    "pruned_20_self_distilled": "20 %, heads and neurons each their share, Fisher, refit, distilled from the model as "
    "loaded instead (one run, no teacher; `--neuron_multiple 1`)",
    "pruned_20_self_distilled_075": "the same, with more weight on the KL to the model as loaded "
    "(`--distillation_weight 0.75`)",
    "pruned_20_self_distilled_seed1": "the same at α 0.5, seed 1 (against the dense model at seed 1, the second row)",
    "pruned_20_self_distilled_general_070": "the same at α 0.5, with 70 % Wikipedia blocks: all 8,591 of them and "
    "the first 6,600 tweets (`--general_fraction 0.7 --max_train_samples 6600`)",
    "pruned_20_self_distilled_early": "the same, pruned earlier: between 10 % and 50 % of the steps, 120 steps left to "
    "recover (`--prune_start 0.1 --prune_end 0.5`)",
    "dense_long": "dense, fine-tuned twice as long (`--max_steps 480`)",
    "pruned_20_self_distilled_long": "20 %, the recipe, twice the steps (`--max_steps 480`; against the dense model "
    "fine-tuned as long)",
    **{
        f"{name}_seed{seed}": f"{text}, seed {seed} (`--max_steps 480 --seed {seed}`{note})"
        for seed in LONG_SEEDS
        for name, text, note in (
            ("dense_long", "dense, fine-tuned twice as long", ""),
            (
                "pruned_20_self_distilled_long",
                "20 %, the recipe, twice the steps",
                "; against the dense model of the row above",
            ),
        )
    },
    "dense_long_5e5": "dense, twice the steps at a quarter of the learning rate (`--max_steps 480 --learning_rate 5e-5`)",
    "pruned_20_distilled_5e5_long": "20 %, the recipe, twice the steps, distilled from the dense model of the row "
    "above instead of the model as loaded (`--max_steps 480 --teacher_model_name_or_path` that model; against it)",
    "pruned_40": "40 %, heads and neurons each their share, Fisher, refit, distilled (`--target_sparsity 0.4 "
    "--neuron_multiple 1`)",
    "pruned_40_self_distilled": "40 %, the same levers, distilled from the model as loaded (`--target_sparsity 0.4`)",
    "pruned_40_self_distilled_seed1": "the same, seed 1 (`--target_sparsity 0.4 --seed 1`; against the dense model at "
    "seed 1)",
    "pruned_40_self_distilled_long": "the same at seed 0, twice the steps (`--target_sparsity 0.4 --max_steps 480`; "
    "against the dense model fine-tuned as long)",
    "pruned_40_self_distilled_long_seed1": "the same, seed 1 (`--target_sparsity 0.4 --max_steps 480 --seed 1`; "
    "against the dense model fine-tuned as long with seed 1)",
    "stock_20": "20 % of the MLP neurons, the same count in every layer (the example's defaults: a stock Llama), "
    "Fisher, refit, distilled",
    "stock_20_self_distilled": "20 % of the MLP neurons, the same count in every layer, refit, distilled from the model "
    "as loaded (one run, no teacher; `--distillation_weight 0.5`)",
    "stock_20_one_run": "the same, not distilled (`--distillation_weight 0`)",
}


def flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    """The value of `--name` in `argv`, or `default`."""
    return argv[argv.index(f"--{name}") + 1] if f"--{name}" in argv else default


def reference(name: str) -> str:
    """The dense run a row is compared with: the dense teacher it names if that is not `dense`, else the dense run
    with its seed, steps and learning rate (dense rows: `dense`)."""
    argv = RUNS[name]
    if flag(argv, "target_sparsity") == "0":
        return "dense"
    teachers = [TEACHERS[arg] for arg in argv if arg in TEACHERS and TEACHERS[arg] != "dense"]
    if teachers:
        return teachers[0]
    same = ("seed", "max_steps", "learning_rate")
    return next(
        dense
        for dense, flags in RUNS.items()
        if flag(flags, "target_sparsity") == "0" and all(flag(flags, f) == flag(argv, f) for f in same)
    )


def output_dir(name: str, extra: list[str]) -> Path:
    """Where a run writes: outside the repository, keyed by its flags (the dense one is the others' teacher)."""
    return cached_model_dir("causal_lm_recipe", {"run": name, "argv": RUNS[name], "extra": extra})


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def record(path: Path, name: str, entry: dict) -> None:
    """Add one finished run, replacing the file in one step so that an interrupted write loses nothing."""
    results = {**load(path), name: entry}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


def teacher_dir(placeholder: str, extra: list[str]) -> Path:
    """The exported model a teacher placeholder of the recorded flags stands for."""
    return output_dir(TEACHERS[placeholder], extra) / "pruned"


def run(name: str, extra: list[str]) -> dict:
    """One run of the example in a fresh folder; returns its `metrics.json`."""
    out = output_dir(name, extra)
    shutil.rmtree(out, ignore_errors=True)
    argv = [str(teacher_dir(arg, extra)) if arg in TEACHERS else arg for arg in RUNS[name]]
    command = [sys.executable, str(EXAMPLE), *argv, *extra, "--output_dir", str(out), "--disable_tqdm", "true"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((out / "metrics.json").read_text())


def change(value: float, reference: float) -> str:
    return f"{value:.2f} ({100 * (value / reference - 1):+.1f} %)"


def report(results: dict) -> str:
    """The BENCHMARKS.md section: each run against the dense model."""
    lines = [
        "## Decoder LLM: the recipe through `examples/prune_causal_lm.py`",
        "",
        "The commands of the decoder recipe in [examples/README.md](examples/README.md#prune_causal_lmpy-fine-tune-"
        "and-prune-a-pretrained-decoder-llm), run as a user runs them (each run its own process, seed 0 unless a row "
        "says otherwise): the tweets + 45 % Wikipedia blocks, 240 steps of 8 x 64 tokens at learning rate 2e-4 "
        "(cosine) unless a row says otherwise, the pruned runs distilled (α 0.5) from the dense one or, where a row "
        "says so, from the model as loaded (the pretrained SmolLM2), and pruned on the default cubic schedule. "
        "Perplexity as in the decoder-LLM table (4,096 tokens, 512-token windows), its change against the dense model "
        "of the first row (or the one a row names); decode tokens/s: greedy decoding at batch 1, measured by the "
        "example on the model as loaded before training and on the trained one after it (the ratio; a single pair, "
        "about ±15 % of noise).",
        "",
        "| run | removed | parameters | perplexity, tweets | perplexity, news | decode tok/s, batch 1 | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in LABELS.items():
        if name not in results:
            lines.append(f"| {label} | not run yet | | | | | |")
            continue
        dense = results.get(reference(name), {}).get("metrics")
        m = results[name]["metrics"]
        after = {split: m["perplexity"][split]["after"] for split in ("tweets", "news")}
        cells = [
            change(after[s], dense["perplexity"][s]["after"]) if dense else f"{after[s]:.2f}"
            for s in ("tweets", "news")
        ]
        speed = m["throughput"]
        decode = speed["pruned"]["batch_1"]["decode_tokens_per_s"]
        ratio = decode / speed["dense"]["batch_1"]["decode_tokens_per_s"]
        lines.append(
            f"| {label} | {100 * m['sparsity']:.1f} % | {m['parameters']['after'] / 1e6:.1f}M | {cells[0]} | "
            f"{cells[1]} | {decode:.0f} ({ratio:.2f}x) | {m['train_seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        "Raw runs (each `metrics.json`, with the flags): [benchmarks/results/causal_lm_recipe.json]"
        "(benchmarks/results/causal_lm_recipe.json). Reproduce: `python benchmarks/causal_lm_recipe.py`. "
        f"{environment()}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--results", type=Path, default=RESULTS / "causal_lm_recipe.json")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags added to every run (smoke runs)")
    args = parser.parse_args()

    def run_and_record(name: str) -> None:
        record(args.results, name, {"argv": RUNS[name] + args.extra, "metrics": run(name, args.extra)})

    for name in [] if args.report_only else args.runs:
        if name in load(args.results):
            continue
        for placeholder in sorted(TEACHERS.keys() & RUNS[name]):
            # the teacher first, again if its folder is gone; the rows distilled from the model as loaded need none
            if TEACHERS[placeholder] not in load(args.results) or not teacher_dir(placeholder, args.extra).exists():
                run_and_record(TEACHERS[placeholder])
        run_and_record(name)
    if args.results == RESULTS / "causal_lm_recipe.json":
        write_section("llm-recipe", report(load(args.results)))
    else:
        print(report(load(args.results)))


if __name__ == "__main__":
    main()
