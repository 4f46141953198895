"""Episodic prototypical fine-tuning of a backbone (Snell, Swersky & Zemel 2017, "Prototypical Networks"), any
modality; the few-shot images' counterpart of SetFit's pair phase (``tuning.contrastive``).

Each step is one *episode*, a small classification task drawn from the training split: ``ways`` classes, and per
class ``support`` examples whose mean embedding is the class prototype and ``queries`` examples classified by
their similarity to the prototypes. The loss is the queries' cross-entropy, so the backbone learns an embedding in
which class means separate classes: what ``--head_init prototypes`` then builds the head from (Tian et al. 2020,
"a good embedding is all you need"). Similarity is the cosine scaled by ``SCALE`` (Chen et al. 2019's cosine
prototypes; squared Euclidean distances of raw CNN features are large enough to saturate the softmax).

Episodes are a function of ``(seed, episode)`` alone, so a run draws the same ones on every attempt; with several
processes each process trains on its own share of them (accelerate shards the episode loader) and DDP averages the
gradients. The loop is ``tuning.backbone_tuning``'s.
"""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import HFTransferError
from .backbone_tuning import tune_backbone

SCALE = 10.0  # the cosine similarity's temperature: logits in [-10, 10]
MAX_SUPPORT, MAX_QUERIES = 5, 10  # the defaults' caps: ProtoNet's 5-shot episodes, 10 queries per class


def episode_shape(labels: list[int], ways: int = 0, support: int = 0, queries: int = 0) -> tuple[int, int, int]:
    """``(ways, support, queries)`` of the episodes; 0 picks the default: every class (at most 20), half of the
    smallest class (at most 5) as support and the rest (at most 10) as queries."""
    counts = {c: labels.count(c) for c in set(labels)}
    if len(counts) < 2:
        raise HFTransferError("--strategy episodic classifies queries between classes: the training data needs at "
                              "least two classes")
    smallest = min(counts.values())
    if smallest < 2:
        raise HFTransferError(f"--strategy episodic needs at least 2 training examples per class (one support, one "
                              f"query); the smallest class has {smallest}: pass --shots 2 or more")
    ways = ways or min(len(counts), 20)
    support = support or min(MAX_SUPPORT, max(1, smallest // 2))
    queries = queries or min(MAX_QUERIES, max(1, smallest - support))
    if not 2 <= ways <= len(counts):
        raise HFTransferError(f"--episode_ways {ways}: the training data has {len(counts)} classes; pass 2 to "
                              f"{len(counts)} (0 = all, at most 20)")
    if support + queries > smallest:
        raise HFTransferError(f"--episode_support {support} + --episode_queries {queries} examples per class, but the "
                              f"smallest class has {smallest} training examples: lower them (0 = the defaults)")
    return ways, support, queries


class EpisodeDataset(Dataset):
    """Episode ``e``: ``ways`` classes drawn by ``(seed, e)``, then ``support + queries`` of each class's examples;
    as a list of ``examples`` rows, class by class, each class's support first."""

    def __init__(self, examples, labels: list[int], *, episodes: int, ways: int, support: int, queries: int,
                 seed: int):
        self.examples, self.episodes, self.seed = examples, episodes, seed
        self.ways, self.per_class = ways, support + queries
        self.by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.by_class.setdefault(int(label), []).append(index)

    def __len__(self) -> int:
        return self.episodes

    def indices(self, episode: int) -> list[int]:
        rng = random.Random(f"{self.seed}/episode/{episode}")
        classes = rng.sample(sorted(self.by_class), self.ways)
        return [i for c in classes for i in rng.sample(self.by_class[c], self.per_class)]

    def __getitem__(self, episode: int):
        return [self.examples[i] for i in self.indices(episode)]


class EpisodeCollate:
    """A loader batch of one episode -> the backbone's inputs for its examples, collated as the training loader does."""

    def __init__(self, collate, input_names: tuple[str, ...]):
        self.collate, self.input_names = collate, input_names

    def __call__(self, episodes):
        (rows,) = episodes
        return {k: v for k, v in self.collate(rows).items() if k in self.input_names}


def prototypical_loss(features: torch.Tensor, *, ways: int, support: int, queries: int) -> torch.Tensor:
    """Cross-entropy of the queries against the support's class prototypes (cosine similarity x ``SCALE``).
    ``features``: ``[ways * (support + queries), dim]``, class by class, each class's support first."""
    grouped = F.normalize(features.float(), dim=-1).view(ways, support + queries, -1)
    prototypes = F.normalize(grouped[:, :support].mean(dim=1), dim=-1)
    logits = SCALE * grouped[:, support:].reshape(ways * queries, -1) @ prototypes.T
    targets = torch.arange(ways, device=features.device).repeat_interleave(queries)
    return F.cross_entropy(logits, targets)


def episodic_finetune(backbone: nn.Module, examples, collate, labels: list[int], *, accelerator, episodes: int,
                      ways: int, support: int, queries: int, learning_rate: float, seed: int, set_epoch=None,
                      stop=None) -> dict:
    """Train ``backbone`` in place on ``episodes`` prototypical episodes of ``examples``; returns the phase's
    numbers (episodes, their shape, steps, the mean query loss over the first and over the last tenth of the steps,
    runtime) and ``stopped``."""
    dataset = EpisodeDataset(examples, labels, episodes=episodes, ways=ways, support=support, queries=queries,
                             seed=seed)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, collate_fn=EpisodeCollate(collate,
                                                                                        tuple(backbone.input_names)))

    def step_loss(model, inputs) -> torch.Tensor:
        return prototypical_loss(model(**inputs), ways=ways, support=support, queries=queries)

    # the schedule's length as one process counts it: the episodes are shared among the processes
    total = max(1, -(-episodes // accelerator.num_processes))
    result = tune_backbone(backbone, loader, step_loss, accelerator=accelerator, learning_rate=learning_rate,
                           epochs=1, total_steps=total, set_epoch=set_epoch, stop=stop)
    return {"episodes": episodes, "ways": ways, "support": support, "queries": queries, **result}


__all__ = ["EpisodeCollate", "EpisodeDataset", "episode_shape", "episodic_finetune", "prototypical_loss"]
