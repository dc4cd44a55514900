"""Checks for chapter 6 (counter-current learning II: the normalised CNN pair loss): the
backward pass of the row normalisation (Task 6.1) and the whole normalised pair loss (Task 6.2).

Oracles: finite differences of the forward definitions (x/(‖x‖ + ε), the three-term loss); for
an all-zero row the contract fixes the value g/ε (the finite-difference quotient does not exist
there). ccledu.rules.ccl is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_grad, fd_vjp, register

__all__ = ["row_normalize_backward", "ccl_cnn_pair"]

_FORBID = ("ccledu.rules.ccl", "ccledu.rules.ccl:normalize_rows_backward", "ccledu.rules.ccl:gram_loss",
           "ccledu.rules.ccl:CCL")


def _normalise(X, eps=1e-8):
    return X / (np.sqrt(np.sum(X * X, axis=1, keepdims=True)) + eps)


def _fd_row_normalize_backward(X, dU, eps=1e-8):
    dX = np.empty_like(X, dtype=np.float64)
    for i in range(len(X)):
        if not np.any(X[i]):
            dX[i] = dU[i] / eps
        else:
            dX[i] = fd_vjp(lambda v: _normalise(v[None], eps)[0], X[i], dU[i], h=1e-7 * np.linalg.norm(X[i]))
    return dX


@register
def row_normalize_backward(fn, reference=None, seed=0, **options) -> None:
    """Backward pass of the row normalisation U = X / (‖X_row‖ + ε) (Task 6.1).

    Contract: ``fn(X, dU, eps=1e-8) -> dX`` with X and dU = ∂L/∂U of shape (n, d); a row that
    is all zeros (a flooded sample) gets dU/ε and no NaN. Compared with finite differences.
    Catches: the projection term forgotten (treating ‖x‖ as a constant), a norm of the wrong
    axis, division by zero on the zero row.
    """
    g = _rng(seed)
    cases = []
    for n, d, label in [(1, 3, "one row"), (4, 6, "rows of norm 0.1 to 10"),
                        (10, 50, "wide"), (5, 4, "a zero row (flooded)")]:
        X = g.standard_normal((n, d)) * np.logspace(-1, 1, n)[:, None]
        if "zero" in label:
            X[2] = 0.0
        cases.append(Case(f"X {X.shape}, {label}", (X, g.standard_normal((n, d)))))

    def mine(X, dU, eps=1e-8):
        with np.errstate(all="ignore"):
            return fn(X, dU, eps)

    _run_cases("row_normalize_backward", mine, reference or _fd_row_normalize_backward, cases,
               task="6.1", forbid=_FORBID, **dict(dict(rtol=1e-6, atol=1e-7), **options))


def _cnn_pair_loss(A, S, Y, s_c, s_ssl, eps=1e-8):
    N, C = Y.shape
    Ah, Sh = _normalise(A, eps), _normalise(S, eps)
    return (s_c * np.mean((Ah @ Sh.T - Y) ** 2) + s_ssl * np.mean((Ah @ Ah.T - np.eye(N)) ** 2)
            + s_ssl * np.mean((Sh @ Sh.T - np.eye(C)) ** 2))


def _fd_ccl_cnn_pair(A, S, Y, s_c, s_ssl):
    return (_cnn_pair_loss(A, S, Y, s_c, s_ssl),
            fd_grad(lambda a: _cnn_pair_loss(a, S, Y, s_c, s_ssl), A),
            fd_grad(lambda s: _cnn_pair_loss(A, s, Y, s_c, s_ssl), S))


@register
def ccl_cnn_pair(fn, reference=None, seed=0, **options) -> None:
    """CCL's normalised CNN pair loss and its gradients (Task 6.2).

    Contract: ``fn(A, S, Y, s_c, s_ssl) -> (loss, dA, dS)`` with A (N, d), S (C, d), Y (N, C)
    one-hot; with Â, Ŝ the rows scaled by 1/(‖row‖ + 1e-8),
    loss = s_c·mean((Â Ŝᵀ − Y)²) + s_ssl·mean((Â Âᵀ − I_N)²) + s_ssl·mean((Ŝ Ŝᵀ − I_C)²),
    dA = ∂loss/∂A (N, d), dS = ∂loss/∂S (C, d). Compared with finite differences of the loss.
    Catches: the self-similarity terms' factor 4/N² (both factors of Â Âᵀ depend on A), the
    normalisation's backward skipped, s_c and s_ssl swapped.
    """
    g = _rng(seed)
    cases = []
    for N, C, d, s_c, s_ssl in [(2, 3, 4, 1.0, 0.5), (6, 4, 9, 1.0, 0.5), (8, 10, 20, 0.5, 0.5),
                                (5, 10, 3, 1.0, 0.0), (4, 2, 7, 0.0, 1.0)]:
        A = g.standard_normal((N, d)) * 3.0
        S = g.standard_normal((C, d)) * 0.2
        Y = np.eye(C)[g.integers(0, C, N)]
        cases.append(Case(f"N={N}, C={C}, d={d}, s_c={s_c}, s_ssl={s_ssl}", (A, S, Y, s_c, s_ssl)))
    _run_cases("ccl_cnn_pair", fn, reference or _fd_ccl_cnn_pair, cases,
               outputs=("loss", "dA", "dS"), task="6.2", forbid=_FORBID,
               **dict(dict(rtol=1e-6, atol=1e-7), **options))
