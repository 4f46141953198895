"""Transferability scores: LogME and H-score against hand computations, invariances, stability, errors."""
import math

import numpy as np
import pytest
import torch

from hftransfer import HFTransferError
from hftransfer.evaluation.transferability import (
    _PRECISION_RANGE,
    HIGHER_IS_BETTER,
    METRICS,
    _ledoit_wolf,
    _logme_single,
    h_score,
    logme,
    logme_per_class,
    transferability_scores,
)


def rel_close(a, b, rtol):
    return abs(a - b) <= rtol * max(abs(a), abs(b), 1e-300)


def small_case(n, d, seed=0, num_classes=2):
    """Features with one informative direction, so the evidence optimum is interior (finite alpha, beta)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    F = rng.normal(size=(n, d))
    F[:, 0] += 3.0 * (labels == 1)
    return F, labels


def marginal_log_density(F, y, alpha, beta) -> float:
    """log N(y; 0, beta^-1 I + alpha^-1 F F^T) / n: the evidence, with w integrated out by hand."""
    n = F.shape[0]
    cov = torch.eye(n, dtype=torch.float64) / beta + torch.from_numpy(F @ F.T) / alpha
    dist = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64), covariance_matrix=cov)
    return float(dist.log_prob(torch.from_numpy(y))) / n


def explicit_stats(F, y, alpha, beta):
    """gamma, ||m||^2, ||F m - y||^2 with the d x d matrices A and A^-1 formed explicitly."""
    d = F.shape[1]
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.inv(A) @ F.T @ y
    eig = np.linalg.eigvalsh(F.T @ F)
    gamma = np.sum(beta * eig / (alpha + beta * eig))
    return gamma, m @ m, np.sum((F @ m - y) ** 2)


def naive_logme_per_class(F, labels, max_iter=100, tol=1e-3):
    """Reference LogME: the paper's loop with explicit d x d matrices and a dense marginal likelihood."""
    lo, hi = _PRECISION_RANGE
    n = F.shape[0]
    out = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            gamma, m2, res = explicit_stats(F, y, alpha, beta)
            new_alpha, new_beta = min(max(gamma / m2, lo), hi), min(max((n - gamma) / res, lo), hi)
            done = abs(new_alpha / new_beta - alpha / beta) <= tol * alpha / beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        out.append(marginal_log_density(F, y, alpha, beta))
    return np.array(out)


# ---------------------------------------------------------------- LogME against hand computations


@pytest.mark.parametrize("n,d", [(12, 3), (6, 10)])
@pytest.mark.parametrize("tol", [1e-3, 1e-12])
def test_logme_evidence_is_the_marginal_likelihood(n, d, tol):
    F, labels = small_case(n, d)
    y = (labels == 1).astype(np.float64)
    evidence, alpha, beta = _logme_single(F, y, max_iter=10_000, tol=tol)
    lo, hi = _PRECISION_RANGE
    assert lo < alpha < hi
    assert lo < beta < hi  # interior optimum, not a clamp
    assert rel_close(evidence, marginal_log_density(F, y, alpha, beta), 1e-9)


@pytest.mark.parametrize("n,d", [(12, 3), (6, 10)])
def test_logme_fixed_point_conditions_hold_at_convergence(n, d):
    F, labels = small_case(n, d)
    y = (labels == 1).astype(np.float64)
    _, alpha, beta = _logme_single(F, y, max_iter=10_000, tol=1e-13)
    gamma, m2, res = explicit_stats(F, y, alpha, beta)
    assert rel_close(alpha, gamma / m2, 1e-9)
    assert rel_close(beta, (n - gamma) / res, 1e-9)


@pytest.mark.parametrize("n,d", [(12, 3), (6, 10)])
def test_logme_converged_point_is_a_local_maximum(n, d):
    F, labels = small_case(n, d)
    y = (labels == 1).astype(np.float64)
    evidence, alpha, beta = _logme_single(F, y)
    for fa in (0.5, 1.0, 2.0):
        for fb in (0.5, 1.0, 2.0):
            if (fa, fb) != (1.0, 1.0):
                assert marginal_log_density(F, y, alpha * fa, beta * fb) < evidence


@pytest.mark.parametrize("n,d,num_classes", [(12, 3, 2), (15, 4, 3), (6, 10, 2)])
def test_logme_matches_naive_reference(n, d, num_classes):
    F, labels = small_case(n, d, num_classes=num_classes)
    expected = naive_logme_per_class(F, labels, max_iter=10_000, tol=1e-12)
    got = logme_per_class(F, labels, max_iter=10_000, tol=1e-12)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    assert rel_close(logme(F, labels, max_iter=10_000, tol=1e-12), expected.mean(), 1e-8)


def test_logme_default_tolerance_close_to_converged():
    F, labels = small_case(40, 8, num_classes=4)
    assert rel_close(logme(F, labels), logme(F, labels, max_iter=10_000, tol=1e-12), 1e-4)


# ---------------------------------------------------------------- H-score against hand computations


@pytest.mark.parametrize("shrinkage", [True, False])
def test_h_score_one_dimensional_hand_cases(shrinkage):
    assert h_score([[0.0], [0.0], [2.0], [2.0]], [0, 0, 1, 1], shrinkage=shrinkage) == pytest.approx(1.0, rel=1e-12)
    # mean 3, total variance (9+4+1+0+4+16)/6 = 34/6, class means 1 and 5 -> between variance 4
    x = [[0.0], [1.0], [2.0], [3.0], [5.0], [7.0]]
    assert h_score(x, [0, 0, 0, 1, 1, 1], shrinkage=shrinkage) == pytest.approx(4 / (34 / 6), rel=1e-12)


def between_cov(F, labels):
    mu = F.mean(0)
    B = np.zeros((F.shape[1], F.shape[1]))
    for k in np.unique(labels):
        g = F[labels == k].mean(0) - mu
        B += np.mean(labels == k) * np.outer(g, g)
    return B


def test_h_score_unshrunk_is_trace_of_inverse_covariance_times_between():
    F, labels = small_case(30, 4, seed=3, num_classes=3)
    expected = np.trace(np.linalg.inv(np.cov(F, rowvar=False, bias=True)) @ between_cov(F, labels))
    assert rel_close(h_score(F, labels, shrinkage=False), expected, 1e-9)


@pytest.mark.parametrize("n,d", [(30, 6), (12, 40)])
def test_h_score_shrunk_is_regularized_h_score_with_sklearn_ledoit_wolf(n, d):
    covariance = pytest.importorskip("sklearn.covariance")
    F, labels = small_case(n, d, seed=4, num_classes=3)
    C, a = covariance.ledoit_wolf(F)
    expected = (1 - a) * np.trace(np.linalg.inv(C) @ between_cov(F, labels))  # Ibrahim et al.'s H_alpha
    assert rel_close(h_score(F, labels), expected, 1e-9)


@pytest.mark.parametrize("n,d", [(12, 40), (20, 300)])
def test_h_score_gram_path_matches_dense_formula(n, d):
    # d > n goes through the n x n Gram matrix; compare with the d x d shrunk covariance solved directly
    F, labels = small_case(n, d, seed=14, num_classes=4)
    C, a = _ledoit_wolf(F)
    assert 0 < a < 1
    expected = (1 - a) * np.trace(np.linalg.solve(C, between_cov(F, labels)))
    assert rel_close(h_score(F, labels), expected, 1e-9)


@pytest.mark.parametrize("n,d", [(30, 6), (50, 1), (20, 500), (8, 3)])
def test_ledoit_wolf_matches_sklearn(n, d):
    covariance = pytest.importorskip("sklearn.covariance")
    X = np.random.default_rng(n + d).normal(size=(n, d)) @ np.diag(np.linspace(0.5, 3.0, d)) + 2.0
    C, shrink = _ledoit_wolf(X)
    C_ref, shrink_ref = covariance.ledoit_wolf(X)
    assert shrink == pytest.approx(shrink_ref, rel=1e-10, abs=1e-14)
    np.testing.assert_allclose(C, C_ref, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("shrinkage", [True, False])
@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e4])
def test_h_score_is_scale_invariant(shrinkage, scale):
    F, labels = small_case(40, 12, seed=5, num_classes=4)
    assert rel_close(h_score(F * scale, labels, shrinkage), h_score(F, labels, shrinkage), 1e-9)


def test_h_score_unshrunk_saturates_at_k_minus_1_when_d_exceeds_n():
    # why shrinkage is the default: with d >= n - 1 every labelling looks perfectly separable
    F = np.random.default_rng(6).normal(size=(20, 500))
    labels = np.arange(20) % 4
    assert h_score(F, labels, shrinkage=False) == pytest.approx(3.0, rel=1e-8)
    assert h_score(F, labels) < 3.0


# ---------------------------------------------------------------- invariances


def all_scores(F, labels):
    return {"logme": logme(F, labels), "h_score": h_score(F, labels), "h_plain": h_score(F, labels, shrinkage=False)}


@pytest.mark.parametrize("n,d,num_classes", [(30, 5, 3), (12, 40, 4)])
def test_scores_invariant_to_sample_order_and_class_ids(n, d, num_classes):
    F, labels = small_case(n, d, seed=7, num_classes=num_classes)
    base = all_scores(F, labels)
    perm = np.random.default_rng(8).permutation(n)
    relabel = np.random.default_rng(9).permutation(num_classes)
    sparse_ids = np.array([0, 3, 9, 4, 7, 100][:num_classes])  # ids not 0..K-1, some absent
    for F2, labels2 in [(F[perm], labels[perm]), (F, relabel[labels]), (F, sparse_ids[labels])]:
        for name, value in all_scores(F2, labels2).items():
            assert rel_close(value, base[name], 1e-9), name
    np.testing.assert_allclose(np.sort(logme_per_class(F, relabel[labels])), np.sort(logme_per_class(F, labels)),
                               rtol=1e-9)


# ---------------------------------------------------------------- separation


@pytest.mark.parametrize("num_classes", [2, 10])
def test_separating_features_score_higher_than_noise(num_classes):
    rng = np.random.default_rng(num_classes)
    n, d = 200, 32
    labels = np.arange(n) % num_classes
    noise = rng.normal(size=(n, d))
    means = 3.0 * rng.normal(size=(num_classes, d))
    separated = rng.normal(size=(n, d)) + means[labels]
    good, bad = transferability_scores(separated, labels), transferability_scores(noise, labels)
    assert good["logme"] > bad["logme"] + 0.05
    assert good["h_score"] > bad["h_score"] + 0.5
    assert h_score(separated, labels, shrinkage=False) > h_score(noise, labels, shrinkage=False)


def test_perfect_features_give_large_finite_logme():
    labels = np.arange(10) % 2
    scores = transferability_scores(np.eye(2)[labels], labels)
    assert math.isfinite(scores["logme"])
    assert scores["logme"] > 5.0
    assert scores["h_score"] == pytest.approx(1.0, rel=1e-9)


# ---------------------------------------------------------------- stability


@pytest.mark.parametrize("d", [500, 2000])
@pytest.mark.parametrize("num_classes", [2, 10])
def test_finite_when_d_exceeds_n(d, num_classes):
    rng = np.random.default_rng(d + num_classes)
    labels = np.arange(20) % num_classes
    F = rng.normal(size=(20, d)) + 0.5 * rng.normal(size=(num_classes, d))[labels]
    per_class = logme_per_class(F, labels)
    assert per_class.shape == (num_classes,)
    assert np.isfinite(per_class).all()
    h = h_score(F, labels)
    assert math.isfinite(h)
    assert 0.0 < h < num_classes - 1


@pytest.mark.parametrize("n,d", [(50, 8), (20, 300)])
def test_float32_and_float64_inputs_agree(n, d):
    F, labels = small_case(n, d, seed=11, num_classes=3)
    F64 = F.astype(np.float32).astype(np.float64)  # same values, so only the input dtype differs...
    s32, s64 = transferability_scores(F.astype(np.float32), labels), transferability_scores(F64, labels)
    assert s32 == s64
    # ...and float32 rounding of the original values moves the scores by rounding-error amounts only
    s_orig = transferability_scores(F, labels)
    for name in METRICS:
        assert rel_close(s32[name], s_orig[name], 1e-5), name
    t32 = transferability_scores(torch.from_numpy(F.astype(np.float32)), torch.from_numpy(labels))
    assert t32 == s32


@pytest.mark.parametrize("value", [0.0, 0.1, -3.7])
def test_constant_features(value):
    labels = np.arange(10) % 3
    F = np.full((10, 4), value)
    assert math.isfinite(logme(F, labels))
    assert h_score(F, labels) == 0.0
    assert h_score(F, labels, shrinkage=False) == 0.0


def test_constant_columns_do_not_change_h_score():
    F, labels = small_case(30, 4, seed=12, num_classes=3)
    padded = np.hstack([F, np.full((30, 2), 0.1)])
    assert rel_close(h_score(padded, labels, shrinkage=False), h_score(F, labels, shrinkage=False), 1e-9)
    assert math.isfinite(h_score(padded, labels))


# ---------------------------------------------------------------- API and errors


def test_transferability_scores_dict():
    F, labels = small_case(30, 5, seed=13, num_classes=3)
    scores = transferability_scores(F, labels)
    assert tuple(scores) == METRICS
    assert all(isinstance(v, float) for v in scores.values())
    assert scores == {"logme": logme(F, labels), "h_score": h_score(F, labels)}
    assert all(HIGHER_IS_BETTER[m] for m in METRICS)


@pytest.mark.parametrize("features,labels,match", [
    (np.zeros(5), np.arange(5) % 2, "2-D"),
    (np.zeros((4, 2, 2)), np.arange(4) % 2, "2-D"),
    (np.zeros((4, 0)), np.arange(4) % 2, "2-D"),
    (np.zeros((5, 3)), np.arange(4) % 2, "5 rows but labels have 4"),
    (np.zeros((1, 3)), np.array([0]), "at least 2 samples"),
    (np.random.default_rng(0).normal(size=(6, 3)), np.zeros(6, dtype=int), "1 distinct class"),
    (np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 0.0]]), np.array([0, 1, 1]), "nan or inf"),
    (np.array([[0.0, 1.0], [np.inf, 1.0], [2.0, 0.0]]), np.array([0, 1, 1]), "nan or inf"),
    (np.zeros((4, 2)), np.zeros((4, 1), dtype=int), "labels must be 1-D"),
])
@pytest.mark.parametrize("fn", [logme, h_score, transferability_scores, logme_per_class])
def test_invalid_inputs_raise(fn, features, labels, match):
    with pytest.raises(HFTransferError, match=match):
        fn(features, labels)
