"""Checks for chapter 6 (counter-current learning II: the normalised CNN pair loss)."""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["row_normalize_backward", "_ref_row_normalize_backward", "ccl_cnn_pair",
           "_ref_ccl_cnn_pair"]


def _ref_row_normalize_backward(X, dU, eps=1e-8):
    from ..rules.ccl import normalize_rows, normalize_rows_backward
    U, r = normalize_rows(X, eps)
    return normalize_rows_backward(dU, U, r, eps)


@register
def row_normalize_backward(fn, reference=None, seed=0, **options) -> int:
    """Backward pass of the row normalisation U = X / (‖X_row‖ + ε).

    Contract: ``fn(X, dU, eps=1e-8) -> dX`` with X and dU = ∂L/∂U of shape (n, d); row by row
    ∂L/∂x = g/(r + ε) − u (u·g)/r with r = ‖x‖, u = x/(r + ε), g = ∂L/∂u; a zero row gets g/ε.
    """
    g = _rng(seed)
    cases = []
    for n, d, label in [(1, 3, "one row"), (4, 6, "rows of norm 0.1 to 10"),
                        (10, 50, "wide"), (5, 4, "a zero row (flooded)")]:
        X = g.standard_normal((n, d)) * np.logspace(-1, 1, n)[:, None]
        if "zero" in label:
            X[2] = 0.0
        cases.append(Case(f"X {X.shape}, {label}", (X, g.standard_normal((n, d)))))
    return _run_cases("row_normalize_backward", fn, reference or _ref_row_normalize_backward, cases,
                      **options)


def _ref_ccl_cnn_pair(A, S, Y, s_c, s_ssl, eps=1e-8):
    from ..rules.ccl import NORM_EPS, CCL
    if eps != NORM_EPS:
        raise ValueError(f"the reference uses ε = {NORM_EPS}")
    rule = CCL(form="cnn", scale=s_c, ssl_scale=s_ssl)
    terms, dA, dS = rule._pair_cnn(0, A, S, Y, None)
    return terms["pair/0"], dA, dS


@register
def ccl_cnn_pair(fn, reference=None, seed=0, **options) -> int:
    """CCL's normalised CNN pair loss and its gradients.

    Contract: ``fn(A, S, Y, s_c, s_ssl) -> (loss, dA, dS)`` with A (N, d), S (C, d), Y (N, C)
    one-hot; with Â, Ŝ the rows scaled by 1/(‖row‖ + 1e-8),
    loss = s_c·mean((Â Ŝᵀ − Y)²) + s_ssl·mean((Â Âᵀ − I_N)²) + s_ssl·mean((Ŝ Ŝᵀ − I_C)²),
    dA = ∂loss/∂A (N, d), dS = ∂loss/∂S (C, d).
    """
    g = _rng(seed)
    cases = []
    for N, C, d, s_c, s_ssl in [(2, 3, 4, 1.0, 0.5), (6, 4, 9, 1.0, 0.5), (16, 10, 40, 0.5, 0.5),
                                (5, 10, 3, 1.0, 0.0), (4, 2, 7, 0.0, 1.0)]:
        A = g.standard_normal((N, d)) * 3.0
        S = g.standard_normal((C, d)) * 0.2
        Y = np.eye(C)[g.integers(0, C, N)]
        cases.append(Case(f"N={N}, C={C}, d={d}, s_c={s_c}, s_ssl={s_ssl}", (A, S, Y, s_c, s_ssl)))
    return _run_cases("ccl_cnn_pair", fn, reference or _ref_ccl_cnn_pair, cases,
                      outputs=("loss", "dA", "dS"), **options)
