"""Classification heads that sit on the backbone's pooled features, and their losses."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HFTransferError

# the built-in heads are defined in the modeling file shipped with exports, so both compute the same logits
from .modeling_hftransfer import HEADS, CosineHead, LinearHead, MLPHead  # noqa: F401


def create_head(head: str | nn.Module, in_features: int, num_labels: int, **kwargs) -> nn.Module:
    """A head by name (``linear``, ``mlp`` with ``hidden_sizes``, or ``cosine``; each with ``dropout``) or a user module
    as is."""
    if isinstance(head, nn.Module):
        return head
    if head not in HEADS:
        raise HFTransferError(f"unknown head '{head}': use one of {', '.join(HEADS)} or pass an nn.Module")
    if head != "mlp":  # only the mlp head has hidden layers
        kwargs.pop("hidden_sizes", None)
    return HEADS[head](in_features, num_labels, **kwargs)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool,
                        label_smoothing: float = 0.0, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy for single-label, BCE-with-logits for multi-label (multi-hot), computed in float32.

    Single-label ``labels`` are integer classes, or float ``[batch, num_labels]`` soft targets (timm's
    Mixup / CutMix). ``class_weights``: per-class weights of the cross-entropy, or BCE's ``pos_weight``.
    """
    weight = class_weights.float() if class_weights is not None else None
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight)
    if labels.is_floating_point() and labels.dim() == 2:
        # soft targets already carry Mixup's label smoothing: smoothing them again would count it twice
        return F.cross_entropy(logits.float(), labels.float(), weight=weight)
    return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing)
