"""Paired batches for domain adaptation: each source example travels with a target example, in one dataset."""
from __future__ import annotations

import torch

from ..data import INDEX_COLUMN
from .methods import TARGET_PREFIX


class PairedDomains(torch.utils.data.Dataset):
    """Source example ``i`` with a target example drawn for it: one dataset, so the sampler, DDP sharding,
    ``skip_first_batches`` and exact resume need nothing new.

    An epoch has one example per source example; the target examples come from a fresh permutation per
    pass over the target split, seeded by (seed, epoch, pass), so which target example meets which
    source example depends only on the epoch, never on what ran before.
    """

    def __init__(self, source, target, seed: int = 0):
        self.source, self.target, self.seed, self.epoch = source, target, seed, 0
        self._orders: dict[tuple[int, int], list[int]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def target_index(self, i: int) -> int:
        n = len(self.target)
        key = (self.epoch, i // n)
        if key not in self._orders:
            if len(self._orders) > 64:
                self._orders.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1_009 + key[1])
            self._orders[key] = torch.randperm(n, generator=g).tolist()
        return self._orders[key][i % n]

    def __getitem__(self, i: int) -> dict:
        """Source example ``i`` and its target example, the target's keys prefixed; the target's ``INDEX_COLUMN``
        (its position in the target train split) comes along: self-training looks its pseudo-label up by it."""
        example = dict(self.source[i])
        for key, value in self.target[self.target_index(i)].items():
            example[TARGET_PREFIX + key] = value
        return example


class PairedCollate:
    """Collate a paired batch: each domain with the pipeline's own collate, target keys prefixed; the target's
    ``INDEX_COLUMN`` travels as ``TARGET_PREFIX + INDEX_COLUMN`` (a long tensor), whatever the collate keeps."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        source = [{k: v for k, v in e.items() if not k.startswith(TARGET_PREFIX)} for e in examples]
        target = [{k[len(TARGET_PREFIX):]: v for k, v in e.items() if k.startswith(TARGET_PREFIX)} for e in examples]
        batch = self.collate(source)
        target_batch = self.collate(target)
        target_batch.pop("labels", None)  # the target's labels are -1: never seen by the loss
        if target and INDEX_COLUMN in target[0]:
            target_batch[INDEX_COLUMN] = torch.tensor([int(e[INDEX_COLUMN]) for e in target], dtype=torch.long)
        batch.update({TARGET_PREFIX + k: v for k, v in target_batch.items()})
        return batch
