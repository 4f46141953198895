"""How far apart two domains' features are, before any adaptation: proxy A-distance and MMD.

* ``proxy_a_distance`` -- Ben-David et al. ("Analysis of representations for domain adaptation",
  NIPS 2006; "A theory of learning from different domains", 2010): train a linear classifier to
  tell source from target features and turn its held-out error ``e`` into ``2 (1 - 2 e)``. 0: the
  domains are indistinguishable to a linear probe; 2: perfectly separable. The classifier is ridge
  regression onto +-1 domain labels on standardized features (closed form, deterministic), scored by
  2-fold cross-validation on balanced halves; the ridge strength with the lowest error is kept, as
  the original picks the SVM's C.
* ``mmd`` -- the squared maximum mean discrepancy with a Gaussian kernel whose width is the median
  pairwise distance (Gretton et al., JMLR 2012), biased V-statistic.

Inputs are ``[n, d]`` arrays (numpy or torch), computed in float64; both are symmetric in the domains.
"""
from __future__ import annotations

import numpy as np

from ..errors import HFTransferError

RIDGE_STRENGTHS = (1e-3, 1e-1, 1e1, 1e3)  # times the number of training rows


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise HFTransferError(f"domain gap: need [n >= 2, d] feature arrays, got shape {x.shape}")
    return x


def balanced(source, target, max_per_domain: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Equal numbers of rows from each domain (at most ``max_per_domain``), drawn at random (seeded)."""
    s, t = _as_array(source), _as_array(target)
    n = min(len(s), len(t), max_per_domain or len(s) + len(t))
    rng = np.random.default_rng(seed)
    return s[rng.permutation(len(s))[:n]], t[rng.permutation(len(t))[:n]]


def domain_classifier_error(source, target, seed: int = 0) -> float:
    """Held-out error of the best linear source-vs-target classifier (2-fold, balanced domains)."""
    s, t = balanced(source, target, seed=seed)
    X = np.concatenate([s, t])
    y = np.concatenate([np.ones(len(s)), -np.ones(len(t))])
    rng = np.random.default_rng(seed + 1)
    # each fold holds half of each domain, so a fold's classifier never sees the domain ratio shift
    folds = [np.zeros(len(X), bool), np.zeros(len(X), bool)]
    for rows in (np.arange(len(s)), len(s) + np.arange(len(t))):
        order = rng.permutation(rows)
        folds[0][order[: len(order) // 2]] = True
    folds[1] = ~folds[0]
    if folds[0].sum() == 0 or folds[1].sum() == 0:
        raise HFTransferError("domain gap: need at least two examples per domain")
    best = 1.0
    for strength in RIDGE_STRENGTHS:
        wrong = 0
        for train in folds:
            test = ~train
            mean, std = X[train].mean(0), X[train].std(0) + 1e-8
            A, B = (X[train] - mean) / std, (X[test] - mean) / std
            A1, B1 = np.hstack([A, np.ones((len(A), 1))]), np.hstack([B, np.ones((len(B), 1))])
            if A1.shape[1] > len(A1):
                # d > n: the dual form solves an n x n system instead of d x d; it shrinks the bias too, which
                # costs nothing here: the domains are balanced and the features centred, so the bias is ~0
                w = A1.T @ np.linalg.solve(A1 @ A1.T + strength * len(A) * np.eye(len(A1)), y[train])
            else:
                reg = strength * len(A) * np.eye(A1.shape[1])
                reg[-1, -1] = 0.0  # the bias is not shrunk
                w = np.linalg.solve(A1.T @ A1 + reg, A1.T @ y[train])
            wrong += int(((B1 @ w) * y[test] <= 0).sum())
        best = min(best, wrong / len(X))
    return float(best)


def proxy_a_distance(source, target, seed: int = 0) -> float:
    """``2 (1 - 2 err)`` of a linear domain classifier, in [0, 2] (an error above chance counts as 0)."""
    return float(min(2.0, max(0.0, 2.0 * (1.0 - 2.0 * domain_classifier_error(source, target, seed)))))


def mmd(source, target, max_rows: int = 2000, seed: int = 0) -> float:
    """Squared MMD with a Gaussian kernel of median-distance width (at most ``max_rows`` rows per domain)."""
    s, t = balanced(source, target, max_rows, seed)
    X = np.concatenate([s, t])
    sq = (X * X).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * X @ X.T, 0.0)
    width2 = np.median(d2[np.triu_indices(len(X), 1)]) or 1.0
    K = np.exp(-d2 / width2)
    n = len(s)
    return float(K[:n, :n].mean() + K[n:, n:].mean() - 2 * K[:n, n:].mean())


def domain_gap(source, target, max_per_domain: int | None = 1000, seed: int = 0) -> dict:
    """``{"proxy_a_distance", "mmd", "samples_per_domain"}`` of two feature sets."""
    s, t = balanced(source, target, max_per_domain, seed)
    return {"proxy_a_distance": proxy_a_distance(s, t, seed), "mmd": mmd(s, t, seed=seed),
            "samples_per_domain": int(len(s))}
