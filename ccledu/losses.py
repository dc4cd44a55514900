"""Loss functions with their gradients written out.

Notation: logits z (N, C), integer labels y (N,), Y the N×C one-hot matrix.
"""
from __future__ import annotations

from .backend import get_array_module


def log_softmax(z):
    """log softmax along the last axis, shifted by the row maximum for stability."""
    xp = get_array_module(z)
    zs = z - z.max(axis=-1, keepdims=True)
    return zs - xp.log(xp.exp(zs).sum(axis=-1, keepdims=True))


def softmax(z):
    xp = get_array_module(z)
    zs = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(zs)
    return e / e.sum(axis=-1, keepdims=True)


def one_hot(y, num_classes: int, dtype, xp=None):
    """Y (N, C) with Y[n, y_n] = 1."""
    xp = xp or get_array_module(y)
    return (y[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)


def cross_entropy(logits, y, grad: bool = True):
    """Mean softmax cross-entropy and its gradient.

    L = -(1/N) Σ_n log softmax(z_n)[y_n]          (a 0-d array, stays on the device)
    dL/dz = (softmax(z) - Y) / N                  (N, C)
    """
    xp = get_array_module(logits)
    N, C = logits.shape
    logp = log_softmax(logits)
    loss = -xp.take_along_axis(logp, y.reshape(-1, 1).astype(xp.int64), axis=1).mean()
    if not grad:
        return loss
    d = xp.exp(logp)
    d[xp.arange(N), y] -= 1
    return loss, d / N


def accuracy(logits, y) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float((logits.argmax(axis=1) == y).mean())
