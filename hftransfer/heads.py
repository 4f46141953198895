"""Classification heads that sit on the backbone's pooled features, and their losses."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .errors import HFTransferError


class LinearHead(nn.Module):
    """Dropout (optional) then one linear layer: the head of a linear probe."""

    def __init__(self, in_features: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features))


class MLPHead(nn.Module):
    """``Linear -> GELU -> Dropout`` for each hidden size, then the output layer."""

    def __init__(self, in_features: int, num_labels: int, hidden_sizes: Sequence[int] = (512,), dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(features))


HEADS = {"linear": LinearHead, "mlp": MLPHead}


def create_head(head: str | nn.Module, in_features: int, num_labels: int, **kwargs) -> nn.Module:
    """A head by name (``linear`` or ``mlp``, with ``hidden_sizes`` / ``dropout``) or a user module as is."""
    if isinstance(head, nn.Module):
        return head
    if head not in HEADS:
        raise HFTransferError(f"unknown head '{head}': use one of {', '.join(HEADS)} or pass an nn.Module")
    if head == "linear":
        kwargs.pop("hidden_sizes", None)
    return HEADS[head](in_features, num_labels, **kwargs)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for single-label (integer labels), BCE-with-logits for multi-label (multi-hot)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
