"""Optional accelerators: a few hot kernels with more than one implementation, the choice made by
measurement on the machine that runs them.

Nothing here changes what is computed. Each kernel below has a **default**, the plain NumPy
expression a reader would write, and optional alternatives. A float32 NumPy call of a kernel
times every candidate once per process, on a sample of a fixed size (a few milliseconds in all),
and keeps the default unless an alternative is at least ``MARGIN`` times faster: a choice that
wins by a large factor on one CPU is never imposed on another CPU where it loses, and the margin
keeps the choice from flipping between runs on the same machine when two candidates are close.
Float64 and CuPy always use the default.

Kernels:

``expm1_nonpositive(x)``
    eˣ − 1 for float32 x ≤ 0 (ELU's negative branch). Default ``np.expm1``. Alternative
    ``poly``: :func:`expm1_nonpositive_f32`, a vectorised range reduction + polynomial (< 1 ulp).
    NumPy's float32 ``expm1`` is a SIMD kernel on CPUs where NumPy dispatches AVX-512 (e.g.
    ~0.3 ns per element on an AVX-512 Xeon, where the polynomial's ~20 NumPy passes take ~8 ns),
    but a per-element C-library call elsewhere (~14 ns per element on an AVX2 EPYC, where the
    polynomial was ~3× faster). Both agree with the exact value to ~2 units in the last place.

``zero(a)``
    The 0 that activations compare with (``xp.maximum(z, zero(z))``). Default: the scalar 0 of
    a's dtype (the plain ``xp.maximum(z, 0)``). Alternative ``array``: ``xp.zeros_like(a)``.
    NumPy runs a scalar operand through a SIMD loop on AVX-512 CPUs (there the scalar is ~30 %
    faster than an array of zeros, which costs a fill and a second read), but through a slow
    broadcast loop on an AVX2 EPYC, where the array was several times faster. Same values
    either way (NaN and signed zeros included, tested).

``weight_grad(a, b)``
    The product a bᵀ of two wide matrices, a (M, K), b (N, K), K ≫ M, N: a convolution's weight
    gradient dW = dYᵀ cols, whose inner dimension runs over every output position of the batch
    (K = 100 352 for the first conv of the speed report's CNN). Default ``a @ b.T``.
    Alternative ``chunked``: the same product as a sum over slices of ``CHUNK`` columns of K.
    OpenBLAS's SkylakeX kernels have a "small matrix" path without packing for products of at
    most 100³ multiply-adds (``sgemm_small_kernel_permit_skylakex.c``: M·N·K ≤ 10⁶), which the
    slices meet for that conv (32 · 9 · 2048) and the whole product does not. On an AMD EPYC
    (Zen 4, OpenBLAS 0.3.31 SkylakeX kernels; ``python benchmarks/weight_grad.py``) the first
    conv's dW took 1.62 ms whole and 0.89 ms in slices (slices of 4096, over the limit, were as
    slow as the whole product), while the second conv's (64 × 288, K = 25 088) took 6.51 ms whole
    and 6.67 in slices. The choice is
    made per (M, N, K) at the first call, on that call's own arrays (the best of 3 calls of
    each, then the chosen one computes the result), with the same ``MARGIN``; float32
    NumPy arrays with K ≥ 2·``CHUNK`` only. The two differ only in the order of the float32 sums.

``run_tiles(kernel, body, *arrays)``
    The memory-bound tap loops (max-pool forward and backward, im2col, col2im) are written as a
    small function ``body`` of the arrays they read and write; the helper runs it once on the
    whole arrays (default) or on pieces split along the batch and channel axes: blocks of
    about ``BLOCK_BYTES`` of the first array in turn (``blocks``), one piece per core at the
    same time (``threads``), or one piece per core, block by block (``threads+blocks``). Every
    k×k window lies in one piece, so the results are bit-for-bit the same. A tap loop reads each
    strided tap of its input in turn; when the input is larger than the core's L2 cache every
    tap pass streams it from memory again, and blocks keep it in cache (measured on an AVX-512
    Xeon, cold caches: max-pool of a 12 MB input, forward 5.9 -> 3.1 ms, backward 13.3 -> 8.5
    ms). Threads help only where a core is free: after a matrix product OpenBLAS's worker
    threads keep spinning for a while (``OPENBLAS_THREAD_TIMEOUT``; with OpenBLAS's default
    the threaded candidates were measured no faster inside a training step on 2 cores, and
    since 7 Dec 2026 ccledu shortens that spin, see ``ccledu.blas_threads``). The
    choice is made per kernel and input size (rounded to a power of two) from the loop's own
    first calls: after one warm-up call, ``TRIALS`` calls of each candidate, alternating, then
    the fastest by best wall time, which must beat ``whole`` by ``TILE_MARGIN``. Small inputs
    (at most two blocks) always run whole. ``CCLEDU_THREADS`` sets the number of threads
    (default: the cores this process may use; 1 drops the threaded candidates).

``conv_layout()``
    Not a kernel but the memory layout a CNN's activations are kept in (``Conv2d``'s tap
    buffers, outputs and input gradients; ``ccledu.layers``, "Memory layout"): ``batch_last``
    (default), (C, H, W, N) in memory, or ``channel_major``, (C, N, H, W), the layout until 7 Dec
    2026. The tap loops of im2col, col2im and max-pooling copy runs of neighbouring numbers,
    W·N long in the first layout, W long in the second (14 for the second conv of the speed
    report's CNN), and a NumPy loop pays a fixed cost per run: on an AMD EPYC the batch-last
    loops took half the time and the small CNN's training step ran 1.04–1.29× as fast for BP,
    FA, DFA and FF, CCL's unchanged (benchmarks/README.md, "AMD EPYC, 7 Dec 2026"). The reason is NumPy's, not the CPU's, so
    this is a fixed rule, not a measured choice; ``CCLEDU_CONV_LAYOUT=channel_major`` switches
    back (read at every call) so that other machines can compare. Values are the same up to
    the order of the sums over positions in ∇W (float rounding).

Control (environment variable ``CCLEDU_KERNELS``, read at the first call of each kernel):
``default`` forces every default (bit-for-bit the same float32 results on every machine whose
NumPy computes the same, no measurement); ``expm1_nonpositive=poly`` (comma-separated
``name=candidate``) forces one candidate (tap loops: ``maxpool_backward=blocks``). :func:`choices` returns what was chosen and the
measured times; the speed benchmark writes them into its report.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from .backend import get_array_module

#: an alternative replaces the default only when it is at least this many times faster
MARGIN = 1.5
#: float32 elements of the sample each candidate is timed on
SAMPLE_SIZE = 1 << 18

_chosen: dict = {}          # kernel name -> {"use": candidate, "ms": {candidate: ms}, "why": str}


def choices() -> dict:
    """{kernel: {"use": chosen candidate, "ms": {candidate: best ms}, "why": ...}} for every
    kernel chosen so far in this process (tiles: one entry per kernel and input size,
    ``"maxpool_backward@16MB"``)."""
    out = {k: dict(v) for k, v in _chosen.items()}
    for (kernel, size), rec in sorted(_tiles.items()):
        if rec.get("use"):
            out[f"{kernel}@{_size_label(size)}"] = {
                "use": rec["use"], "why": rec["why"],
                "ms": {c: 1e3 * min(ts) for c, ts in rec["times"].items() if ts}}
    return out


def settled() -> bool:
    """True when no tap-loop choice (:func:`run_tiles`) is still being measured: every kernel
    and size seen so far has its candidate. Benchmarks call a step until then before timing it,
    since the measuring calls try the slower candidates too."""
    return all(rec.get("use") for rec in _tiles.values())


def reset() -> None:
    """Forget every choice (the next call measures again; tests use it)."""
    _chosen.clear()
    _tiles.clear()


#: the memory layouts of :func:`conv_layout`, default first
CONV_LAYOUTS = ("batch_last", "channel_major")


def conv_layout() -> str:
    """'batch_last' (default) or 'channel_major': how ``Conv2d`` lays out its tap buffers, its
    output and its input gradient in memory (the module docstring says why).
    ``CCLEDU_CONV_LAYOUT`` overrides the default."""
    env = os.environ.get("CCLEDU_CONV_LAYOUT", "").strip()
    if not env:
        return CONV_LAYOUTS[0]
    if env not in CONV_LAYOUTS:
        raise ValueError(f"CCLEDU_CONV_LAYOUT={env!r}: use one of {', '.join(CONV_LAYOUTS)} "
                         f"(or leave it unset for {CONV_LAYOUTS[0]})")
    return env


def _forced() -> dict:
    spec = os.environ.get("CCLEDU_KERNELS", "").strip()
    if not spec:
        return {}
    if spec == "default":
        return {"*": "default"}
    out = {}
    for item in spec.split(","):
        name, sep, cand = item.partition("=")
        if not sep:
            raise ValueError(f"CCLEDU_KERNELS: {item!r} is not 'kernel=candidate' (or set it to "
                             f"'default'); kernels: {sorted(_KERNELS)}")
        out[name.strip()] = cand.strip()
    return out


def _forced_candidate(kernel: str, candidates, default: str = "default"):
    """The candidate ``CCLEDU_KERNELS`` forces for ``kernel``, or None when it forces none;
    the value 'default' stands for ``default`` (the tap loops call theirs 'whole')."""
    forced = _forced()
    want = forced.get(kernel, forced.get("*"))
    if want is None:
        return None
    want = default if want == "default" else want
    if want not in candidates:
        also = "" if default == "default" else " (or 'default')"
        raise ValueError(f"CCLEDU_KERNELS: kernel {kernel!r} has no candidate {want!r}; "
                         f"choose one of {list(candidates)}{also}")
    return want


def _by_margin(ms: dict) -> str:
    """'default', unless another candidate's best time beats it by ``MARGIN``."""
    fastest = min(ms, key=ms.get)
    return fastest if ms["default"] >= MARGIN * ms[fastest] else "default"


def _best_ms(fn, sample, reps: int = 5) -> float:
    """Best time of ``fn`` on a fresh copy of ``sample`` (the copy is made outside the timer)."""
    work = sample.copy()
    fn(work)
    best = math.inf
    for _ in range(reps):
        np.copyto(work, sample)
        t = time.perf_counter()
        fn(work)
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def choose(name: str) -> str:
    """The candidate used for kernel ``name`` in this process (measured on first call)."""
    if name in _chosen:
        return _chosen[name]["use"]
    candidates, sample = _KERNELS[name]
    want = _forced_candidate(name, candidates)
    if want is not None:
        _chosen[name] = {"use": want, "ms": {}, "why": "forced by CCLEDU_KERNELS"}
        return want
    arg = sample()
    ms = {c: _best_ms(fn, arg) for c, fn in candidates.items()}
    use = _by_margin(ms)
    _chosen[name] = {"use": use, "ms": ms,
                     "why": f"measured on {SAMPLE_SIZE} float32 elements, margin {MARGIN}"}
    return use


# --------------------------------------------------------------------------------------------
# expm1 on x <= 0 (ELU)
# --------------------------------------------------------------------------------------------

_LN2_HI = np.float32(0.693145751953125)        # ln 2 to 16 bits: k·_LN2_HI is exact for |k| < 256
_LN2_LO = np.float32(1.4286067653e-06)         # ln 2 − _LN2_HI
_INV_LN2 = np.float32(1.4426950408889634)
#: 1/7!, 1/6!, …, 1/2!: Taylor coefficients of (expm1(r) − r)/r², highest first
_EXPM1_COEFS = [np.float32(1 / math.factorial(n)) for n in range(7, 1, -1)]


def expm1_nonpositive_f32(x):
    """expm1(x) = eˣ − 1 for a float32 array with −30 ≤ x ≤ 0 (NaN passes through).

    The textbook method of a libm, in whole-array NumPy operations:

        x = k·ln2 + r,  k = rint(x/ln2),  |r| ≤ ln2/2      (ln 2 split in two: r is exact)
        expm1(r) = r + r²(1/2! + r/3! + … + r⁵/7!)          (Taylor, degree 7: < 2e−8 relative)
        expm1(x) = 2ᵏ·expm1(r) + (2ᵏ − 1)                   (2ᵏ built from its exponent bits)

    Measured against float64 over 1.5·10⁶ points of [−30, 0] (``tests/test_layers.py``): at
    most 0.93 units in the last place, i.e. faithfully rounded. Below −30, expm1 is −1 in
    float32: callers clamp there. It is the ``poly`` candidate of :func:`expm1_nonpositive`,
    faster than NumPy's ``expm1`` only where that one is a scalar C-library loop.
    """
    xp = get_array_module(x)
    k = x * _INV_LN2
    xp.rint(k, out=k)
    r = k * _LN2_HI
    xp.subtract(x, r, out=r)
    r -= k * _LN2_LO
    q = r * _EXPM1_COEFS[0]
    for c in _EXPM1_COEFS[1:]:
        q += c
        q *= r
    q *= r
    q += r                                      # expm1(r)
    with np.errstate(invalid="ignore"):         # NaN -> int: garbage exponent, result stays NaN
        bits = k.astype(xp.int32)
    bits += 127
    bits <<= 23
    two_k = bits.view(xp.float32)               # 2ᵏ (k ≥ −44 here: a normal float)
    q *= two_k
    two_k -= 1
    q += two_k
    return q


def _expm1_default(a):
    return np.expm1(a, out=a)


def _expm1_poly(a):
    np.maximum(a, np.float32(-30.0), out=a)     # expm1(−30) is −1 in float32
    return expm1_nonpositive_f32(a)


def _expm1_sample():
    return -np.linspace(0.0, 30.0, SAMPLE_SIZE, dtype=np.float32)


def expm1_nonpositive(a):
    """eˣ − 1 for an array a ≤ 0 (NaN passes through), computed in place when it can be:
    returns the result, which may be ``a`` itself. Float32 NumPy arrays use the candidate
    measured fastest (see the module docstring); everything else ``xp.expm1``."""
    xp = get_array_module(a)
    if xp is not np or a.dtype != np.float32:
        return xp.expm1(a, out=a)
    use = _chosen["expm1_nonpositive"]["use"] if "expm1_nonpositive" in _chosen \
        else choose("expm1_nonpositive")
    return _KERNELS["expm1_nonpositive"][0][use](a)


def _max_scalar(a):
    return np.maximum(a, a.dtype.type(0), out=a)


def _max_array(a):
    return np.maximum(a, np.zeros_like(a), out=a)


def _zero_sample():
    return np.linspace(-1.0, 1.0, SAMPLE_SIZE, dtype=np.float32)


def zero(a):
    """0 to compare ``a`` with: the scalar 0 of a's dtype, or (where this CPU computes that
    faster, measured once per process on float32) ``xp.zeros_like(a)``."""
    xp = get_array_module(a)
    if xp is not np:
        return a.dtype.type(0)
    use = _chosen["zero"]["use"] if "zero" in _chosen else choose("zero")
    return a.dtype.type(0) if use == "default" else np.zeros_like(a)


#: kernel -> ({candidate: fn(work array) -> result, "default" first}, sample builder).
#: The candidates work in place on their argument.
_KERNELS = {
    "expm1_nonpositive": ({"default": _expm1_default, "poly": _expm1_poly}, _expm1_sample),
    "zero": ({"default": _max_scalar, "array": _max_array}, _zero_sample),
}


# --------------------------------------------------------------------------------------------
# Weight gradients: products with a long inner dimension
# --------------------------------------------------------------------------------------------

#: columns of the inner dimension per product in ``weight_grad``'s ``chunked`` candidate
CHUNK = 2048


def _wg_default(a, b):
    return a @ b.T


def _wg_chunked(a, b):
    out = a[:, :CHUNK] @ b[:, :CHUNK].T
    for s in range(CHUNK, a.shape[1], CHUNK):
        out += a[:, s:s + CHUNK] @ b[:, s:s + CHUNK].T
    return out


_WEIGHT_GRAD = {"default": _wg_default, "chunked": _wg_chunked}


def weight_grad(a, b):
    """a bᵀ for a (M, K) and b (N, K): ``a @ b.T``, or for float32 NumPy arrays with a long K
    the candidate measured faster for this (M, N, K) (see the module docstring)."""
    xp = get_array_module(a)
    if xp is not np or a.dtype != np.float32 or a.shape[1] < 2 * CHUNK:
        return a @ b.T
    name = f"weight_grad@{a.shape[0]}x{b.shape[0]}x{a.shape[1]}"
    rec = _chosen.get(name)
    if rec is None:
        want = _forced_candidate("weight_grad", _WEIGHT_GRAD)
        if want is not None:
            rec = {"use": want, "ms": {}, "why": "forced by CCLEDU_KERNELS"}
        else:
            ms = {c: math.inf for c in _WEIGHT_GRAD}
            for rnd in range(4):                      # round 0 warms up, untimed
                for c, fn in _WEIGHT_GRAD.items():
                    t = time.perf_counter()
                    fn(a, b)
                    if rnd:
                        ms[c] = min(ms[c], 1e3 * (time.perf_counter() - t))
            rec = {"use": _by_margin(ms), "ms": ms,
                   "why": f"best of 3 calls on the first call's arrays, margin {MARGIN}"}
        _chosen[name] = rec
    return _WEIGHT_GRAD[rec["use"]](a, b)


# --------------------------------------------------------------------------------------------
# Cache blocking of tap loops
# --------------------------------------------------------------------------------------------

#: target size of one block of the first array given to :func:`run_tiles`
BLOCK_BYTES = 256 * 1024
#: calls of each candidate timed before a tile choice is made (after one untimed warm-up call)
TRIALS = 4
#: an alternative replaces ``whole`` only when its best call is at least this many times faster
#: (every candidate gives identical results, so the margin only guards against timing noise)
TILE_MARGIN = 1.1

_tiles: dict = {}           # (kernel, size bucket) -> {"times": {cand: [s]}, "use": cand | None}
_TILE_CANDIDATES = ("whole", "blocks", "threads", "threads+blocks")
_pool = (0, None)           # (threads, executor) of the "threads" candidates, made at first use


def workers() -> int:
    """Threads a tap loop may use: ``CCLEDU_THREADS`` if set, else the cores this process may
    run on. With 1, the "threads" candidates are not tried."""
    env = os.environ.get("CCLEDU_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"CCLEDU_THREADS={env!r}: give a whole number of threads >= 1")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                # not on Linux
        return os.cpu_count() or 1


def _tile_candidates() -> tuple:
    """The candidates this process can run: the threaded ones need at least 2 threads."""
    return _TILE_CANDIDATES if workers() > 1 else _TILE_CANDIDATES[:2]


def _size_label(bucket: int) -> str:
    n = 1 << max(bucket - 1, 0)
    return f"{n >> 20}MB" if n >= 1 << 20 else f"{n >> 10}KB"


def split_blocks(arrays, block_bytes: int = BLOCK_BYTES, axes=(0, 1)) -> list:
    """Tuples of views of ``arrays`` splitting the given ``axes`` (sizes shared by every array:
    batch and channels of a max-pool, channels of im2col) into blocks of about ``block_bytes``
    of ``arrays[0]``: the axis that is outer in memory first, then the other one."""
    a0 = arrays[0]
    pieces = max(1, -(-a0.nbytes // block_bytes))
    order = sorted(axes, key=lambda ax: -abs(a0.strides[ax]))
    counts = {}
    left = pieces
    for ax in order:
        counts[ax] = min(a0.shape[ax], left)
        left = -(-left // counts[ax])
    views = [tuple(arrays)]
    for ax in order:
        step = -(-a0.shape[ax] // counts[ax])
        idx = [slice(None)] * (ax + 1)
        nxt = []
        for v in views:
            for o in range(0, a0.shape[ax], step):
                idx[ax] = slice(o, o + step)
                nxt.append(tuple(a[tuple(idx)] for a in v))
        views = nxt
    return views


def _run_blocks(body, arrays, axes):
    for views in split_blocks(arrays, axes=axes):
        body(*views)


def _run_threads(body, arrays, axes, inner_blocks: bool):
    """``arrays`` cut into one piece per worker; the pieces run at once (NumPy releases the GIL
    inside its loops), the calling thread taking the first."""
    global _pool
    n = workers()
    pieces = split_blocks(arrays, block_bytes=-(-arrays[0].nbytes // n), axes=axes)
    if _pool[0] != n:
        from concurrent.futures import ThreadPoolExecutor
        _pool = (n, ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="ccledu-tiles"))
    run = (lambda *v: _run_blocks(body, v, axes)) if inner_blocks else body
    futures = [_pool[1].submit(run, *p) for p in pieces[1:]]
    run(*pieces[0])
    for f in futures:
        f.result()


def run_tiles(kernel: str, body, *arrays, axes=(0, 1)) -> None:
    """Run a tap loop ``body(*arrays)`` on the whole arrays, or on pieces of them split along
    ``axes`` (every piece holds whole windows, so the results are bit-for-bit the same; ``body``
    writes its results into views of the arrays it is given). Candidates:

    ``whole`` (default)
        ``body(*arrays)`` once.
    ``blocks``
        ``body`` on blocks of about ``BLOCK_BYTES`` of ``arrays[0]`` in turn (cache blocking).
    ``threads``, ``threads+blocks``
        one piece per worker thread (:func:`workers`), run at the same time; within a piece,
        ``body`` runs once, or block by block.

    The choice is made per kernel and input size (rounded to a power of two) from the loop's
    own first calls: after one warm-up call, ``TRIALS`` calls of each candidate, alternating;
    then the fastest by best wall time, which must beat ``whole`` by ``TILE_MARGIN``. Small
    inputs (at most two blocks) and CuPy arrays always run whole.
    """
    a0 = arrays[0]
    if get_array_module(a0) is not np or a0.nbytes <= 2 * BLOCK_BYTES:
        body(*arrays)
        return
    key = (kernel, int(a0.nbytes).bit_length())
    rec = _tiles.get(key)
    if rec is None:
        cands = _tile_candidates()
        rec = {"times": {c: [] for c in cands}, "use": None, "why": "", "warm": False}
        want = _forced_candidate(kernel, cands, default="whole")
        if want is not None:
            rec["use"], rec["why"] = want, "forced by CCLEDU_KERNELS"
        _tiles[key] = rec                 # only once the choice is valid
    use = rec["use"]
    if use is None:                       # still measuring: alternate the candidates
        n = {c: len(ts) for c, ts in rec["times"].items()}
        trying = min(n, key=n.get)
    else:
        trying = use
    t0 = time.perf_counter()
    if trying == "whole":
        body(*arrays)
    elif trying == "blocks":
        _run_blocks(body, arrays, axes)
    else:
        _run_threads(body, arrays, axes, inner_blocks=trying == "threads+blocks")
    if use is None:
        if not rec["warm"]:               # the first call pays for first-touch page faults
            rec["warm"] = True
            return
        rec["times"][trying].append(time.perf_counter() - t0)
        if all(len(ts) >= TRIALS for ts in rec["times"].values()):
            best = {c: min(ts) for c, ts in rec["times"].items()}
            alt = min((c for c in best if c != "whole"), key=best.get)
            rec["use"] = alt if best["whole"] >= TILE_MARGIN * best[alt] else "whole"
            rec["why"] = (f"best wall time of {TRIALS} early calls of each, blocks of "
                          f"{BLOCK_BYTES >> 10} KB, {workers()} threads, margin {TILE_MARGIN}")
