"""Grading tests for chapter 10 (GPU back-end): ``pytest -m ch10``.

``check.backend_softmax`` (Task 10.1) is compared with an oracle that does not depend on the
package: the definition evaluated row by row in Python floats with ``math.exp`` after the max
shift. On a machine with a usable GPU the check also runs every case on CuPy arrays.
"""
import math

import numpy as np
import pytest

from ccledu import check
from ccledu.backend import get_array_module


def oracle_softmax(z):
    from ccledu.backend import asarray, is_cupy_array, to_numpy
    zz = to_numpy(z).astype(np.float64)
    out = np.empty_like(zz)
    for idx in np.ndindex(zz.shape[:-1]):
        row = zz[idx]
        m = max(row)
        e = [math.exp(v - m) for v in row]
        s = sum(e)
        out[idx] = [v / s for v in e]
    return asarray(out.astype(z.dtype), backend="cupy" if is_cupy_array(z) else "numpy")


@pytest.mark.ch10
def test_reference_softmax_matches_the_definition():
    from ccledu.losses import softmax
    check.backend_softmax(softmax, reference=oracle_softmax, verbose=False, poison=False)


@pytest.mark.ch10
def test_dtype_change_overflow_and_host_copies_are_caught():
    def upcasts(z):
        xp = get_array_module(z)
        e = xp.exp(z.astype(np.float64) - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def no_shift(z):
        xp = get_array_module(z)
        with np.errstate(all="ignore"):
            e = xp.exp(z)
            return e / e.sum(axis=-1, keepdims=True)

    for wrong in (upcasts, no_shift):
        with pytest.raises(AssertionError):
            check.backend_softmax(wrong, verbose=False)


@pytest.mark.ch10
def test_reference_keeps_backend_and_dtype(xp):
    from ccledu.backend import asarray
    for dtype in ("float32", "float64"):
        z = asarray(np.random.default_rng(0).standard_normal((3, 7)), dtype=dtype)
        p = __import__('ccledu.losses', fromlist=['softmax']).softmax(z)
        assert get_array_module(p) is xp and p.dtype == z.dtype
        np.testing.assert_allclose(float(p.sum(axis=-1).max()), 1.0, rtol=1e-6)
