"""F1 score (binary, macro, micro or weighted) for single-label classification.

A local `evaluate` metric module shipped with hf_prune's scripts so that metrics work offline; it follows the conventions of
scikit-learn's `f1_score` (a class with no true and no predicted examples scores 0).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall: F1 = 2 * (precision * recall) / (precision + recall).
With several classes it is averaged: `macro` (unweighted mean over classes), `weighted` (mean weighted by each
class's number of references) or `micro` (computed from the total counts, equal to accuracy for single-label data).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    labels (`list` of `int`, *optional*): the classes to average over. Defaults to every class that appears in
        `predictions` or `references`.
    pos_label (`int`, defaults to `1`): the positive class when `average="binary"`.
    average (`str`, defaults to `"binary"`): one of `"binary"`, `"macro"`, `"micro"`, `"weighted"` or `None`
        (the per-class scores as a list).
Returns:
    f1 (`float` or `list` of `float`): the F1 score, in [0, 1].
Examples:
    >>> f1 = evaluate.load("hf_prune/scripts/metrics/f1")
    >>> f1.compute(predictions=[0, 2, 1, 0, 0, 1], references=[0, 1, 2, 0, 1, 2], average="macro")
    {'f1': 0.26666666666666666}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """F1 score of integer class predictions, computed with numpy."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape.")
        weights = np.ones(len(references)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if average == "binary":
            present = np.union1d(predictions, references)
            if len(present) > 2:
                raise ValueError(f"average='binary' needs at most 2 classes, found {len(present)}: use 'macro'.")
            labels = [pos_label]
        elif average not in ("macro", "micro", "weighted", None):
            raise ValueError(f"Unknown average={average!r}: use 'binary', 'macro', 'micro', 'weighted' or None.")
        classes = np.union1d(predictions, references) if labels is None else np.asarray(labels)

        tp = np.array([np.sum(weights * ((predictions == c) & (references == c))) for c in classes], dtype=float)
        pred = np.array([np.sum(weights * (predictions == c)) for c in classes], dtype=float)
        true = np.array([np.sum(weights * (references == c)) for c in classes], dtype=float)
        if average == "micro":
            denominator = pred.sum() + true.sum()
            return {"f1": float(2 * tp.sum() / denominator) if denominator > 0 else 0.0}
        denominator = pred + true
        scores = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        if average is None:
            return {"f1": scores.tolist()}
        if average == "weighted":
            return {"f1": float(np.average(scores, weights=true)) if true.sum() > 0 else 0.0}
        return {"f1": float(scores.mean()) if len(scores) else 0.0}
