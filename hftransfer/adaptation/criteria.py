"""Label-free model selection: which epoch, and which of {adapted, source-only}, to export without target labels.

Every criterion is a number where higher is better, computed at each evaluation from what the model does on
the labelled source validation split and on unlabelled target examples:

* ``source`` -- source validation accuracy. Blind to the target.
* ``im`` -- information maximization of the target predictions, ``H(mean p) - mean H(p)`` over ``log K``:
  confident and diverse. Any method that minimizes target entropy (MCC, self-training) raises it whatever
  its accuracy, so it prefers those methods by construction.
* ``source_im`` -- ``source + im``: the source accuracy guards against confident collapse, not against
  confident mistakes.
* ``snd`` -- soft neighbourhood density (Saito et al., "Tune it the Right Way", ICCV 2021): the mean entropy
  of each target example's softmax-weighted neighbourhood (cosine similarity of the prediction vectors,
  temperature 0.05, itself excluded), over ``log(n - 1)``. High when target predictions form dense clusters.
* ``dev`` -- deep embedded validation (You et al., "Towards Accurate Model Selection in Deep Unsupervised
  Domain Adaptation", ICML 2019) of the 0-1 error, negated: each source validation example's error reweighted
  by the density ratio ``p_target(x) / p_source(x)`` of its features, estimated by a logistic-regression
  domain classifier on the top 16 principal components of the model's own features (cross-fitted: no example
  is weighted by a classifier that saw it), with the paper's control variate to cut the variance. An estimate
  of the target error; the criterion that uses labels (the source's) where the target's would be.
* ``dev_loss`` -- the same estimator on the cross-entropy, as the paper has it. It estimates the target
  log-loss, which also punishes over-confidence: an early, hesitant epoch can beat a later, more accurate one.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

SELECTION_CRITERIA = ("source_im", "dev", "dev_loss", "snd", "source", "im")
SELECTION_RULES = {
    "dev": "deep embedded validation: minus the source validation error weighted by how target-like each "
           "example's features are (You et al. 2019), an estimate of minus the target error",
    "dev_loss": "deep embedded validation: minus the source validation loss weighted by how target-like each "
                "example's features are (You et al. 2019)",
    "source_im": "source validation accuracy + the information-maximization score of the target predictions",
    "snd": "soft neighbourhood density of the target predictions (Saito et al. 2021)",
    "source": "source validation accuracy",
    "im": "the information-maximization score of the target predictions",
}
SND_TEMPERATURE = 0.05
DOMAIN_CLASSIFIER_L2 = 1.0  # ridge penalty of the domain classifier on standardized components: smooth ratios
# the domain classifier sees the features' top principal components only: a few hundred examples of 384-1280
# dimensions are always linearly separable, which would put all the weight on a handful of source examples
DOMAIN_CLASSIFIER_COMPONENTS = 16
DENSITY_CLIP = 1e-3  # the domain classifier's probabilities are kept in [clip, 1 - clip]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row Shannon entropy (nats) of probability rows."""
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1)


def target_scores(probs: torch.Tensor) -> dict:
    """Label-free scores of target predictions ``[n, K]``: mean entropy, the entropy of the mean
    prediction (diversity), and the information-maximization score, both normalized by ``log K``."""
    k = probs.shape[1]
    mean_entropy = entropy(probs).mean().item() / math.log(k)
    diversity = entropy(probs.mean(0, keepdim=True)).item() / math.log(k)
    return {"target_entropy": mean_entropy, "target_diversity": diversity, "target_im": diversity - mean_entropy}


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = SND_TEMPERATURE) -> float:
    """SND of target prediction rows ``[n, K]`` (n >= 3), normalized to [0, 1] by ``log(n - 1)``."""
    n = len(probs)
    if n < 3:
        return 0.0
    p = F.normalize(probs.double(), dim=1)
    similarity = p @ p.t() / temperature
    similarity.fill_diagonal_(-math.inf)  # an example is not its own neighbour
    neighbours = torch.softmax(similarity, dim=1)
    return entropy(neighbours).mean().item() / math.log(n - 1)


def fit_domain_classifier(source: torch.Tensor, target: torch.Tensor, l2: float = DOMAIN_CLASSIFIER_L2,
                          iterations: int = 100, components: int = DOMAIN_CLASSIFIER_COMPONENTS):
    """Logistic regression ``P(target | x)`` on the standardized top principal components of both domains'
    features; returns a function of features."""
    x = torch.cat([source, target]).double()
    center = x.mean(0)
    k = max(1, min(components, x.shape[1], len(x) - 1))
    _, _, v = torch.linalg.svd(x - center, full_matrices=False)
    basis = v[:k].t()  # [d, k]
    z = (x - center) @ basis
    mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
    x = (z - mean) / std
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
    # each domain weighs the same in the fit; the prior is put back in the ratio (density_ratio)
    w = torch.cat([torch.full((len(source),), 0.5 / len(source)), torch.full((len(target),), 0.5 / len(target))])
    weight = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.double, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (F.binary_cross_entropy_with_logits(x @ weight + bias, y, reduction="none") * w.double()).sum()
        loss = loss + l2 * (weight ** 2).sum() / len(x)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight, bias = weight.detach(), bias.detach()
    return lambda features: torch.sigmoid(((((features.double() - center) @ basis) - mean) / std) @ weight + bias)


def density_ratios(source: torch.Tensor, target: torch.Tensor, seed: int = 0, folds: int = 2) -> torch.Tensor:
    """``p_target(x) / p_source(x)`` of each source row, from a domain classifier fitted on the other folds of both
    domains (cross-fitting), so no source example is weighted by a classifier that saw it."""
    g = torch.Generator().manual_seed(seed)
    source_fold = torch.randperm(len(source), generator=g) % folds
    target_fold = torch.randperm(len(target), generator=g) % folds
    ratios = torch.empty(len(source), dtype=torch.double)
    for fold in range(folds):
        held = source_fold == fold
        classifier = fit_domain_classifier(source[~held], target[target_fold != fold])
        p = classifier(source[held]).clamp(DENSITY_CLIP, 1 - DENSITY_CLIP)
        # equal-weight fit: the odds p / (1 - p) are already the density ratio (no prior correction needed)
        ratios[held] = p / (1 - p)
    return ratios


def importance_weights(source_features: torch.Tensor, target_features: torch.Tensor,
                       seed: int = 0) -> torch.Tensor | None:
    """DEV's weights of the source validation rows (the density ratios, whose mean is 1 in expectation), or None
    when a domain has too few rows to fit. They are not renormalized: the control variate corrects their mean."""
    if len(source_features) < 4 or len(target_features) < 4:
        return None
    return density_ratios(source_features, target_features, seed)


def control_variate_mean(weights: torch.Tensor | None, values: torch.Tensor) -> float:
    """DEV's estimate of the target mean of ``values`` (losses or errors): the weighted mean with the control
    variate ``eta * (mean w - 1)``, ``eta = -Cov(w v, w) / Var(w)``; the plain mean without weights."""
    values = values.double()
    if weights is None:
        return values.mean().item()
    weighted = weights * values
    var = weights.var()
    eta = -((weighted - weighted.mean()) * (weights - weights.mean())).mean() / var if var > 1e-12 else 0.0
    return (weighted.mean() + eta * weights.mean() - eta).item()


def deep_embedded_validation(source_features: torch.Tensor, source_losses: torch.Tensor,
                             target_features: torch.Tensor, seed: int = 0) -> float:
    """DEV's estimate of the target risk (lower is better) from per-example source validation losses or errors."""
    return control_variate_mean(importance_weights(source_features, target_features, seed), source_losses)


def selection_scores(*, source_accuracy: float, target_probs: torch.Tensor, source_features: torch.Tensor | None = None,
                     source_losses: torch.Tensor | None = None, source_errors: torch.Tensor | None = None,
                     target_features: torch.Tensor | None = None, seed: int = 0) -> dict:
    """Every criterion's score (higher is better) of one evaluation; ``dev`` needs the source validation
    features and per-example errors (0 / 1), ``dev_loss`` their losses, both the target features."""
    im = target_scores(target_probs)["target_im"]
    scores = {"source": source_accuracy, "im": im, "source_im": source_accuracy + im,
              "snd": soft_neighborhood_density(target_probs)}
    if source_features is not None and target_features is not None:
        # one domain classifier per evaluation: both DEV variants weight the examples alike
        weights = importance_weights(source_features, target_features, seed)
        if source_errors is not None:
            scores["dev"] = -control_variate_mean(weights, source_errors)
        if source_losses is not None:
            scores["dev_loss"] = -control_variate_mean(weights, source_losses)
    return scores


def selection_score(criterion: str, scores: dict) -> float:
    """The number that picks the exported epoch without target labels (higher is better)."""
    return scores.get(criterion, scores["source"])
