"""Checks for chapter 5 (counter-current learning I: the MLP pair loss, Task 5.1).

Oracle: the loss definition, and finite differences of it for the gradients (the loss is
quadratic in A and in S, so central differences are exact up to rounding); ccledu's
``match_loss`` is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_grad, register

__all__ = ["ccl_mlp_pair"]


def _pair_loss(A, S, Y, lam):
    return lam * 256 / A.shape[1] * np.mean((A @ S.T - Y) ** 2)


def _fd_ccl_mlp_pair(A, S, Y, lam):
    return (_pair_loss(A, S, Y, lam), fd_grad(lambda a: _pair_loss(a, S, Y, lam), A),
            fd_grad(lambda s: _pair_loss(A, s, Y, lam), S))


@register
def ccl_mlp_pair(fn, reference=None, seed=0, **options) -> None:
    """CCL's MLP layer-pair loss λ·mean((A Sᵀ − Y)²)·256/d and its gradients (Task 5.1).

    Contract: ``fn(A, S, Y, lam) -> (loss, dA, dS)`` with A (N, d) the forward activations,
    S (C, d) the class prototypes, Y (N, C) one-hot labels, ``lam`` = λ; ``loss`` a scalar,
    dA = ∂loss/∂A (N, d), dS = ∂loss/∂S (C, d). Compared with finite differences of the loss.
    Catches: the mean taken over N only (or over d), the factor 2 dropped, 256/d left out or
    inverted, dS transposed (C ≠ d) or built from Y instead of the residual.
    """
    g = _rng(seed)
    cases = []
    for N, C, d, lam in [(1, 3, 4, 0.5), (5, 4, 7, 0.5), (8, 10, 16, 1.0), (6, 10, 200, 0.5),
                         (12, 2, 3, 0.25)]:
        A = g.standard_normal((N, d))
        S = g.standard_normal((C, d)) / np.sqrt(d)
        Y = np.eye(C)[g.integers(0, C, N)]
        cases.append(Case(f"N={N}, C={C}, d={d}, λ={lam}", (A, S, Y, lam)))
    _run_cases("ccl_mlp_pair", fn, reference or _fd_ccl_mlp_pair, cases,
               outputs=("loss", "dA", "dS"), task="5.1", forbid=("ccledu.rules.ccl", "ccledu.rules.ccl:match_loss", "ccledu.rules.ccl:CCL"),
               **dict(dict(rtol=1e-6, atol=1e-7), **options))
