"""ccledu: counter-current learning and its neighbours, every matrix operation written out.

Sub-modules: backend, im2col, layers, models, losses, rules, optim, data, train, metrics,
trace, testing, check, cli.
"""
__version__ = "0.1.0"

from . import backend  # noqa: F401
from .backend import asarray, get_array_module, to_numpy, use  # noqa: F401
