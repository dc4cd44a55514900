"""Checks for chapter 10 (the GPU back-end, Task 10.1).

Oracle: softmax as exp(z − logsumexp(z)) computed in float64 on the host with NumPy's
log-add-exp; ccledu.losses is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["backend_softmax"]


def _lse_softmax(z):
    from ..backend import asarray, is_cupy_array, to_numpy
    zz = to_numpy(z).astype(np.float64)
    p = np.exp(zz - np.logaddexp.reduce(zz, axis=-1, keepdims=True))
    return asarray(p.astype(z.dtype), backend="cupy" if is_cupy_array(z) else "numpy")


@register
def backend_softmax(fn, reference=None, seed=0, **options) -> None:
    """Softmax over the last axis, for any back-end, keeping the dtype (Task 10.1).

    Contract: ``fn(z) -> p`` with z an array of any shape (…, C) from NumPy (or CuPy), p of the
    same shape, type and dtype: p[..., c] = exp(z[..., c]) / Σ_c' exp(z[..., c']). Inputs with
    large entries (±1000) must not overflow (the mistake the task warns about). Cases run in float64 and float32 (rtol 1e-5 for
    float32), and additionally on CuPy arrays when a GPU is usable (the result must stay there).
    """
    from ..backend import asarray, cupy_available, get_array_module

    g = _rng(seed)
    raw = [("(4, 10) normal", g.standard_normal((4, 10))),
           ("(1, 3) one row", np.array([[0.0, 1.0, -1.0]])),
           ("(2, 3, 5) batch of matrices", 3 * g.standard_normal((2, 3, 5))),
           ("(3, 4) large logits ±1000", 1000 * g.choice([-1.0, 0.5, 1.0], size=(3, 4))),
           ("(6,) a single vector", g.standard_normal(6))]

    def mine(z):
        out = fn(z)
        if get_array_module(out) is not get_array_module(z):
            raise AssertionError(f"backend_softmax: input is a {type(z).__module__} array but your "
                                 f"result is a {type(out).__module__} array; take xp from the input")
        if out.dtype != z.dtype:
            raise AssertionError(f"backend_softmax: input dtype {z.dtype}, your result {out.dtype}; "
                                 f"keep the dtype")
        return out

    verbose = options.pop("verbose", True)
    rtol = options.pop("rtol", None)
    atol = options.pop("atol", None)
    ref = reference or _lse_softmax
    n = 0
    backends = ["numpy"] + (["cupy"] if cupy_available() else [])
    for be in backends:
        for dtype, rt, at in (("float64", 1e-7, 1e-12), ("float32", 1e-5, 1e-7)):
            cases = [Case(f"{label}, {dtype}, {be}", (asarray(z, dtype=dtype, backend=be),))
                     for label, z in raw]
            _run_cases("backend_softmax", mine, ref, cases, rtol=rt if rtol is None else rtol,
                       atol=at if atol is None else atol, verbose=False, task="10.1",
                       forbid=("ccledu.losses", "ccledu.losses:softmax"), **options)
            n += len(cases)
    if verbose:
        print(f"✓ backend_softmax: all {n} cases match ({', '.join(backends)}; float64 and float32)")
    return None
