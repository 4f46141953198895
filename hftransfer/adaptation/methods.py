"""Unsupervised domain adaptation: labelled source batches and unlabelled target batches train together.

A method is a module with ``loss(source_features, target_features, source_logits, target_logits)``:

* ``dann`` -- DANN (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016): a
  domain discriminator on the features behind a gradient reversal layer, whose coefficient follows
  the paper's schedule ``2 / (1 + exp(-10 p)) - 1`` over training progress ``p``.
* ``cdan`` -- CDAN+E (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018): the
  discriminator sees the multilinear map ``features (x) softmax(logits)`` (randomized above 4096
  dimensions, as in the paper), and examples are weighted by ``1 + exp(-entropy)``.
* ``mcc`` -- MCC (Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020):
  no adversary; the entropy-weighted, row-normalized class confusion of the target predictions
  (temperature 2.5) is pushed towards the identity.

``DomainAdaptationModel`` holds the ``TransferModel`` and the method as ordinary submodules, so
accelerate, DDP, checkpoints and exact resume treat the discriminator like any other weights, while
the exported model is the inner ``TransferModel`` alone: a plain classifier. Without target inputs
(evaluation) it is the classifier.

Model selection without target labels (``selection_scores``): the information-maximization score of
the target predictions, ``IM = H(mean p) - mean H(p)`` divided by ``log K`` (high when predictions are
confident *and* use every class), added to the source validation accuracy (which guards against a
model that is confidently wrong: entropy alone rewards collapse onto a wrong but sharp solution).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HFTransferError

TRAINING_METHODS = ("none", "dann", "cdan", "mcc", "self_training")  # a loss on paired source/target batches
DAPT = "dapt"  # a phase before fine-tuning: masked-language-model pretraining on the target text (adaptation.dapt)
METHODS = (*TRAINING_METHODS, DAPT, *(f"{DAPT}+{m}" for m in TRAINING_METHODS[1:]))
SELECTION_CRITERIA = ("source_im", "source", "im")
TARGET_PREFIX = "target_"  # batch keys of the target half of a paired batch
RANDOMIZED_ABOVE = 4096  # CDAN: a multilinear map larger than this is randomized
RANDOMIZED_DIM = 1024


class GradientReverse(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``-coeff``."""

    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return GradientReverse.apply(x, coeff)


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule: 0 at the start of training, rising to ~1 (``2 / (1 + exp(-gamma p)) - 1``)."""
    return 2.0 / (1.0 + math.exp(-gamma * min(max(progress, 0.0), 1.0))) - 1.0


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row Shannon entropy (nats) of probability rows."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


class DomainDiscriminator(nn.Sequential):
    """Source-vs-target classifier: two hidden layers of ``hidden`` units (as in DANN and CDAN) -> 1 logit."""

    def __init__(self, in_features: int, hidden: int = 1024):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))


class AdaptationMethod(nn.Module):
    """Base class: ``progress`` (0 -> 1 over training) is set by the loop before every step."""

    name = "none"

    def __init__(self):
        super().__init__()
        self.progress = 0.0

    def loss(self, source_features, target_features, source_logits, target_logits) -> torch.Tensor:
        raise NotImplementedError


class DANN(AdaptationMethod):
    name = "dann"

    def __init__(self, feature_dim: int, num_labels: int, hidden: int = 1024):
        super().__init__()
        self.discriminator = DomainDiscriminator(feature_dim, hidden)

    def loss(self, source_features, target_features, source_logits, target_logits):
        features = torch.cat([source_features, target_features]).float()
        return domain_loss(self.discriminator(reverse_gradient(features, grl_coefficient(self.progress))),
                           len(source_features))


class CDAN(AdaptationMethod):
    """CDAN+E; ``entropy_conditioning=False`` gives plain CDAN."""

    name = "cdan"

    def __init__(self, feature_dim: int, num_labels: int, hidden: int = 1024, entropy_conditioning: bool = True,
                 seed: int = 0):
        super().__init__()
        self.entropy_conditioning = entropy_conditioning
        self.randomized = feature_dim * num_labels > RANDOMIZED_ABOVE
        if self.randomized:
            g = torch.Generator().manual_seed(seed)
            # fixed random projections, saved with the model so a resumed run uses the same map
            self.register_buffer("feature_projection", torch.randn(feature_dim, RANDOMIZED_DIM, generator=g))
            self.register_buffer("label_projection", torch.randn(num_labels, RANDOMIZED_DIM, generator=g))
        self.discriminator = DomainDiscriminator(RANDOMIZED_DIM if self.randomized else feature_dim * num_labels, hidden)

    def multilinear_map(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``features (x) probs`` flattened (``[n, d * K]``), or its randomized version ``[n, 1024]``."""
        if self.randomized:
            return (features @ self.feature_projection) * (probs @ self.label_projection) / math.sqrt(RANDOMIZED_DIM)
        return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)

    def loss(self, source_features, target_features, source_logits, target_logits):
        features = torch.cat([source_features, target_features]).float()
        # the predictions condition the adversary but are not trained through it (as in the paper's code)
        probs = F.softmax(torch.cat([source_logits, target_logits]).float(), dim=1).detach()
        h = self.multilinear_map(reverse_gradient(features, grl_coefficient(self.progress)), probs)
        weights = None
        if self.entropy_conditioning:
            w = 1.0 + torch.exp(-entropy(probs))
            n = len(source_features)
            # each domain's weights sum to its size: neither domain dominates the adversary
            weights = torch.cat([w[:n] / w[:n].sum() * n, w[n:] / w[n:].sum() * (len(w) - n)])
        return domain_loss(self.discriminator(h), len(source_features), weights)


class MCC(AdaptationMethod):
    name = "mcc"

    def __init__(self, feature_dim: int, num_labels: int, temperature: float = 2.5):
        super().__init__()
        self.temperature = temperature

    def loss(self, source_features, target_features, source_logits, target_logits):
        return minimum_class_confusion(target_logits, self.temperature)


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """MCC loss of a batch of target logits: the off-diagonal mass of the normalized class confusion / K."""
    batch, classes = logits.shape
    probs = F.softmax(logits.float() / temperature, dim=1)
    w = 1.0 + torch.exp(-entropy(probs).detach())
    w = (batch * w / w.sum()).unsqueeze(1)
    confusion = (probs * w).t() @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / classes


def domain_loss(domain_logits: torch.Tensor, num_source: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the discriminator: source rows (the first ``num_source``) are 1, target 0."""
    labels = torch.zeros_like(domain_logits.squeeze(1))
    labels[:num_source] = 1.0
    return F.binary_cross_entropy_with_logits(domain_logits.squeeze(1), labels, weight=weights)


def parse_method(name: str) -> tuple[bool, str]:
    """``--domain_adaptation`` as (continued pretraining first?, the training-time method): ``dapt+self_training``
    is ``(True, "self_training")``, ``dapt`` is ``(True, "none")``, ``mcc`` is ``(False, "mcc")``."""
    if name not in METHODS:
        raise HFTransferError(f"unknown domain_adaptation '{name}' (--domain_adaptation): use one of {', '.join(METHODS)}")
    if name == DAPT:
        return True, "none"
    if name.startswith(DAPT + "+"):
        return True, name[len(DAPT) + 1:]
    return False, name


def create_method(name: str, feature_dim: int, num_labels: int, seed: int = 0,
                  mcc_temperature: float = 2.5, *, num_target: int = 0, self_training_threshold: float = 0.9,
                  adversary_warmup_steps: int = 0) -> AdaptationMethod | None:
    """The adaptation module for ``--domain_adaptation name`` (None for ``none``)."""
    if name == "none":
        return None
    if name == "dann":
        return DANN(feature_dim, num_labels)
    if name == "cdan":
        return CDAN(feature_dim, num_labels, seed=seed)
    if name == "mcc":
        return MCC(feature_dim, num_labels, mcc_temperature)
    raise HFTransferError(f"unknown domain_adaptation '{name}' (--domain_adaptation): use one of {', '.join(METHODS)}")


def split_target(inputs: dict) -> tuple[dict, dict]:
    """A paired batch's source inputs and its target inputs (the ``target_`` prefix removed)."""
    source = {k: v for k, v in inputs.items() if not k.startswith(TARGET_PREFIX)}
    target = {k[len(TARGET_PREFIX):]: v for k, v in inputs.items() if k.startswith(TARGET_PREFIX)}
    return source, target


def concat_inputs(source: dict, target: dict) -> dict:
    """One batch of both domains (source rows first); token tensors are right-padded to a common length
    with 0, which the attention mask hides."""
    out = {}
    for key in source:
        a, b = source[key], target[key]
        if a.dim() == 2 and b.dim() == 2 and a.shape[1] != b.shape[1]:  # text: [batch, sequence]
            width = max(a.shape[1], b.shape[1])
            a, b = F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))
        out[key] = torch.cat([a, b])
    return out


class DomainAdaptationModel(nn.Module):
    """A ``TransferModel`` plus an adaptation method; the loss adds ``weight * method.loss`` on paired batches.

    Both domains go through the backbone as one batch, so BatchNorm layers in training mode see the
    statistics of both, as in the methods' reference code.
    """

    def __init__(self, model: nn.Module, method: AdaptationMethod, weight: float = 1.0):
        super().__init__()
        self.model, self.method, self.weight = model, method, weight

    def forward(self, labels=None, features=None, **inputs):
        source, target = split_target(inputs)
        if not target:
            return self.model(labels=labels, features=features, **source)
        n = len(next(iter(source.values())))
        joint = self.model.forward_features(**concat_inputs(source, target))
        logits = self.model.forward_head(joint.to(next(self.model.head.parameters(), joint).dtype))
        out = self.model.output(logits[:n], labels)
        adaptation = self.method.loss(joint[:n], joint[n:], logits[:n], logits[n:])
        out.loss = out.loss + self.weight * adaptation
        out.logits = logits[:n]
        return out


def target_scores(probs: torch.Tensor) -> dict:
    """Label-free scores of target predictions ``[n, K]``: mean entropy, the entropy of the mean
    prediction (diversity), and the information-maximization score, both normalized by ``log K``."""
    k = probs.shape[1]
    mean_entropy = entropy(probs).mean().item() / math.log(k)
    diversity = entropy(probs.mean(0, keepdim=True)).item() / math.log(k)
    return {"target_entropy": mean_entropy, "target_diversity": diversity, "target_im": diversity - mean_entropy}


def selection_score(criterion: str, source_accuracy: float, im: float | None) -> float:
    """The number that picks the exported epoch without target labels (higher is better)."""
    if criterion == "source" or im is None:
        return source_accuracy
    if criterion == "im":
        return im
    return source_accuracy + im


SELECTION_RULES = {
    "source_im": "source validation accuracy + the information-maximization score of the target predictions",
    "source": "source validation accuracy",
    "im": "the information-maximization score of the target predictions",
}
