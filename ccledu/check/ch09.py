"""Checks for chapter 9, comparing learning rules: linear CKA (Task 9.1) and the angle between
two updates (Task 9.2).

Oracles are equivalent but different formulas: CKA from the centred N×N Gram matrices (the HSIC
form the chapter starts from; the task asks for the feature-space form), the angle as
2·atan2(‖â − b̂‖, ‖â + b̂‖) in extended precision (the task asks for the arccos form).
ccledu.metrics is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["linear_cka", "angle"]


def _gram_cka(X, Y):
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    n = len(X)
    H = np.eye(n) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.float64(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)))


@register
def linear_cka(fn, reference=None, seed=0, **options) -> None:
    """Linear centred kernel alignment of two representations of the same N inputs (Task 9.1).

    Contract: ``fn(X, Y) -> float`` with X (N, d1), Y (N, d2), in [0, 1]; 1 for Y = X,
    unchanged by orthogonal maps, isotropic scaling and shifts of either argument. Some cases
    have N < d, some N > d. Compared with the Gram-matrix (HSIC) form. Catches: no centring
    (the uncentred cases), centring rows instead of columns, the norm not squared in the
    numerator, a missing square root in the denominator.
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

    _run_cases("linear_cka", mine, reference or _gram_cka, cases, task="9.1",
               forbid=("ccledu.metrics", "ccledu.metrics:linear_cka"), **dict(dict(rtol=1e-9, atol=1e-12), **options))


def _atan2_angle(a, b):
    a = np.asarray(a, dtype=np.longdouble).ravel()
    b = np.asarray(b, dtype=np.longdouble).ravel()
    a, b = a / np.sqrt(a @ a), b / np.sqrt(b @ b)
    d, s = np.sqrt((a - b) @ (a - b)), np.sqrt((a + b) @ (a + b))
    return np.float64(np.degrees(2 * np.arctan2(d, s)))


def _naive_cosines(a, b):
    """The cosine as students usually compute it, three ways."""
    a, b = a.ravel(), b.ravel()
    return [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)),
            a @ b / np.sqrt((a @ a) * (b @ b)),
            np.sum(a * b) / (np.sqrt(np.sum(a * a)) * np.sqrt(np.sum(b * b)))]


def rounding_traps(g, sign, scale, n=35, tries=2000):
    """A vector a and b = sign·scale·a for which every naive cosine rounds to |cos| > 1, so an
    unclipped arccos returns NaN."""
    for _ in range(tries):
        a = g.standard_normal(n)
        b = sign * scale * a
        if all(abs(c) > 1.0 for c in _naive_cosines(a, b)):
            return a, b
    raise RuntimeError("no rounding trap found")      # pragma: no cover


@register
def angle(fn, reference=None, seed=0, **options) -> None:
    """The angle in degrees between two tensors of the same shape, read as flat vectors
    (Task 9.2).

    Contract: ``fn(a, b) -> float`` in [0, 180], θ = arccos(⟨a, b⟩ / (‖a‖ ‖b‖)). Compared with
    the atan2 form to within 1e-5 degrees. Catches: radians instead of degrees, tensors not
    flattened, and the unclipped cosine: for (anti)parallel vectors the rounded cosine can be
    1 + 2⁻⁵² and arccos of it is NaN (two cases are built so that every usual way of computing
    the cosine rounds past ±1).
    """
    g = _rng(seed)
    a = g.standard_normal((7, 5))
    e1, e2 = np.eye(4)[0], np.eye(4)[1]
    a2 = g.standard_normal((2, 3, 4, 4))
    cases = [
        Case("random (7, 5) matrices", (a, g.standard_normal((7, 5)))),
        Case("b = 3 a (parallel)", (a, 3 * a)),
        Case("orthogonal vectors", (e1, 2 * e2)),
        Case("45 degrees", (e1, e1 + e2)),
        Case("(2, 3, 4, 4) tensors, correlated", (a2, a2 + g.standard_normal((2, 3, 4, 4)))),
        Case("parallel, the rounded cosine exceeds 1", rounding_traps(g, 1.0, 0.7)),
        Case("opposite, the rounded cosine is below -1", rounding_traps(g, -1.0, 1.3)),
    ]

    def mine(a, b):
        with np.errstate(invalid="ignore"):
            return np.float64(fn(a, b))

    _run_cases("angle", mine, reference or _atan2_angle, cases, task="9.2",
               forbid=("ccledu.metrics", "ccledu.metrics:angle"), **dict(dict(rtol=0.0, atol=1e-5), **options))
