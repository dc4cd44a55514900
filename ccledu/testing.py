"""Helpers that tests, students and instructors share: relative errors, finite differences,
and "mine vs reference" comparisons that explain the first mismatch.
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy


def rel_error(a, b, eps: float = 1e-12) -> float:
    """max |a − b| / max(|a| + |b|, eps), element-wise, on the host."""
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), eps)))


def grad_rel_error(a, b, eps: float = 1e-30) -> float:
    """‖a − b‖ / max(‖a‖, ‖b‖): a whole-tensor relative error, robust to tiny entries."""
    a = np.asarray(to_numpy(a), dtype=np.float64).ravel()
    b = np.asarray(to_numpy(b), dtype=np.float64).ravel()
    den = max(np.linalg.norm(a), np.linalg.norm(b), eps)
    return float(np.linalg.norm(a - b) / den)


def numerical_gradient(f, x, h: float = 1e-6):
    """Central differences of a scalar function: ∂f/∂x_i ≈ (f(x + h e_i) − f(x − h e_i)) / 2h.

    ``x`` is perturbed in place (and restored), so ``f`` may read it through a closure, e.g. a
    layer's weight. Works for NumPy arrays; use float64.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i].item()
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def numerical_vjp(f, x, dy, h: float = 1e-6):
    """Finite-difference vector–Jacobian product: ∂⟨f(x), dy⟩/∂x (f returns an array)."""
    return numerical_gradient(lambda: np.sum(to_numpy(f()) * to_numpy(dy)), x, h)


def compare(name: str, mine, reference, rtol: float = 1e-6, atol: float = 0.0) -> None:
    """Raise ``AssertionError`` explaining the first mismatch between ``mine`` and ``reference``.

    The message shows the shapes, the worst element (index, both values) and the overall
    relative error, so a student sees *where* their implementation goes wrong.
    """
    m = np.asarray(to_numpy(mine))
    r = np.asarray(to_numpy(reference))
    if m.shape != r.shape:
        raise AssertionError(f"{name}: shape mismatch — mine {m.shape} vs reference {r.shape}")
    if not np.all(np.isfinite(m)):
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(~np.isfinite(m)), m.shape))
        raise AssertionError(f"{name}: mine has a non-finite value {m[idx].item()} at index {idx}")
    diff = np.abs(m.astype(np.float64) - r.astype(np.float64))
    tol = atol + rtol * np.abs(r)
    bad = diff > tol
    if np.any(bad):
        first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), m.shape))
        worst = tuple(int(i) for i in np.unravel_index(np.argmax(diff), m.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {m.size} entries differ (rtol={rtol}, atol={atol}).\n"
            f"  first mismatch at {first}: mine {m[first].item()!r} vs reference {r[first].item()!r}\n"
            f"  largest difference at {worst}: mine {m[worst].item()!r} vs reference {r[worst].item()!r} "
            f"(|diff| = {diff[worst]:.3e})\n"
            f"  whole-tensor relative error {grad_rel_error(m, r):.3e}")
