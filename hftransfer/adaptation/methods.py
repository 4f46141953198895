"""Unsupervised domain adaptation: labelled source batches and unlabelled target batches train together.

A method is a module with ``loss(source_features, target_features, source_logits, target_logits,
target_index=None)`` (``target_index``: each target row's position in the target train split):

* ``dann`` -- DANN (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016): a
  domain discriminator on the features behind a gradient reversal layer, whose coefficient follows
  the paper's schedule ``2 / (1 + exp(-10 p)) - 1``. With ``warmup_steps`` > 0 (``--adversary_warmup_steps``,
  tllib's ``WarmStartGradientReverseLayer``) ``p = step / warmup_steps``: the reversal reaches ~1 after that many
  optimizer steps and stays there, whatever the run's length; with 0, ``p`` is the progress over the whole run.
* ``cdan`` -- CDAN+E (Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018): the
  discriminator sees the multilinear map ``features (x) softmax(logits)`` (randomized above 4096
  dimensions, as in the paper), behind the same gradient reversal (and warm-up) as DANN's, and examples
  are weighted by ``1 + exp(-entropy)``.
* ``mcc`` -- MCC (Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020):
  no adversary; the entropy-weighted, row-normalized class confusion of the target predictions
  (temperature 2.5) is pushed towards the identity.
* ``self_training`` -- self-training on confident pseudo-labels (Lee, "Pseudo-Label", 2013), refreshed once per
  epoch: from the second epoch on (the head is untrained before), the current model labels every target
  train example (``training.target_domain`` fills the method's buffers), and the loss is the cross-entropy
  of the target logits against the pseudo-labels of the rows whose top probability reached ``threshold``.
  The buffers (labels by target index, and the epoch they were made for) are checkpointed with the model,
  so a run resumed mid-epoch trains on the same pseudo-labels.

``DomainAdaptationModel`` holds the ``TransferModel`` and the method as ordinary submodules, so
accelerate, DDP, checkpoints and exact resume treat the discriminator like any other weights, while
the exported model is the inner ``TransferModel`` alone: a plain classifier. Without target inputs
(evaluation) it is the classifier.

Model selection without target labels is ``criteria``'s.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..data import INDEX_COLUMN
from ..errors import HFTransferError
from .criteria import entropy

TRAINING_METHODS = ("none", "dann", "cdan", "mcc", "self_training")  # a loss on paired source/target batches
DAPT = "dapt"  # a phase before fine-tuning: masked-language-model pretraining on the target text (adaptation.dapt)
METHODS = (*TRAINING_METHODS, DAPT, *(f"{DAPT}+{m}" for m in TRAINING_METHODS[1:]))
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


class DomainDiscriminator(nn.Sequential):
    """Source-vs-target classifier: two hidden layers of ``hidden`` units (as in DANN and CDAN) -> 1 logit."""

    def __init__(self, in_features: int, hidden: int = 1024):
        super().__init__(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 1))


class AdaptationMethod(nn.Module):
    """Base class: ``progress`` (0 -> 1 over training) and ``step`` (the optimizer step) are set by the loop before
    every step; ``warmup_steps``: the adversaries' reversal ramp (0: over the whole run)."""

    name = "none"

    def __init__(self, warmup_steps: int = 0):
        super().__init__()
        self.progress, self.step, self.warmup_steps = 0.0, 0, warmup_steps

    def reversal_coefficient(self) -> float:
        """The gradient reversal's coefficient now: DANN's shape over ``warmup_steps`` steps, else over the run."""
        if self.warmup_steps > 0:
            return grl_coefficient(self.step / self.warmup_steps)
        return grl_coefficient(self.progress)

    def loss(self, source_features, target_features, source_logits, target_logits, target_index=None) -> torch.Tensor:
        raise NotImplementedError


class DANN(AdaptationMethod):
    name = "dann"

    def __init__(self, feature_dim: int, num_labels: int, hidden: int = 1024, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.discriminator = DomainDiscriminator(feature_dim, hidden)

    def loss(self, source_features, target_features, source_logits, target_logits, target_index=None):
        features = torch.cat([source_features, target_features]).float()
        return domain_loss(self.discriminator(reverse_gradient(features, self.reversal_coefficient())),
                           len(source_features))


class CDAN(AdaptationMethod):
    """CDAN+E; ``entropy_conditioning=False`` gives plain CDAN."""

    name = "cdan"

    def __init__(self, feature_dim: int, num_labels: int, hidden: int = 1024, entropy_conditioning: bool = True,
                 seed: int = 0, warmup_steps: int = 0):
        super().__init__(warmup_steps)
        self.entropy_conditioning = entropy_conditioning
        self.randomized = feature_dim * num_labels > RANDOMIZED_ABOVE
        if self.randomized:
            g = torch.Generator().manual_seed(seed)
            # fixed random projections, saved with the model so a resumed run uses the same map
            self.register_buffer("feature_projection", torch.randn(feature_dim, RANDOMIZED_DIM, generator=g))
            self.register_buffer("label_projection", torch.randn(num_labels, RANDOMIZED_DIM, generator=g))
        in_features = RANDOMIZED_DIM if self.randomized else feature_dim * num_labels
        self.discriminator = DomainDiscriminator(in_features, hidden)

    def multilinear_map(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``features (x) probs`` flattened (``[n, d * K]``), or its randomized version ``[n, 1024]``."""
        if self.randomized:
            return (features @ self.feature_projection) * (probs @ self.label_projection) / math.sqrt(RANDOMIZED_DIM)
        return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)

    def loss(self, source_features, target_features, source_logits, target_logits, target_index=None):
        features = torch.cat([source_features, target_features]).float()
        # the predictions condition the adversary but are not trained through it (as in the paper's code)
        probs = F.softmax(torch.cat([source_logits, target_logits]).float(), dim=1).detach()
        h = self.multilinear_map(reverse_gradient(features, self.reversal_coefficient()), probs)
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

    def loss(self, source_features, target_features, source_logits, target_logits, target_index=None):
        return minimum_class_confusion(target_logits, self.temperature)


class SelfTraining(AdaptationMethod):
    """Cross-entropy of the target logits against the pseudo-labels of their rows (by ``target_index``).

    ``pseudo_labels[i]`` is target train example ``i``'s label (-1: none, below the threshold or not made yet) and
    ``pseudo_epoch`` the epoch they were made for (-1: never); both are buffers, so checkpoints keep them.
    """

    name = "self_training"

    def __init__(self, feature_dim: int, num_labels: int, num_target: int, threshold: float = 0.9):
        super().__init__()
        self.num_labels, self.threshold = num_labels, threshold
        self.register_buffer("pseudo_labels", torch.full((num_target,), -1, dtype=torch.long))
        self.register_buffer("pseudo_epoch", torch.tensor(-1, dtype=torch.long))

    @torch.no_grad()
    def set_pseudo_labels(self, index: torch.Tensor, confidence: torch.Tensor, predicted: torch.Tensor,
                          epoch: int) -> torch.Tensor:
        """Label target examples ``index`` for ``epoch`` from the model's top class ``predicted`` and its probability
        ``confidence``: kept where it reaches the threshold, else -1 (as is every example not in ``index``).
        Returns the pseudo-labelled examples per class."""
        labels = torch.where(confidence.float() >= self.threshold, predicted.long(), -1)
        self.pseudo_labels.fill_(-1)
        self.pseudo_labels[index.to(self.pseudo_labels.device).long()] = labels.to(self.pseudo_labels.device)
        self.pseudo_epoch.fill_(epoch)
        kept = self.pseudo_labels[self.pseudo_labels >= 0].cpu()
        return torch.bincount(kept, minlength=self.num_labels)

    def loss(self, source_features, target_features, source_logits, target_logits, target_index=None):
        if target_index is None:
            raise HFTransferError("self_training needs each target row's index into the target train split "
                                  f"(the batch's {TARGET_PREFIX}{INDEX_COLUMN})")
        labels = self.pseudo_labels[target_index.to(self.pseudo_labels.device).long()]
        keep = (labels >= 0).float()
        # the mean over the pseudo-labelled rows (0 without any), with no host sync on the count
        per_row = F.cross_entropy(target_logits.float(), labels.clamp_min(0), reduction="none")
        return (per_row * keep).sum() / keep.sum().clamp_min(1.0)


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
        raise HFTransferError(f"unknown domain_adaptation '{name}' (--domain_adaptation): use one of "
                              f"{', '.join(METHODS)}")
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
        return DANN(feature_dim, num_labels, warmup_steps=adversary_warmup_steps)
    if name == "cdan":
        return CDAN(feature_dim, num_labels, seed=seed, warmup_steps=adversary_warmup_steps)
    if name == "mcc":
        return MCC(feature_dim, num_labels, mcc_temperature)
    if name == "self_training":
        return SelfTraining(feature_dim, num_labels, num_target, self_training_threshold)
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
        target_index = target.pop(INDEX_COLUMN, None)  # the target rows' positions in the target train split
        if not target:
            return self.model(labels=labels, features=features, **source)
        n = len(next(iter(source.values())))
        joint = self.model.forward_features(**concat_inputs(source, target))
        logits = self.model.forward_head(joint.to(next(self.model.head.parameters(), joint).dtype))
        out = self.model.output(logits[:n], labels)
        adaptation = self.method.loss(joint[:n], joint[n:], logits[:n], logits[n:], target_index=target_index)
        out.loss = out.loss + self.weight * adaptation
        out.logits = logits[:n]
        return out
