"""How long OpenBLAS's idle worker threads spin: set once, before NumPy loads OpenBLAS.

NumPy's matrix products run on OpenBLAS, which keeps a pool of worker threads. After a product
each worker waits for the next one by *spinning* (polling on a core) for up to
2^``OPENBLAS_THREAD_TIMEOUT`` CPU cycles before it goes to sleep; OpenBLAS's default is 2²⁸
cycles, about 0.1 s. A training step alternates products with NumPy's single-threaded passes
(im2col, col2im, max-pooling, activations), and for those ~0.1 s a spinning worker holds a core
the passes (and the threaded tap loops of ``ccledu.accel.run_tiles``) could use. On a 2-core
machine the small CNN's steps took 9-17 % longer with OpenBLAS's default than with ccledu's value.

ccledu therefore sets ``OPENBLAS_THREAD_TIMEOUT=20`` (2²⁰ cycles, 0.3-0.4 ms) when it is
imported, if

* the variable is not set already (a value you set always wins; ``OPENBLAS_THREAD_TIMEOUT=28``
  restores OpenBLAS's default), and
* NumPy is not loaded yet: OpenBLAS reads the variable once, when NumPy loads it, so
  ``import ccledu`` must come before ``import numpy`` (the ``ccledu`` command does this; in a
  script or notebook, import ccledu first, or set the variable in the shell).

2²⁰ cycles outlast the gaps between the products of an MLP step (a few µs to ~0.1 ms of
element-wise work), so those products rarely wait for a sleeping worker, and end well inside a
CNN step's multi-millisecond tap loops. Measured on a 2-core AMD EPYC (Zen 4, OpenBLAS 0.3.31
SkylakeX kernels; ``python benchmarks/blas_spin_ab.py``, benchmarks/README.md "AMD EPYC, 7 Dec
2026, second session" and "third session"; three A/B runs): CNN steps 1.09-1.27x as fast for
the five rules, MLP steps 0.96-1.02x by best time (CCL 0.96-0.97 in two runs, 1.02 in the
other); 2¹⁸ gave the same, 2²² less for the CNN. Not yet measured on the
Intel kinds (run that script there). Nothing computed changes: only when an idle thread sleeps.
The variable is inherited by child processes (sweep workers), whose OpenBLAS then reads it too.

:data:`STATE` records what happened (the speed reports print it).
"""
from __future__ import annotations

import os
import sys

#: the value ccledu gives ``OPENBLAS_THREAD_TIMEOUT`` (log₂ of the cycles a worker spins)
SPIN_LOG2 = 20
#: {"value": the variable as OpenBLAS saw it (None: unset, OpenBLAS's default 28),
#:  "by": "ccledu" | "user" | "numpy imported before ccledu (OpenBLAS's default)"}
STATE: dict = {}


def apply() -> dict:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` as the module docstring says (once per process; later
    calls change nothing). Returns :data:`STATE`."""
    if STATE:
        return STATE
    env = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if env is not None:
        STATE.update(value=env, by="user")
    elif "numpy" in sys.modules:
        STATE.update(value=None, by="numpy imported before ccledu (OpenBLAS's default)")
    else:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(SPIN_LOG2)
        STATE.update(value=str(SPIN_LOG2), by="ccledu")
    return STATE
