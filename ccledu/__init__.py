"""ccledu: counter-current learning and its neighbours, every matrix operation written out.

Sub-modules: backend, im2col, layers, models, losses, rules, optim, data, train, metrics,
trace, testing, check, cli.
"""
__version__ = "0.1.0"

# first, before anything loads NumPy: how long OpenBLAS's idle threads spin (ccledu.blas_threads)
from . import blas_threads as _blas_threads

_blas_threads.apply()

from . import backend  # noqa: E402,F401
from .backend import asarray, get_array_module, to_numpy, use  # noqa: E402,F401
