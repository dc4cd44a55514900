"""Measurements of a network and of a learning rule: accuracy, the angle between a rule's update
and the backprop gradient, centred kernel alignment (CKA) of representations, and the size of
a weight update relative to the weight.

Everything accepts NumPy or CuPy arrays (the module is taken from the arguments), computes in
float64 and returns Python floats (or, for :func:`cka_matrix`, a host NumPy array of floats).
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_array_module, to_float
from .losses import accuracy, cross_entropy  # noqa: F401  (accuracy re-exported)

__all__ = ["accuracy", "angle", "alignment_with_bp", "linear_cka", "cka_matrix", "weight_ratio",
           "update_ratio"]


def _flat64(a, xp):
    return xp.asarray(a).reshape(-1).astype(xp.float64)


def angle(a, b) -> float:
    """Angle in degrees between two tensors of the same size, read as flat vectors.

        θ = arccos( ⟨a, b⟩ / (‖a‖ ‖b‖) )  ∈ [0°, 180°]

    Computed in the equivalent, rounding-robust form θ = 2·atan2(‖â − b̂‖, ‖â + b̂‖) with
    â = a/‖a‖, b̂ = b/‖b‖ (arccos of a cosine near ±1 loses half the digits; this form gives exactly
    0 for b = a and 180 for b = −a). Returns NaN when either tensor is all zeros.
    """
    xp = get_array_module(a, b)
    a, b = _flat64(a, xp), _flat64(b, xp)
    if a.size != b.size:
        raise ValueError(f"angle needs tensors of the same size, got {a.size} and {b.size}")
    na, nb = to_float(xp.linalg.norm(a)), to_float(xp.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    a, b = a / na, b / nb
    diff, summ = to_float(xp.linalg.norm(a - b)), to_float(xp.linalg.norm(a + b))
    return math.degrees(2.0 * math.atan2(diff, summ))


def alignment_with_bp(model, rule, x, y) -> dict:
    """Angle (degrees) between the gradient ``rule`` produces and backprop's, per forward
    parameter, on the same batch: {``forward.<l>.weight``: θ_l, ...}.

    Works for any rule whose ``step(model, x, y)`` returns ``forward.*`` gradients (FA, DFA,
    CCL, ...; rule-owned parameters such as ``feedback.*`` are ignored). The rule's gradients are
    copied before backprop runs, because both write into the layers' gradient slots. The
    parameters are not changed, but the layers' cached activations and stored gradients are
    (they hold backprop's afterwards).
    """
    mine = {}
    for name, g in rule.step(model, x, y).grads.items():
        if name.startswith("forward."):
            mine[name] = get_array_module(g).array(g, copy=True)
    _, dlogits = cross_entropy(model.forward(x), y)       # backprop (rules/bp.py's step)
    model.backward(dlogits)
    ref = model.gradients()
    return {name: angle(g, ref[name]) for name, g in mine.items() if name in ref}


def _centred_2d(X, xp):
    X = xp.asarray(X)
    X = X.reshape(X.shape[0], -1).astype(xp.float64)
    return X - X.mean(axis=0, keepdims=True)


def linear_cka(X, Y) -> float:
    """Linear centred kernel alignment of two representations of the same N inputs.

    X (N, d1), Y (N, d2) (extra axes are flattened); columns are centred, then

        CKA = ‖Y_cᵀ X_c‖_F² / (‖X_cᵀ X_c‖_F ‖Y_cᵀ Y_c‖_F)   ∈ [0, 1].

    When N is smaller than the widths the same number is computed from the N×N Gram matrices
    K = X_c X_cᵀ, L = Y_c Y_cᵀ as ⟨K, L⟩_F / (‖K‖_F ‖L‖_F), which is cheaper. 1 for Y = X; invariant
    to orthogonal maps and isotropic scaling of either argument. NaN when one is constant.
    """
    xp = get_array_module(X, Y)
    Xc, Yc = _centred_2d(X, xp), _centred_2d(Y, xp)
    if Xc.shape[0] != Yc.shape[0]:
        raise ValueError(f"X and Y must describe the same inputs: {Xc.shape[0]} vs {Yc.shape[0]} rows")
    if Xc.shape[0] <= max(Xc.shape[1], Yc.shape[1]):
        K, L = Xc @ Xc.T, Yc @ Yc.T
        num = to_float((K * L).sum())
        den = to_float(xp.linalg.norm(K)) * to_float(xp.linalg.norm(L))
    else:
        num = to_float(xp.linalg.norm(Yc.T @ Xc)) ** 2
        den = to_float(xp.linalg.norm(Xc.T @ Xc)) * to_float(xp.linalg.norm(Yc.T @ Yc))
    return num / den if den > 0 else float("nan")


def cka_matrix(acts_a, acts_b=None) -> np.ndarray:
    """M[i, j] = linear_cka(acts_a[i], acts_b[j]) for two lists of activations of the same inputs
    (e.g. ``model.activations`` of two networks, or of one network with ``acts_b=None``).
    Returns a host float64 array of shape (len(acts_a), len(acts_b))."""
    acts_b = acts_a if acts_b is None else acts_b
    M = np.empty((len(acts_a), len(acts_b)), dtype=np.float64)
    for i, a in enumerate(acts_a):
        for j, b in enumerate(acts_b):
            M[i, j] = linear_cka(a, b)
    return M


def weight_ratio(deltas: dict, params: dict) -> dict:
    """‖ΔW‖_F / ‖W‖_F for every name in both dicts: how large an update is next to the weight.

    ``deltas`` {name: ΔW} (e.g. lr·grad, or after − before), ``params`` {name: W} (e.g.
    ``model.parameters()``). NaN where ‖W‖ = 0.
    """
    out = {}
    for name, d in deltas.items():
        if name not in params or d is None:
            continue
        W = params[name]
        xp = get_array_module(d, W)
        nw = to_float(xp.linalg.norm(_flat64(W, xp)))
        nd = to_float(xp.linalg.norm(_flat64(d, xp)))
        out[name] = nd / nw if nw > 0 else float("nan")
    return out


def update_ratio(before: dict, after: dict) -> dict:
    """‖after − before‖ / ‖before‖ per parameter, from two snapshots (copies!) of the weights."""
    return weight_ratio({k: after[k] - before[k] for k in before if k in after}, before)
