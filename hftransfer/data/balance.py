"""Class imbalance: per-class loss weights (``--class_weights``) and a class-balanced sampler (``--sampler``).

Both read the prepared training split's ``labels`` (integers, or multi-hot rows when multi-label). The
weights go to the loss (``models.heads.classification_loss``); the sampler replaces the shuffle of the
training loader. Not exported from ``hftransfer.data``: importing that package stays free of torch.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import HFTransferError

logger = logging.getLogger(__name__)

MULTI_LABEL_SAMPLER = "--sampler balanced supports single-label data; use --class_weights balanced for multi-label"


def class_weights(labels, num_labels: int, *, multi_label: bool, mode: str, values: Sequence[float] | None = None,
                  label_names: Sequence[str] | None = None) -> torch.Tensor | None:
    """Loss weights as a float32 tensor of ``num_labels`` values, or None (``mode`` none).

    ``balanced``: single-label, scikit-learn's ``n_samples / (n_classes * count_c)``; multi-label, the
    ``pos_weight`` of each label, ``negatives / positives``. ``given``: ``values`` as they are, one per label.
    ``label_names`` only make error messages readable.
    """
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    if mode == "none":
        return None
    if mode == "given":
        if values is None or len(values) != num_labels:
            got = 0 if values is None else len(values)
            raise HFTransferError(f"--class_weights has {got} values but the data has {num_labels} labels "
                                  f"({', '.join(names)}): pass one weight per label, in that order")
        return torch.tensor([float(v) for v in values], dtype=torch.float32)
    if mode != "balanced":
        raise HFTransferError(f"--class_weights: unknown mode '{mode}' (use none, balanced or one value per label)")
    if multi_label:
        return _pos_weights(labels, num_labels, names)
    return _balanced_weights(labels, num_labels, names)


def _balanced_weights(labels, num_labels: int, names: list[str]) -> torch.Tensor:
    counts = class_counts(labels, num_labels)
    present = counts > 0
    n_classes = int(present.sum())
    # n_classes counts the classes that occur (scikit-learn's np.unique(y)): the weights of the present
    # classes average to 1 over the examples, as they would without the absent ones
    weights = np.zeros(num_labels, dtype=np.float64)
    weights[present] = counts.sum() / (n_classes * counts[present])
    if not present.all():
        # weight 0, not an error: a class without training examples is never a hard target, so its weight only
        # scales label smoothing's share of it; refusing would stop e.g. --max_train_samples runs that drop a class
        missing = [names[i] for i in np.flatnonzero(~present)]
        logger.warning(f"--class_weights balanced: {len(missing)} label(s) have no training example "
                       f"({', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}); their weight is 0")
    return torch.tensor(weights, dtype=torch.float32)


def _pos_weights(labels, num_labels: int, names: list[str]) -> torch.Tensor:
    hot = _as_array(labels)
    if hot.ndim != 2 or hot.shape[1] != num_labels:
        raise HFTransferError(f"multi-label data needs one multi-hot row of {num_labels} labels per example")
    positives = (hot > 0.5).sum(axis=0).astype(np.float64)
    negatives = len(hot) - positives
    # negatives / positives is undefined (never positive) or 0 (never negative: that label would never learn)
    for i in np.flatnonzero((positives == 0) | (negatives == 0)):
        never = "never" if positives[i] == 0 else "always"
        raise HFTransferError(f"--class_weights balanced: label '{names[i]}' is {never} positive in the training "
                              "data, so negatives / positives is no weight: pass one weight per label instead")
    return torch.tensor(negatives / positives, dtype=torch.float32)


def class_counts(labels, num_labels: int) -> np.ndarray:
    """Examples per class of single-label integer ``labels`` (length ``num_labels``)."""
    ids = _as_array(labels)
    if ids.ndim != 1:
        raise HFTransferError("per-class counts need single-label data (one integer label per example)")
    return np.bincount(ids.astype(np.int64), minlength=num_labels)[:num_labels]


def _as_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(list(labels) if not isinstance(labels, np.ndarray) else labels)


def group_by_length(order: list[int], lengths: Sequence[int], group_size: int) -> list[int]:
    """``order`` cut into groups of ``group_size``, each sorted longest first: batches of similar lengths
    (less padding) while the order of the groups stays random."""
    out = []
    for start in range(0, len(order), group_size):
        out.extend(sorted(order[start:start + group_size], key=lambda i: -lengths[i]))
    return out


class BalancedSampler(torch.utils.data.Sampler):
    """``len(labels)`` indices per epoch, drawn with replacement so that every class is equally likely.

    An example's probability is inversely proportional to its class's size. The draw is seeded by
    ``seed + epoch`` alone (``set_epoch``, which accelerate calls on a prepared loader's sampler), so an
    epoch's order is a pure function of (seed, epoch): every process of a distributed run draws the same
    indices before accelerate shards them, and ``skip_first_batches`` resumes mid-epoch exactly.
    With ``lengths`` (text, ``--group_by_length``) the indices are then sorted by length inside groups
    of ``mega_batches`` batches of ``batch_size``, as ``LengthGroupedSampler`` does.
    """

    def __init__(self, labels, seed: int = 0, lengths: Sequence[int] | None = None, batch_size: int = 1,
                 mega_batches: int = 50):
        ids = _as_array(labels)
        if ids.ndim != 1:
            raise HFTransferError(MULTI_LABEL_SAMPLER)
        if lengths is not None and len(lengths) != len(ids):
            raise ValueError(f"{len(lengths)} lengths for {len(ids)} labels")
        ids = ids.astype(np.int64)
        # each present class's examples, side by side: drawing a class uniformly, then one of its examples
        # uniformly, gives every example the probability 1 / (classes * count) (no 2**24 limit, as multinomial has)
        order = np.argsort(ids, kind="stable")
        _, starts, counts = np.unique(ids[order], return_index=True, return_counts=True)
        self.by_class = torch.from_numpy(order)
        self.starts, self.counts = torch.from_numpy(starts), torch.from_numpy(counts).double()
        self.seed, self.epoch = seed, 0
        self.lengths = list(lengths) if lengths is not None else None
        self.group_size = batch_size * mega_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.by_class)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.by_class)
        if n == 0:
            return iter([])
        cls = torch.randint(len(self.counts), (n,), generator=g)
        count = self.counts[cls]  # the minimum keeps a product that rounds up to count inside the class
        within = torch.minimum((torch.rand(n, generator=g, dtype=torch.float64) * count).long(), count.long() - 1)
        order = self.by_class[self.starts[cls] + within].tolist()
        if self.lengths is not None:
            order = group_by_length(order, self.lengths, self.group_size)
        return iter(order)


__all__ = ["MULTI_LABEL_SAMPLER", "BalancedSampler", "class_counts", "class_weights", "group_by_length"]
