"""Transferability scores: how well frozen features suit a labelled classification task, no training.

* ``logme`` -- LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021): mean over classes of the per-sample log evidence of a Bayesian linear
  regression from the features onto the one-hot class column, with prior and noise precisions
  (alpha, beta) set by the paper's fixed-point iteration. One thin SVD of F serves every class and
  every iteration, so it costs the same with d > n as with d < n and never forms a d x d matrix.
  Features are used raw, as in the paper: no centering or rescaling, so the score depends on scale.
* ``h_score`` -- H-score (Bao et al., "An Information-Theoretic Approach to Transferability in Task
  Transfer Learning", ICIP 2019): ``tr(cov(f)^-1 cov(E[f|y]))``, population covariances. By default
  ``cov(f)`` is the Ledoit-Wolf estimate with shrinkage a and ``cov(E[f|y])`` is scaled by (1 - a):
  the regularized H-score of Ibrahim et al. ("Newer is not always better", ICLR 2022), well
  conditioned when d > n. In [0, K - 1] and invariant to a global rescaling of the features.

Both are higher-is-better and only comparable across feature extractors on the same labelled data.
Inputs: ``features`` [n, d] (numpy or torch, any float dtype; computed in float64) and ``labels`` [n]
(any class ids; the distinct values are remapped to 0..K-1, so absent ids do not matter).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import HFTransferError

__all__ = ["HIGHER_IS_BETTER", "METRICS", "h_score", "logme", "logme_per_class", "transferability_scores"]

METRICS = ("logme", "h_score")
HIGHER_IS_BETTER = {"logme": True, "h_score": True}  # both: larger score = features expected to transfer better

_PRECISION_RANGE = (1e-30, 1e30)  # clamp for alpha, beta: beta -> inf when a class is exactly linearly fit
_TINY = 1e-250  # floor for ||m||^2 and the residual before dividing by them


def _to_numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        x = x.double() if dtype is not None else x
        return x.numpy()
    return np.asarray(x, dtype=dtype)


def _prepare(features, labels):
    """(float64 features [n, d], class codes [n] in 0..K-1, class counts [K]), or HFTransferError."""
    try:
        F = _to_numpy(features, np.float64)
    except (TypeError, ValueError) as e:
        raise HFTransferError(f"features must be a numeric [n, d] array or tensor ({e})") from None
    if F.ndim != 2 or F.shape[1] == 0:
        raise HFTransferError(f"features must be 2-D [n_samples, n_features], got shape {tuple(F.shape)}")
    y = _to_numpy(labels)
    if y.ndim != 1:
        raise HFTransferError(f"labels must be 1-D [n_samples], got shape {tuple(y.shape)}")
    n = F.shape[0]
    if n != len(y):
        raise HFTransferError(f"features have {n} rows but labels have {len(y)} entries; pass one label per row")
    if n < 2:
        raise HFTransferError(f"transferability needs at least 2 samples, got {n}")
    if not np.isfinite(F).all():
        raise HFTransferError("features contain nan or inf; drop or fix those rows before scoring")
    _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
    if len(counts) < 2:
        raise HFTransferError(f"labels have {len(counts)} distinct class; transferability needs at least 2")
    return F, codes.reshape(-1), counts


def _class_sums(X: np.ndarray, codes: np.ndarray, num_classes: int) -> np.ndarray:
    """[K, cols] per-class row sums of ``X`` (every class is present after remapping)."""
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(num_classes))
    return np.add.reduceat(X[order], starts, axis=0)


# ---------------------------------------------------------------- LogME


def _thin_svd(F: np.ndarray):
    """(U_r [n, r], s_r [r]) of F = U S V^T, keeping singular values above the usual rank cutoff."""
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    cutoff = (s[0] if len(s) else 0.0) * max(F.shape) * np.finfo(np.float64).eps
    r = int(np.count_nonzero(s > cutoff))
    return U[:, :r], s[:r]


def _logme_terms(s2, z, alpha, beta):
    """||m||^2, in-span part of ||F m - y||^2, gamma and r - gamma, per column of z, in the SVD basis."""
    denom = alpha + beta * s2[:, None]  # [r, K] eigenvalues of A restricted to the row space
    m2 = (beta**2 * s2[:, None] * z**2 / denom**2).sum(0)
    res_in = ((alpha * z / denom) ** 2).sum(0)
    gamma = (beta * s2[:, None] / denom).sum(0)
    # n - gamma as a sum of positive terms: no cancellation when gamma -> n (d >= n, large beta)
    rest = (alpha / denom).sum(0)
    return m2, res_in, gamma, rest


def _logme_evidence(s2, z, y_perp, n, alpha, beta):
    """log p(y | alpha, beta) / n for each column of z (exact marginal likelihood at these alpha, beta)."""
    m2, res_in, _, _ = _logme_terms(s2, z, alpha, beta)
    residual = res_in + y_perp
    # d/2 log alpha - 1/2 log|A| with log|A| = sum log(alpha + beta s^2) + (d - r) log alpha
    log_det_term = -0.5 * np.log1p(beta * s2[:, None] / alpha).sum(0)
    evidence = (0.5 * n * np.log(beta) - 0.5 * alpha * m2 - 0.5 * beta * residual
                + log_det_term - 0.5 * n * math.log(2 * math.pi))
    return evidence / n


def _logme_fit(s, z, y_perp, n, max_iter=100, tol=1e-3):
    """Fixed-point evidence maximisation, one column of ``z`` (= U_r^T y) per target.

    ``s`` are the kept singular values of F, ``y_perp`` = ||y||^2 - ||z||^2 per target (the part of
    y outside the column space of F). Returns (evidence / n, alpha, beta), arrays over targets.
    Targets stop iterating individually, when alpha/beta changes by less than ``tol`` relative. The
    evidence is then re-evaluated at the final (alpha, beta), so it is exactly log p(y | alpha, beta) / n.
    """
    lo, hi = _PRECISION_RANGE
    s2 = np.asarray(s, np.float64) ** 2
    z = np.asarray(z, np.float64)  # [r, targets]
    y_perp = np.broadcast_to(np.asarray(y_perp, np.float64), (z.shape[1],))
    r = len(s2)
    alpha, beta = np.ones(z.shape[1]), np.ones(z.shape[1])
    active = np.arange(z.shape[1])
    for _ in range(max_iter):
        a, b, za = alpha[active], beta[active], z[:, active]
        m2, res_in, gamma, rest = _logme_terms(s2, za, a, b)
        new_a = np.clip(gamma / np.maximum(m2, _TINY), lo, hi)
        new_b = np.clip((n - r + rest) / np.maximum(res_in + y_perp[active], _TINY), lo, hi)
        done = np.abs(new_a / new_b - a / b) <= tol * (a / b)
        alpha[active], beta[active] = new_a, new_b
        active = active[~done]
        if not len(active):
            break
    return _logme_evidence(s2, z, y_perp, n, alpha, beta), alpha, beta


def _logme_single(features, y, max_iter=100, tol=1e-3):
    """(evidence / n, alpha, beta) of LogME for one real-valued target ``y`` [n]; for tests and reuse."""
    F = _to_numpy(features, np.float64)
    y = np.asarray(y, np.float64)
    U, s = _thin_svd(F)
    z = U.T @ y
    y_perp = 0.0 if len(s) == F.shape[0] else max(float(y @ y - z @ z), 0.0)
    ev, alpha, beta = _logme_fit(s, z[:, None], y_perp, F.shape[0], max_iter, tol)
    return float(ev[0]), float(alpha[0]), float(beta[0])


def logme_per_class(features, labels, max_iter: int = 100, tol: float = 1e-3) -> np.ndarray:
    """LogME evidence / n of each class's one-hot target, [K] in sorted order of the distinct labels."""
    F, codes, counts = _prepare(features, labels)
    U, s = _thin_svd(F)
    Z = _class_sums(U, codes, len(counts)).T  # [r, K] = U_r^T Y for one-hot Y, without building Y
    # ||y_k||^2 = count_k; with full row rank every y lies in the column space
    y_perp = np.zeros(len(counts)) if len(s) == F.shape[0] else np.maximum(counts - (Z**2).sum(0), 0.0)
    evidence, _, _ = _logme_fit(s, Z, y_perp, F.shape[0], max_iter, tol)
    return evidence


def logme(features, labels, max_iter: int = 100, tol: float = 1e-3) -> float:
    """LogME score (higher is better): mean over classes of the maximised log evidence per sample."""
    return float(np.mean(logme_per_class(features, labels, max_iter, tol)))


# ---------------------------------------------------------------- H-score


def _lw_shrinkage(Xc: np.ndarray, M: np.ndarray):
    """(shrinkage, mu = tr(S)/d) of sklearn's ``ledoit_wolf`` for centered ``Xc`` [n, d].

    ``M`` is ``Xc^T Xc / n`` (= S) or ``Xc Xc^T / n``: same trace and Frobenius norm, so the
    caller passes the smaller one.
    """
    n, d = Xc.shape
    mu = np.trace(M) / d
    if d == 1:  # the target mu I equals S
        return 0.0, mu
    frob2 = np.sum(M**2)
    row4 = np.sum(np.sum(Xc**2, axis=1) ** 2)  # sum of <X2^T X2> = sum over samples of ||x||^4
    beta = (row4 / n - frob2) / (d * n)
    delta = (frob2 - d * mu**2) / d  # ||S - mu I||_F^2 / d
    shrinkage = 0.0 if delta <= 0 or beta <= 0 else float(min(beta, delta) / delta)
    return shrinkage, mu


def _ledoit_wolf(X):
    """(shrunk covariance, shrinkage) as ``sklearn.covariance.ledoit_wolf(X)`` (assume_centered=False)."""
    X = _to_numpy(X, np.float64)
    Xc = X - X.mean(0)
    S = Xc.T @ Xc / X.shape[0]
    shrinkage, mu = _lw_shrinkage(Xc, S)
    cov = (1.0 - shrinkage) * S
    cov.flat[:: X.shape[1] + 1] += shrinkage * mu
    return cov, shrinkage


def h_score(features, labels, shrinkage: bool = True) -> float:
    """H-score ``sum_k p_k (mu_k - mu)^T C^-1 (mu_k - mu)`` (higher is better, at most K - 1).

    ``shrinkage=True``: regularized H-score of Ibrahim et al., ``C`` the Ledoit-Wolf covariance with
    shrinkage ``a`` and the between-class term scaled by ``(1 - a)`` as in the paper, which keeps the
    K - 1 bound. With d > n it is computed through the n x n Gram matrix. ``shrinkage=False``: the
    original score, ``C`` the population covariance with a pseudo-inverse; it saturates at K - 1
    (every labelling looks separable) once d >= n - 1. A constant feature matrix scores 0.
    """
    F, codes, counts = _prepare(features, labels)
    n, d = F.shape
    Xc = F - F.mean(0)
    Xc[:, np.ptp(F, axis=0) == 0] = 0.0  # a constant column's mean is not exact; keep it exactly zero
    if not Xc.any():
        return 0.0
    p = counts / n
    if shrinkage and n < d:
        gram = Xc @ Xc.T / n
        a, mu = _lw_shrinkage(Xc, gram)
        if a * mu > 0:
            # C = a mu I + (1 - a) Xc^T Xc / n and mu_k - mu = Xc^T h_k (h_k = class indicator / count), so
            # by push-through g^T C^-1 g = n h^T K (a mu I + (1 - a) K)^-1 h with K = Xc Xc^T / n
            H = np.zeros((n, len(counts)))
            H[np.arange(n), codes] = 1.0 / counts[codes]
            L = np.linalg.cholesky(a * mu * np.eye(n) + (1.0 - a) * gram)
            quad = n * np.sum(np.linalg.solve(L, gram @ H) * np.linalg.solve(L, H), axis=0)
            return float((1.0 - a) * (p @ quad))
    G = _class_sums(Xc, codes, len(counts)) / counts[:, None]  # [K, d] class means minus the global mean
    S = Xc.T @ Xc / n
    if shrinkage:
        a, mu = _lw_shrinkage(Xc, S)
        C = (1.0 - a) * S
        C.flat[:: d + 1] += a * mu
        try:
            L = np.linalg.cholesky(C)
            quad = np.sum(np.linalg.solve(L, G.T) ** 2, axis=0)  # g^T C^-1 g = ||L^-1 g||^2
        except np.linalg.LinAlgError:  # no shrinkage chosen and S singular
            quad = np.einsum("kd,de,ke->k", G, np.linalg.pinv(C, hermitian=True), G)
        return float((1.0 - a) * (p @ quad))
    quad = np.einsum("kd,de,ke->k", G, np.linalg.pinv(S, hermitian=True), G)
    return float(p @ quad)


def transferability_scores(features, labels) -> dict:
    """``{"logme": ..., "h_score": ...}`` with default settings (both higher is better)."""
    F, codes, _ = _prepare(features, labels)
    return {"logme": logme(F, codes), "h_score": h_score(F, codes)}
