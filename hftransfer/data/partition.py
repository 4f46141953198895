"""``--partition iid`` / ``dirichlet:ALPHA``: one labelled dataset split into N clients, seeded.

Dirichlet label skew follows Hsu et al. (2019): for every class a draw p ~ Dir(alpha * 1_N) says which share
of that class each client holds; small alpha gives each client a few dominant classes, large alpha tends to
IID. The proportions are drawn once per (seed, class) and applied to every split, so a client's validation
and test examples follow its own label distribution (its test accuracy is the accuracy *it* cares about).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import HFTransferError

MIN_EXAMPLES_PER_CLIENT = 2  # a client needs at least a batch of two to train and one example to evaluate


@dataclass(frozen=True)
class PartitionScheme:
    """How one dataset is split: ``iid`` (a seeded shuffle cut into N equal parts) or ``dirichlet`` with ``alpha``."""

    kind: str
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> "PartitionScheme":
        kind, _, value = text.partition(":")
        if kind == "iid" and not value:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(value)
            except ValueError:
                alpha = -1.0
            if alpha > 0:
                return cls("dirichlet", alpha)
        raise HFTransferError(f"--partition '{text}' is not a partition: use iid or dirichlet:ALPHA with ALPHA > 0 "
                              "(e.g. dirichlet:0.5; smaller is more skewed)")

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def class_proportions(num_classes: int, num_clients: int, alpha: float, seed: int) -> np.ndarray:
    """``[num_classes, num_clients]``: row c is the share of class c each client holds (rows sum to 1)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(alpha=np.full(num_clients, alpha), size=num_classes)


def split_by_proportions(labels: np.ndarray, proportions: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each client's example indices: class c's examples, shuffled, cut at the cumulative shares of row c."""
    rng = np.random.default_rng(seed)
    num_clients = proportions.shape[1]
    shares: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(np.cumsum(proportions[int(label)])[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shares[client].append(part)
    return [np.sort(np.concatenate(parts)) if parts else np.array([], dtype=int) for parts in shares]


def partition_indices(labels, num_clients: int, scheme: PartitionScheme, seed: int, num_classes: int | None = None,
                      split_seed: int = 0) -> list[np.ndarray]:
    """Which examples (indices into ``labels``) each of ``num_clients`` clients holds; disjoint and covering.

    ``seed`` fixes the clients' label distributions (the same for every split of one dataset); ``split_seed``
    varies the shuffle of each split (pass a different one per split so train and test are cut independently).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise HFTransferError("--partition splits single-label data by its labels: the label column holds lists "
                              "(multi-label); give each client its own data with --client_data instead")
    if num_clients < 2:
        raise HFTransferError(f"--partition needs --num_clients 2 or more, got {num_clients}")
    num_classes = int(labels.max()) + 1 if num_classes is None and len(labels) else (num_classes or 0)
    if scheme.kind == "iid":
        order = np.random.default_rng([seed, split_seed]).permutation(len(labels))
        return [np.sort(part) for part in np.array_split(order, num_clients)]
    proportions = class_proportions(num_classes, num_clients, scheme.alpha, seed)
    return split_by_proportions(labels, proportions, seed=seed * 1000 + split_seed)


def check_client_sizes(sizes: list[int], split: str) -> None:
    """A client left with (almost) nothing cannot train: say which and how to fix it."""
    empty = [client for client, size in enumerate(sizes) if size < MIN_EXAMPLES_PER_CLIENT]
    if empty:
        raise HFTransferError(f"--partition left client(s) {', '.join(map(str, empty))} with fewer than "
                              f"{MIN_EXAMPLES_PER_CLIENT} {split} examples ({sizes}): raise ALPHA in dirichlet:ALPHA, "
                              "lower --num_clients, or pass another --seed")
