"""Frozen-feature cache: run a frozen backbone over each split once, then train the head on the result.

While every backbone group is frozen (``linear_probe``, LP-FT's probe phase, ``gradual``'s first
epochs) the backbone maps each example to the same features every epoch, provided the input is not
randomly augmented. Recomputing them is the dominant cost of a linear probe; caching them makes each
epoch a pass over a ``[N, feature_dim]`` matrix. Training inputs of cached epochs therefore use the
*eval* transform (no augmentation); turn the cache off (``--feature_cache off``) to probe on
augmented images instead.

Features live in memory (``float32`` or ``float16``) and, with a ``cache_dir``, also on disk under a
key made of the backbone's weights, its config, the dataset fingerprint and the preprocessing, so a
later run with the same inputs skips extraction entirely.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import INDEX_COLUMN
from ..files import save_safetensors


class FeatureDataset(Dataset):
    """``{"features", "labels", "__index__"}`` rows of a split whose features are filled in later.

    Its length is known up front so DataLoaders can be built and registered for checkpointing
    before any extraction happens; ``fill`` supplies the tensors when the first cached epoch starts.
    """

    def __init__(self, length: int):
        self.length = length
        self.features: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.features is not None

    def fill(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if len(features) != self.length:
            raise RuntimeError(f"extracted {len(features)} feature rows for a split of {self.length} examples")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i], INDEX_COLUMN: i}


def cache_key(backbone: torch.nn.Module, dataset_fingerprint: str, preprocessing: str, dtype: str) -> str:
    """Hash of everything the features depend on: weights, architecture, data and preprocessing."""
    h = hashlib.sha256()
    h.update(json.dumps(backbone.config(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        if hasattr(tensor, "full_tensor"):  # an FSDP2 shard: the key is of the whole weights (a collective)
            tensor = tensor.full_tensor()
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"{dataset_fingerprint}|{preprocessing}|{dtype}".encode())
    return h.hexdigest()[:32]


@torch.no_grad()
def extract_features(accelerator, model, loader, dtype: torch.dtype, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every example of ``loader`` in dataset order, on every process.

    Each process embeds its shard; ``gather_for_metrics`` drops the padding of the last batch, and
    sorting by the example index restores dataset order. The features come out of the prepared model's own
    forward: under FSDP only that call gathers the sharded weights.
    """
    module = accelerator.unwrap_model(model)
    was_training = module.training
    module.eval()
    feats, labels, index = [], [], []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not accelerator.is_local_main_process, dynamic_ncols=True):
        idx, y = batch.pop(INDEX_COLUMN), batch.pop("labels")
        with accelerator.autocast():
            f = model(**batch).features
        f, y, idx = accelerator.gather_for_metrics((f.float(), y, idx))
        feats.append(f.to(dtype).cpu())
        labels.append(y.cpu())
        index.append(idx.cpu())
    module.train(was_training)
    order = torch.argsort(torch.cat(index))
    return torch.cat(feats)[order], torch.cat(labels)[order]


def load_or_extract(accelerator, model, loader, target: FeatureDataset, dtype: torch.dtype, desc: str,
                    cache_file: Path | None) -> str:
    """Fill ``target`` from ``cache_file`` when it exists, else by extraction (then save it). Returns how."""
    from safetensors.torch import load_file

    if cache_file is not None and cache_file.is_file():
        stored = load_file(cache_file)
        target.fill(stored["features"].to(dtype), stored["labels"])
        return f"loaded {cache_file.name}"
    features, labels = extract_features(accelerator, model, loader, dtype, desc)
    target.fill(features, labels)
    if cache_file is not None and accelerator.is_main_process:
        save_safetensors(cache_file, {"features": features.contiguous(), "labels": labels.contiguous()})
    accelerator.wait_for_everyone()
    return "extracted"


# ---- the cache in a training run ---------------------------------------------------------------
def uses_feature_cache(strategy, *, num_epochs: int, policy: str = "auto", train_norm: bool = False,
                       bn_stats: str = "frozen") -> bool:
    """The cache applies (``policy`` auto) when some epoch freezes the whole backbone and nothing inside it
    still learns (``train_norm`` trains norm layers; ``bn_stats`` none lets frozen BatchNorm statistics move)."""
    frozen_epochs = any(strategy.trainable_groups(e) == 0 for e in range(num_epochs))
    return policy == "auto" and frozen_epochs and not train_norm and bn_stats != "none"


def feature_cache_file(cache_dir: str | None, backbone, fingerprint: str, preprocessing: str, dtype: str,
                       split: str) -> Path | None:
    """Where ``--feature_cache_dir`` keeps a split's features (``hftransfer rank`` reads the same files)."""
    if not cache_dir:
        return None
    return Path(cache_dir) / f"{split}-{cache_key(backbone, fingerprint, preprocessing, dtype)}.safetensors"


def fill_feature_cache(accelerator, model, loaders, *, cache_dir: str | None = None, dtype_name: str = "float32") -> None:
    """Compute (or load from ``cache_dir``, ``--feature_cache_dir``) the frozen backbone's features of both splits,
    kept as ``dtype_name`` (``--feature_cache_dtype``)."""
    dtype = getattr(torch, dtype_name)
    backbone = accelerator.unwrap_model(model).backbone
    for split, source, target in (("train", loaders.train_extract, loaders.cached_train),
                                  ("eval", loaders.eval, loaders.cached_eval)):
        dataset = target.dataset
        if dataset.ready:
            continue
        cache_file = feature_cache_file(cache_dir, backbone, loaders.fingerprints[split], loaders.preprocessing,
                                        dtype_name, split)
        how = load_or_extract(accelerator, model, source, dataset, dtype, f"features ({split})", cache_file)
        accelerator.print(f"feature cache: {split} {tuple(dataset.features.shape)} {dtype_name}, {how}")
