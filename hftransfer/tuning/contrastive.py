"""Contrastive fine-tuning of a backbone on label pairs, SetFit's first phase (Tunstall et al. 2022), any modality.

SetFit fine-tunes a sentence encoder so that examples of one class embed close together and examples of
different classes far apart, then fits a head on the frozen embeddings: with 8-64 labelled examples per class
that is steadier than fine-tuning encoder and head together. Nothing of it is written here:

* the pairs come from ``setfit.sampler.ContrastiveDataset``, over example *indices* rather than texts, so images
  and audio pair the same way: for every example ``iterations`` positive pairs (same label, score 1.0) and as
  many negative ones (different labels, score 0.0), SetFit's ``num_iterations``;
* the loss is sentence-transformers' ``CosineSimilarityLoss`` (squared error between the cosine of the two pooled
  embeddings and the pair's score), through its ``compute_loss_from_embeddings``. Both sides of a batch of pairs
  go through the backbone as one batch (``EmbeddingModel``): one forward per backward, as DDP requires (the loss's
  own ``forward`` would run the model once per side).

The loop is ``tuning.backbone_tuning``'s (AdamW, linear warm-up then decay, DDP-ready), pairs shuffled per epoch
by ``seed + epoch``; an image or audio backbone sees its training augmentation on both sides of each pair.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import HFTransferError
from .backbone_tuning import tune_backbone


def label_pairs(labels: list[int], iterations: int) -> list[tuple[int, int, float]]:
    """``(i, j, score)`` index pairs: ``iterations`` positive and ``iterations`` negative pairs per example, drawn by
    setfit's ``ContrastiveDataset`` (score 1.0 = same label). Deterministic: setfit shuffles with a fixed seed."""
    try:
        from setfit.sampler import ContrastiveDataset
    except ImportError:
        raise HFTransferError("--strategy contrastive draws its pairs with setfit: pip install 'hftransfer[fewshot]' "
                              "(setfit, sentence-transformers)") from None
    if len(set(labels)) < 2:
        raise HFTransferError("--strategy contrastive needs examples of at least two classes to make negative pairs")
    pairs = ContrastiveDataset(list(range(len(labels))), list(labels), multilabel=False, num_iterations=iterations)
    return [(int(p["sentence_1"]), int(p["sentence_2"]), float(p["label"])) for p in pairs]


class PairDataset(Dataset):
    """Pair ``k`` of ``pairs`` as ``(example i, example j, score)`` from ``examples`` (a prepared training view)."""

    def __init__(self, examples, pairs: list[tuple[int, int, float]]):
        self.examples, self.pairs = examples, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int):
        i, j, score = self.pairs[k]
        return self.examples[i], self.examples[j], score


class PairCollate:
    """A batch of B pairs -> ``(inputs, scores)``: the B left examples then the B right ones, collated as one batch
    the way the training loader collates (labels dropped: the pair's score is the target)."""

    def __init__(self, collate, input_names: tuple[str, ...]):
        self.collate, self.input_names = collate, input_names

    def __call__(self, rows):
        left, right, scores = zip(*rows)
        batch = self.collate(list(left) + list(right))
        return {k: v for k, v in batch.items() if k in self.input_names}, torch.tensor(scores, dtype=torch.float32)


class EmbeddingModel(nn.Module):
    """The backbone as sentence-transformers' losses call a model: ``model(features)["sentence_embedding"]``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": self.backbone(**features)}


def contrastive_steps(num_pairs: int, *, batch_size: int, epochs: int, num_processes: int = 1) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``num_pairs`` pairs split across ``num_processes``."""
    per_epoch = max(1, math.ceil(num_pairs / (batch_size * num_processes)))
    return per_epoch, per_epoch * epochs


def contrastive_finetune(backbone: nn.Module, examples, collate, labels: list[int], *, accelerator, iterations: int,
                         epochs: int, learning_rate: float, batch_size: int, seed: int, set_epoch=None,
                         stop=None) -> dict:
    """Train ``backbone`` in place on label pairs of ``examples`` (``tuning.backbone_tuning``'s loop); returns the
    phase's numbers (pairs, steps, the mean pair loss over the first and over the last tenth of the steps,
    runtime) and ``stopped`` (the signal that interrupted it, or 0)."""
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    pairs = label_pairs(labels, iterations)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(PairDataset(examples, pairs), batch_size=batch_size, shuffle=True, generator=generator,
                        collate_fn=PairCollate(collate, tuple(backbone.input_names)))
    model = EmbeddingModel(backbone)
    loss_fn = CosineSimilarityLoss(model)  # only its loss on given embeddings is used: one forward per step

    def step_loss(prepared, batch) -> torch.Tensor:
        inputs, scores = batch
        embeddings = prepared(inputs)["sentence_embedding"]
        return loss_fn.compute_loss_from_embeddings([embeddings[:len(scores)], embeddings[len(scores):]], scores)

    _, total = contrastive_steps(len(pairs), batch_size=batch_size, epochs=epochs)
    result = tune_backbone(model, loader, step_loss, accelerator=accelerator, learning_rate=learning_rate,
                           epochs=epochs, total_steps=total, set_epoch=set_epoch, stop=stop)
    return {"pairs": len(pairs), **result}


__all__ = ["EmbeddingModel", "PairCollate", "PairDataset", "contrastive_finetune", "contrastive_steps", "label_pairs"]
