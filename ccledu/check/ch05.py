"""Checks for chapter 5 (counter-current learning I: the MLP pair loss)."""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["ccl_mlp_pair", "_ref_ccl_mlp_pair"]


def _ref_ccl_mlp_pair(A, S, Y, lam):
    from ..rules.ccl import MLP_WIDTH_REF, match_loss
    return match_loss(A, S, Y, lam * MLP_WIDTH_REF / A.shape[1])


@register
def ccl_mlp_pair(fn, reference=None, seed=0, **options) -> int:
    """CCL's MLP layer-pair loss λ·mean((A Sᵀ − Y)²)·256/d and its gradients.

    Contract: ``fn(A, S, Y, lam) -> (loss, dA, dS)`` with A (N, d) the forward activations, S (C, d)
    the class prototypes, Y (N, C) one-hot labels, ``lam`` = λ; ``loss`` a scalar, dA = ∂loss/∂A
    (N, d) = G S and dS = ∂loss/∂S (C, d) = Gᵀ A, G = 2c/(N·C)·(A Sᵀ − Y), c = λ·256/d.
    """
    g = _rng(seed)
    cases = []
    for N, C, d, lam in [(1, 3, 4, 0.5), (5, 4, 7, 0.5), (8, 10, 16, 1.0), (6, 10, 784, 0.5),
                         (12, 2, 3, 0.25)]:
        A = g.standard_normal((N, d))
        S = g.standard_normal((C, d)) / np.sqrt(d)
        Y = np.eye(C)[g.integers(0, C, N)]
        cases.append(Case(f"N={N}, C={C}, d={d}, λ={lam}", (A, S, Y, lam)))
    return _run_cases("ccl_mlp_pair", fn, reference or _ref_ccl_mlp_pair, cases,
                      outputs=("loss", "dA", "dS"), **options)
