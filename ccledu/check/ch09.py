"""Checks for chapter 9, comparing learning rules: linear CKA (Task 9.1) and the angle between
two updates (Task 9.2), against :mod:`ccledu.metrics`.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["linear_cka", "angle", "_ref_linear_cka", "_ref_angle"]


def _ref_linear_cka(X, Y):
    from ..metrics import linear_cka as ref
    return np.float64(ref(X, Y))


@register
def linear_cka(fn, reference=None, seed=0, **options) -> int:
    """Linear centred kernel alignment of two representations of the same N inputs.

    Contract: ``fn(X, Y) -> float`` with X (N, d1), Y (N, d2): centre every column, then
    CKA = ‖Y_cᵀ X_c‖_F² / (‖X_cᵀ X_c‖_F ‖Y_cᵀ Y_c‖_F). Some cases have N < d, some N > d.
    """
    g = _rng(seed)
    X = g.standard_normal((40, 6))
    Q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    W = g.standard_normal((30, 50))
    cases = [
        Case("X (40, 6) vs Y (40, 9), independent", (X, g.standard_normal((40, 9)))),
        Case("Y = X", (X, X.copy())),
        Case("Y = 3 X Q + 1 (orthogonal Q, scale, shift)", (X, 3 * X @ Q + 1)),
        Case("Y = relu(X A), (40, 6) vs (40, 12)", (X, np.maximum(X @ g.standard_normal((6, 12)), 0))),
        Case("N = 30 < widths: (30, 50) vs (30, 20)", (W, W[:, :20] + 0.5 * g.standard_normal((30, 20)))),
        Case("uncentred data (mean 5)", (5 + g.standard_normal((25, 4)), g.standard_normal((25, 3)) - 2)),
    ]

    def mine(X, Y):
        return np.float64(fn(X, Y))

    options.setdefault("rtol", 1e-9)
    options.setdefault("atol", 1e-12)
    return _run_cases("linear_cka", mine, reference or _ref_linear_cka, cases, **options)


def _ref_angle(a, b):
    from ..metrics import angle as ref
    return np.float64(ref(a, b))


@register
def angle(fn, reference=None, seed=0, **options) -> int:
    """The angle in degrees between two tensors of the same shape, read as flat vectors.

    Contract: ``fn(a, b) -> float`` in [0, 180], θ = arccos(⟨a, b⟩ / (‖a‖ ‖b‖)). Compared to
    within 1e-5 degrees (arccos of a rounded cosine near ±1 is allowed that much).
    """
    g = _rng(seed)
    a = g.standard_normal((7, 5))
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    cases = [
        Case("random (7, 5) matrices", (a, g.standard_normal((7, 5)))),
        Case("b = 3 a (parallel)", (a, 3 * a)),
        Case("b = −a (opposite)", (a, -a)),
        Case("orthogonal vectors", (e1, 2 * e2)),
        Case("45 degrees", (e1, e1 + e2)),
        Case("(2, 3, 4, 4) tensors, correlated", (a2 := g.standard_normal((2, 3, 4, 4)),
                                                 a2 + g.standard_normal((2, 3, 4, 4)))),
    ]

    def mine(a, b):
        return np.float64(fn(a, b))

    options.setdefault("rtol", 0.0)
    options.setdefault("atol", 1e-5)
    return _run_cases("angle", mine, reference or _ref_angle, cases, **options)
