"""Normalization layers: which types count as norms, and the BatchNorm-statistics policy (``--bn_stats``).

A leaf of ``models``: the option groups read ``BN_STATS`` from here without building a model.
"""
from __future__ import annotations

from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

# --bn_stats: which BatchNorm layers keep their pretrained running statistics while training
BN_STATS_DESCRIPTIONS = {
    "frozen": "BatchNorm layers of frozen groups keep their pretrained running statistics",
    "all": "every BatchNorm layer keeps its pretrained running statistics (eval mode while training)",
    "none": "BatchNorm running statistics update in every layer",
}
BN_STATS = tuple(BN_STATS_DESCRIPTIONS)


def keep_bn_statistics(model: nn.Module, policy: str) -> None:
    """Put the BatchNorm layers ``policy`` protects in eval mode (call after ``model.train()``): ``frozen``
    those whose affine parameters are all frozen, ``all`` every one, ``none`` no layer."""
    if policy == "none":
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (policy == "all" or _is_frozen(module)):
            module.eval()


def _is_frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)
