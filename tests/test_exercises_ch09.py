"""Grading tests for chapter 9 (comparing learning rules), marker ``ch09``: ccledu.metrics'
linear CKA and alignment angle against oracles written from their definitions (the HSIC form of
CKA with an explicit centring matrix; the arccos of the cosine in extended precision)."""
import numpy as np
import pytest

from ccledu import check, metrics

pytestmark = pytest.mark.ch09


def hsic_cka(X, Y):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = X Xᵀ, L = Y Yᵀ, H = I − 11ᵀ/N."""
    X = X.reshape(len(X), -1)
    Y = Y.reshape(len(Y), -1)
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L))


def arccos_angle(a, b):
    a = np.asarray(a, dtype=np.longdouble).ravel()
    b = np.asarray(b, dtype=np.longdouble).ravel()
    c = (a @ b) / np.sqrt((a @ a) * (b @ b))
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def test_linear_cka_matches_the_hsic_definition():
    check.linear_cka(metrics.linear_cka, reference=hsic_cka, rtol=1e-9, atol=1e-12, verbose=False, poison=False)


def test_angle_matches_arccos():
    check.angle(metrics.angle, reference=arccos_angle, verbose=False, poison=False)


def test_cka_invariances():
    g = np.random.default_rng(3)
    X, Y = g.standard_normal((50, 8)), g.standard_normal((50, 5))
    Q, _ = np.linalg.qr(g.standard_normal((8, 8)))
    base = metrics.linear_cka(X, Y)
    assert metrics.linear_cka(X @ Q * 7 - 2, Y) == pytest.approx(base, rel=1e-10)
    assert metrics.linear_cka(X, X) == pytest.approx(1.0, rel=1e-12)
    assert metrics.linear_cka(Y, X) == pytest.approx(base, rel=1e-12)
