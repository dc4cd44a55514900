"""Array back-ends: NumPy by default, CuPy on request.

Kernels never bind an array module at import time. Each one asks its arguments::

    xp = get_array_module(x, W)     # numpy, or cupy when any argument lives on the GPU

The *current* back-end only matters at the edges, where host data (datasets, freshly drawn
weights) is moved onto a device by :func:`asarray`. Switch it for a block of code with::

    with use("cupy"):
        model = build_model(...)     # weights drawn on the host, then moved to the GPU

Random numbers are always drawn on the host with a seeded :class:`numpy.random.Generator`
(:func:`rng`) and then moved, so a NumPy run and a CuPy run with the same seed start from
bit-identical weights.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import numpy as np

BACKENDS = ("numpy", "cupy")
_current = "numpy"


def _import_cupy():
    try:
        return importlib.import_module("cupy")
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None


def cupy_available() -> bool:
    """True when CuPy imports *and* can reach a CUDA device."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return bool(cp.is_available())
    except Exception:
        return False


def _why_no_cupy() -> str:
    cp = _import_cupy()
    if cp is None:
        return ("CuPy is not installed. Install the GPU extra matching your CUDA toolkit, "
                "e.g. `pip install cupy-cuda12x` (see https://docs.cupy.dev/en/stable/install.html), "
                "or use --backend numpy.")
    return ("CuPy is installed but cupy.is_available() is False: no usable CUDA device or driver "
            "was found on this machine. Use --backend numpy, or run on a machine with an NVIDIA GPU.")


def get_backend(name: str | None = None):
    """Return the array module called ``name`` (default: the current back-end).

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` (with the reason) when CuPy
    is asked for but cannot be used.
    """
    name = _current if name is None else name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "numpy":
        return np
    if not cupy_available():
        raise RuntimeError("backend 'cupy' was requested but cannot be used: " + _why_no_cupy())
    return _import_cupy()


def current() -> str:
    """Name of the current back-end ('numpy' or 'cupy')."""
    return _current


def set_backend(name: str) -> None:
    """Make ``name`` the current back-end for :func:`asarray` (checks CuPy is usable)."""
    global _current
    get_backend(name)
    _current = name


@contextlib.contextmanager
def use(name: str) -> Iterator[object]:
    """Context manager: ``with use("cupy") as xp: ...`` makes ``name`` the current back-end."""
    global _current
    xp = get_backend(name)
    previous = _current
    _current = name
    try:
        yield xp
    finally:
        _current = previous


def get_array_module(*arrays):
    """The module (numpy or cupy) that owns the arrays; numpy when none is a CuPy array.

    Mirrors ``cupy.get_array_module`` but works without CuPy installed. ``None`` and Python
    scalars are ignored.
    """
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            return _import_cupy()
    return np


def is_cupy_array(a) -> bool:
    return type(a).__module__.startswith("cupy")


def asarray(a, dtype=None, backend: str | None = None):
    """Move ``a`` onto the current (or the named) back-end, optionally casting to ``dtype``."""
    xp = get_backend(backend)
    if xp is np and is_cupy_array(a):
        a = a.get()
    return xp.asarray(a, dtype=dtype)


def asarray_like(a, like, dtype=None):
    """``asarray(a, dtype)`` on the back-end that holds ``like`` (e.g. a host draw moved to the
    device of the model's weights)."""
    return asarray(a, dtype=dtype, backend="cupy" if is_cupy_array(like) else "numpy")


def to_numpy(a):
    """A NumPy copy/view of ``a`` (from the GPU if needed). Scalars pass through as NumPy scalars."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def to_float(a) -> float:
    """A Python float from a 0-d array of either back-end (one device->host copy on CuPy)."""
    return float(to_numpy(a))


def rng(seed) -> np.random.Generator:
    """The project's host-side random generator. Always NumPy, whatever the back-end."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def resolve_dtype(dtype) -> np.dtype:
    """``'float32'`` / ``'float64'`` / a NumPy dtype -> NumPy dtype, refusing anything else."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def machine_info(backend: str = "numpy") -> dict:
    """Where a result was produced: date (UTC), Python, platform, CPU model and cores, NumPy and
    its BLAS, ccledu's version, and with ``backend="cupy"`` the GPU and CuPy versions.

    Written into every ``metrics.json`` and benchmark result, so a number is never separated from
    the machine that made it.
    """
    import datetime
    import os
    import platform

    from . import __version__

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "numpy": np.__version__, "ccledu": __version__}
    try:
        info["blas"] = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001  (the layout of show_config differs between NumPy versions)
        pass
    threads = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if threads:
        info["blas_threads"] = threads
    if backend == "cupy":
        cp = _import_cupy()
        info["cupy"] = cp.__version__
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props["name"]
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return info
