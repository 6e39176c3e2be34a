"""Accuracy: the fraction of predictions equal to their references.

A local `evaluate` metric module shipped with hf_prune's scripts so that metrics work offline:

```python
import evaluate
from hf_prune.scripts.classification import metric_path

accuracy = evaluate.load(metric_path("accuracy"))
accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666...}
```
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all examples: (TP + TN) / (TP + TN + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`, defaults to `True`): return the fraction of correct predictions; if `False`, their count.
    sample_weight (`list` of `float`, *optional*): per-example weights.
Returns:
    accuracy (`float` or `int`): in [0, 1] if `normalize`, else the (weighted) number of correct predictions.
Examples:
    >>> accuracy = evaluate.load("hf_prune/scripts/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 2, 0], references=[0, 1, 1, 0])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Accuracy of integer class predictions, computed with numpy."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape.")
        weights = np.ones(len(references)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total > 0 else 0.0}
