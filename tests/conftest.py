"""Shared fixtures. ``xp`` runs a test on NumPy and, where a GPU is usable, on CuPy."""
import os

import numpy as np
import pytest

from ccledu.backend import cupy_available

BACKENDS = [pytest.param("numpy", id="numpy"),
            pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
                not cupy_available(), reason="CuPy not installed or no usable GPU (cupy.is_available() is False)")])]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def xp(backend_name):
    """The array module of the back-end under test (numpy or cupy)."""
    from ccledu.backend import get_backend, use
    with use(backend_name):
        yield get_backend(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _data_env():
    """Point CCLEDU_DATA at the shared official files when they are beside the checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.abspath(os.path.join(here, "..", "..", "shared", "data"))
    if "CCLEDU_DATA" not in os.environ and os.path.isdir(shared):
        os.environ["CCLEDU_DATA"] = shared
    yield
