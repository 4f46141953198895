"""``--shots K``: a seeded, stratified draw of exactly K training examples per class (few-shot transfer).

The draw is made from the training split once the evaluation split is settled (a given validation split, or
the examples ``splits.hold_out`` set aside), so evaluation examples can never be among the shots. The rest of
the training split goes unused. Single-label data only: a multi-label example belongs to several classes.
"""
from __future__ import annotations

import datasets
import numpy as np

from ..errors import HFTransferError
from .splits import with_index


def shot_indices(labels: list[int], shots: int, seed: int, id2label: dict[int, str]) -> list[int]:
    """Row numbers of ``shots`` examples of every class (each class drawn without replacement, in label order, with
    one seeded generator), in dataset order; one line naming the first class with fewer than ``shots`` examples."""
    by_class: dict[int, list[int]] = {label: [] for label in id2label}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    for label, rows in sorted(by_class.items()):
        if len(rows) < shots:
            name = id2label.get(label, label)
            raise HFTransferError(f"--shots {shots}: class '{name}' has {len(rows)} training example(s), fewer than "
                                  f"{shots}: pass --shots {len(rows)} or less, or add examples of '{name}'")
    rng = np.random.default_rng(seed)
    chosen = [int(i) for _, rows in sorted(by_class.items()) for i in rng.choice(rows, size=shots, replace=False)]
    return sorted(chosen)


def draw_shots(train: datasets.Dataset, shots: int, seed: int, id2label: dict[int, str],
               multi_label: bool) -> datasets.Dataset:
    """The ``shots``-per-class subset of an encoded training split (``labels`` column), re-indexed 0..n-1."""
    if multi_label:
        raise HFTransferError(f"--shots {shots} draws K examples per class of single-label data, but the labels are "
                              "multi-label (a list per example): drop --shots, or use single-label data")
    return with_index(train.select(shot_indices(train["labels"], shots, seed, id2label)))
