"""``--head_init prototypes``: a cosine head whose class weights start at the class means of the frozen features.

Before the optimizer and ``accelerator.prepare``, the backbone (in eval mode: no dropout, BatchNorm on its running
statistics) embeds every training example under the eval transform (no augmentation), through the feature
cache's own extraction (``feature_cache.extract_features``: each process embeds a shard and every process gets all
the features back), so every rank computes the same head. Row c of the head is the L2-normalized mean feature of
class c: before any training step the head is a nearest-class-mean classifier under cosine similarity.
"""
from __future__ import annotations

import torch
from accelerate.data_loader import prepare_data_loader
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..errors import HFTransferError
from ..models.heads import CosineHead
from .feature_cache import extract_features


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[num_labels, dim]: the L2-normalized mean feature of each class (``labels``: integer classes)."""
    labels = labels.long()
    sums = torch.zeros(num_labels, features.shape[1], dtype=torch.float64).index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_labels)
    if (counts == 0).any():
        missing = int((counts == 0).nonzero()[0])
        raise HFTransferError(f"--head_init prototypes: class {missing} has no training example, so it has no mean "
                              "feature: add examples of it, or pass --head_init random")
    return F.normalize(sums / counts.unsqueeze(1), dim=-1).float()


def training_examples_loader(loaders, input_column: str, batch_size: int) -> DataLoader:
    """The training split under the eval transform, in order: the feature cache's extraction loader when the run has
    one, else the same loader built from the prepared split."""
    if loaders.train_extract is not None:
        return loaders.train_extract
    return DataLoader(loaders.pipeline.eval_view(loaders.prepared["train"], input_column), batch_size=batch_size,
                      shuffle=False, collate_fn=loaders.pipeline.collate)


def init_prototype_head(accelerator, model, loaders, input_column: str, batch_size: int, *, head: str,
                        cache_dtype: str = "float32", cache_dir: str | None = None) -> None:
    """Set ``model``'s cosine head to the class prototypes of the training examples (``model`` not yet prepared).
    ``head``: the ``--head`` the user passed (a linear one became cosine). When the run caches frozen features
    (and keeps none on disk), the first cached epoch reuses these instead of extracting them again."""
    if not isinstance(model.head, CosineHead):
        raise HFTransferError(f"--head_init prototypes needs a cosine head, not {type(model.head).__name__}: pass "
                              "--head cosine (or linear), or --head_init random")
    if model.multi_label:
        raise HFTransferError("--head_init prototypes takes one class per example, but the labels are multi-label: "
                              "pass --head_init random")
    # not accelerator.prepare: the run's checkpoints hold the state of exactly the loaders it prepares
    shard = prepare_data_loader(training_examples_loader(loaders, input_column, batch_size), device=accelerator.device,
                                num_processes=accelerator.num_processes, process_index=accelerator.process_index,
                                put_on_device=True)
    model.to(accelerator.device)
    features, labels = extract_features(accelerator, model, shard, torch.float32, "prototypes")
    with torch.no_grad():
        model.head.fc.weight.copy_(class_prototypes(features, labels, model.num_labels))
    cached = loaders.cached_train.dataset if loaders.cached_train is not None else None
    if cached is not None and not cache_dir and not cached.ready:
        cached.fill(features.to(getattr(torch, cache_dtype)), labels)
    switched = " (--head linear became cosine)" if head == "linear" else ""
    accelerator.print(f"head init: prototypes, each class's normalized mean feature of {len(features)} training "
                      f"examples (frozen backbone, eval mode, no augmentation) as its cosine-head row{switched}")
