"""How many likelihood terms a training set holds: the N that an evidence-based loss term (BMRS's KL) is divided by.

The task loss of a `Trainer` is a mean over likelihood terms: over examples for a sequence-level head (one label
each), over label tokens for a token-level one (a causal LM predicts every token after the first of a sequence). The
variational free energy per term is that mean plus KL / N, so N must count the same terms: the number of label tokens
for a causal LM, not the number of sequences (which would make the KL hundreds of times too heavy).

```python
from hf_prune.likelihood_terms import count_likelihood_terms

n = count_likelihood_terms(train_dataset, data_collator, shifts_labels=True)  # label tokens, for a causal LM
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


IGNORE_INDEX = -100


def label_terms(batch: dict[str, Any], shifts_labels: bool) -> int | None:
    """Likelihood terms in one collated batch: its label tokens (the way the Trainer counts `num_items_in_batch`:
    `shift_labels` if the collator gives them, else `labels[..., 1:]` when the loss shifts labels, else `labels`),
    or `None` when the labels are one per example (or absent)."""
    labels = batch.get("shift_labels")
    if labels is None:
        labels = batch.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() < 2:
            return None
        if shifts_labels:
            labels = labels[..., 1:]
    return int(labels.ne(IGNORE_INDEX).sum())


def count_likelihood_terms(
    dataset: Sequence,
    collator: Callable[[list], dict[str, Any]],
    shifts_labels: bool,
    sample_size: int = 1024,
    chunk_size: int = 64,
    seed: int = 0,
) -> float | None:
    """The number of likelihood terms in `dataset` as the training loss sees them after `collator`.

    Sequence-level labels give `len(dataset)`. Token-level labels give the label tokens: counted exactly when the
    dataset has at most `sample_size` examples, else estimated from a fixed random sample of that size (the same
    on every process and on resume). `None` for a dataset without a length (an iterable dataset).
    """
    try:
        size = len(dataset)
    except TypeError:
        return None
    if size == 0:
        return None
    if size <= sample_size:
        indices = list(range(size))
    else:
        indices = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:sample_size].tolist()
    tokens = 0
    for start in range(0, len(indices), chunk_size):
        batch = collator([dataset[i] for i in indices[start : start + chunk_size]])
        terms = label_terms(batch, shifts_labels)
        if terms is None:
            return float(size)
        tokens += terms
    return tokens * size / len(indices)
