"""Grading tests for chapter 6's package exercises, marker ``ch06``:
Task 6.3 (``normalize_rows_backward``) and Task 6.4 (``gram_loss``) in ``ccledu/rules/ccl.py``.

Oracles: central finite differences of the definitions written out here (a zero row, where the
norm is not differentiable, is checked against the documented value g/ε), and the CNN-form pair
loss of a whole CCL step against finite differences.
"""
import numpy as np
import pytest

from ccledu import check
from ccledu.testing import grad_rel_error, numerical_gradient, numerical_vjp

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)
EPS = 1e-8


def package_row_backward(X, dU, eps=EPS):
    from ccledu.rules.ccl import normalize_rows, normalize_rows_backward
    U, r = normalize_rows(X, eps)
    return normalize_rows_backward(dU, U, r, eps)


def fd_row_backward(X, dU, eps=EPS):
    zero = ~X.any(axis=1)
    f = lambda: X / (np.sqrt((X * X).sum(1, keepdims=True)) + eps)  # noqa: E731
    out = numerical_vjp(f, X, dU)
    out[zero] = dU[zero] / eps          # |x| is not differentiable at 0: the documented value
    return out


@pytest.mark.ch06
def test_normalize_rows_backward_matches_finite_differences():
    check.row_normalize_backward(package_row_backward, reference=fd_row_backward, **FD)


@pytest.mark.ch06
def test_normalize_rows_backward_is_orthogonal_to_the_rows(rng):
    X = rng.standard_normal((6, 11)) * 5
    dX = package_row_backward(X, rng.standard_normal((6, 11)))
    cos = np.sum(X * dX, 1) / (np.linalg.norm(X, axis=1) * np.linalg.norm(dX, axis=1))
    assert np.abs(cos).max() < 1e-6


@pytest.mark.ch06
@pytest.mark.parametrize("n,d,coef", [(1, 3, 1.0), (5, 4, 0.5), (8, 20, 2.0), (4, 2, 0.3)])
def test_gram_loss_matches_finite_differences(rng, n, d, coef):
    from ccledu.rules.ccl import gram_loss
    X = rng.standard_normal((n, d))
    value, dX = gram_loss(X, coef)
    f = lambda: coef * np.mean((X @ X.T - np.eye(n)) ** 2)  # noqa: E731
    assert np.isclose(float(value), f(), rtol=1e-12)
    assert dX.shape == X.shape
    assert grad_rel_error(dX, numerical_gradient(f, X)) < 1e-6


@pytest.mark.ch06
def test_gram_loss_is_zero_for_orthonormal_rows():
    from ccledu.rules.ccl import gram_loss
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 4)))[0].T     # 4 orthonormal rows
    value, dX = gram_loss(Q, 1.0)
    assert abs(float(value)) < 1e-24 and np.abs(dX).max() < 1e-12
    # and only there: rows that are not orthonormal give a positive loss and a gradient
    value, dX = gram_loss(1.1 * Q, 1.0)
    assert float(value) > 1e-3 and np.abs(dX).max() > 1e-3


def fd_cnn_pair(A, S, Y, s_c, s_ssl, eps=EPS):
    N, C = Y.shape

    def f():
        Ah = A / (np.linalg.norm(A, axis=1, keepdims=True) + eps)
        Sh = S / (np.linalg.norm(S, axis=1, keepdims=True) + eps)
        return (s_c * np.mean((Ah @ Sh.T - Y) ** 2) + s_ssl * np.mean((Ah @ Ah.T - np.eye(N)) ** 2)
                + s_ssl * np.mean((Sh @ Sh.T - np.eye(C)) ** 2))
    return f(), numerical_gradient(f, A), numerical_gradient(f, S)


@pytest.mark.ch06
def test_cnn_pair_of_the_rule_matches_finite_differences():
    from ccledu.rules.ccl import CCL

    def package(A, S, Y, s_c, s_ssl, eps=EPS):
        terms, dA, dS = CCL(form="cnn", scale=s_c, ssl_scale=s_ssl)._pair_cnn(0, A, S, Y, None)
        return terms["pair/0"], dA, dS
    check.ccl_cnn_pair(package, reference=fd_cnn_pair, **FD)
