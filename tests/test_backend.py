import numpy as np
import pytest

from ccledu import backend
from ccledu.backend import asarray, get_array_module, get_backend, to_numpy, use


def test_numpy_default():
    assert backend.current() == "numpy"
    assert get_array_module(np.zeros(2), None, 3.0) is np
    a = asarray([1, 2], dtype="float32")
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    assert to_numpy(a) is a or np.array_equal(to_numpy(a), a)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        get_backend("jax")


@pytest.mark.skipif(backend.cupy_available(), reason="a GPU is available here")
def test_cupy_unavailable_explains_why():
    with pytest.raises(RuntimeError, match="cannot be used") as e:
        with use("cupy"):
            pass
    assert "--backend numpy" in str(e.value)
    assert backend.current() == "numpy"


def test_use_restores_previous(xp):
    assert backend.current() == xp.__name__
    a = asarray(np.arange(3.0))
    assert get_array_module(a) is xp
    np.testing.assert_array_equal(to_numpy(a), np.arange(3.0))


def test_rng_is_host_numpy():
    g = backend.rng(5)
    assert isinstance(g, np.random.Generator)
    assert backend.rng(g) is g
    np.testing.assert_array_equal(backend.rng(5).random(3), np.random.default_rng(5).random(3))
