"""Checks for chapter 11 (validating an implementation with traces, Task 11.1).

Oracle: :func:`ccledu.trace.compare`, the comparison ``ccledu verify`` uses (no task asks for
it as package code); it is poisoned while the student's function runs.
"""
from __future__ import annotations

import math

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["trace_compare", "sum_rounding_sd"]


def _ref_trace_compare(theirs, ours, rtol, atol):
    """(rows, first) built on :func:`ccledu.trace.compare`, the comparison ``ccledu verify``
    uses: one row per name of ``ours`` (in its order) that ``theirs`` holds."""
    from ..trace import compare
    rows = [tuple(compare(name, theirs[name], b, rtol, atol)) for name, b in ours.items()
            if name in theirs]
    first = next((r[0] for r in rows if not r[3]), None)
    return rows, first


def _encode(out, expected_names, who):
    """(rows, first) -> numeric outputs the generic comparison understands; names and order
    are checked here, with a message that says what is wrong."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise AssertionError(f"trace_compare: {who} function must return (rows, first)")
    rows, first = out
    rows = list(rows)
    names = [r[0] for r in rows]
    if names != expected_names:
        raise AssertionError(f"trace_compare: {who} rows are for {names}, expected {expected_names} "
                             f"(every name of `ours`, in its order, that `theirs` also holds)")
    for r in rows:
        if len(r) != 4:
            raise AssertionError(f"trace_compare: row {r!r} is not (name, max_abs, max_rel, ok)")
    if first is not None and first not in names:
        raise AssertionError(f"trace_compare: first = {first!r} is not the name of a row")
    fin = lambda v: -1.0 if math.isinf(float(v)) else float(v)   # noqa: E731  (inf -> -1)
    return {"max_abs": np.array([fin(r[1]) for r in rows]),
            "max_rel": np.array([fin(r[2]) for r in rows]),
            "ok": np.array([1.0 if bool(r[3]) else 0.0 for r in rows]),
            "first (row index, -1 for None)": np.array(-1.0 if first is None else float(names.index(first)))}


@register
def trace_compare(fn, reference=None, seed=0, **options) -> None:
    """The comparison at the heart of ``ccledu verify`` (Task 11.1).

    Contract: ``fn(theirs, ours, rtol, atol) -> (rows, first)``; ``theirs`` and ``ours`` map
    names to arrays. ``rows``: one ``(name, max_abs, max_rel, ok)`` per name of ``ours``, in the
    order of ``ours``, that ``theirs`` also holds. With d = |theirs − ours| element-wise:
    max_abs = max d; max_rel = max d / max(|ours|, atol/rtol); ok = every d <= atol + rtol·|ours|.
    A shape mismatch gives (name, inf, inf, False). ``first``: the name of the first row that is
    not ok, or None. No NaN occurs in the inputs.
    """
    g = _rng(seed)

    def tensors(specs):
        return {k: g.standard_normal(s) for k, s in specs}

    cases = []
    ours = tensors([("act/0", (4, 5)), ("act/1", (4, 3)), ("loss/total", ()), ("grad/w", (3, 5))])
    theirs = {k: v + 1e-12 * g.standard_normal(v.shape) for k, v in ours.items()}
    cases.append(Case("everything agrees", (theirs, ours, 1e-7, 1e-10)))

    theirs = {k: v.copy() for k, v in ours.items()}
    theirs["grad/w"][1, 2] *= 1.01
    theirs["act/1"][0, 0] += 1e-11
    cases.append(Case("one gradient entry 1 % off", (theirs, ours, 1e-7, 1e-10)))

    theirs = {k: v.copy() for k, v in reversed(list(ours.items()))}
    theirs["act/0"] = theirs["act/0"] * (1 + 1e-5)
    theirs["grad/w"] = theirs["grad/w"] + 1e-3
    cases.append(Case("two tensors off, theirs in another order", (theirs, ours, 1e-7, 1e-10)))

    ours2 = {"a": np.zeros((3, 3)), "b": np.array([0.0, 1e-12, 2.0]), "c": np.ones(4)}
    theirs2 = {"a": np.full((3, 3), 5e-11), "b": np.array([3e-11, 0.0, 2.0 + 1e-8]), "c": np.ones(4)}
    cases.append(Case("zeros in ours: atol decides", (theirs2, ours2, 1e-7, 1e-10)))

    ours3 = {"x": g.standard_normal((2, 3)), "only_ours": np.ones(2), "y": g.standard_normal(5)}
    theirs3 = {"y": ours3["y"].copy(), "x": g.standard_normal((3, 2)), "only_theirs": np.ones(1)}
    cases.append(Case("shape mismatch, names in only one dict", (theirs3, ours3, 1e-7, 1e-10)))

    ours4 = {"w32": g.standard_normal((6, 4)).astype(np.float32)}
    theirs4 = {"w32": (ours4["w32"] * (1 + 3e-5)).astype(np.float32)}
    cases.append(Case("float32, loose tolerances", (theirs4, ours4, 1e-4, 1e-5)))

    def expected(theirs, ours):
        return [k for k in ours if k in theirs]

    def post(out, theirs, ours, rtol, atol):
        return _encode(out, expected(theirs, ours), "your")

    ref_fn = reference or _ref_trace_compare

    def ref(theirs, ours, rtol, atol):
        return _encode(ref_fn(theirs, ours, rtol, atol), expected(theirs, ours), "the reference")

    options.setdefault("rtol", 1e-9)
    options.setdefault("atol", 1e-12)
    _run_cases("trace_compare", fn, ref, cases, task="11.1", forbid=("ccledu.trace", "ccledu.trace:compare"), post=post,
               **options)


# --------------------------------------------------------------------------------------------
# Task 11.2 (derived): the size of the rounding error of a float32 / float64 sum
# --------------------------------------------------------------------------------------------

#: rows per case (each row also appears once more with its first entry moved slightly)
_SUM_ROWS = 300


def _sequential_sums(X):
    """Left-to-right sums of the rows of ``X`` (M, n), every addition rounded in ``X.dtype``:
    s_1 = x_1, s_k = fl(s_{k-1} + x_k). The definition, one column at a time (``np.sum`` would
    add pairwise, a different rounding)."""
    s = X[:, 0].copy()
    for k in range(1, X.shape[1]):
        s = s + X[:, k]
    return s


def _measured_sd(X):
    """The root-mean-square, over the rows of ``X`` (M, n), of the rounding error of their
    left-to-right sums in ``X.dtype``: sqrt(mean_rows (ŝ_n − S_n)²), with the exact sum S_n from
    ``math.fsum`` (correctly rounded to float64)."""
    exact = np.array([math.fsum(row) for row in X.astype(np.float64).tolist()])
    err = _sequential_sums(X).astype(np.float64) - exact
    return float(np.sqrt(np.mean(err ** 2)))


@register
def sum_rounding_sd(fn, reference=None, seed=0, **options) -> None:
    """Task 11.2: predict how large the rounding error of a sum is.

    Contract: ``fn(x) -> sd``: ``x`` a 1-D float32 or float64 array of n ≥ 2 entries; ``sd`` (a
    float ≥ 0) the standard deviation of ŝ_n − S_n, the error of summing ``x`` from left to
    right with every addition rounded to nearest in ``x.dtype``, under the chapter's model
    (the rounding errors of the additions independent and uniform over their rounding interval).

    Oracle: **measurement**, not a formula. Each case draws 300 vectors of one kind, sums each
    left to right in its dtype, takes the exact sum from ``math.fsum`` and compares the
    root-mean-square of your ``sd`` over the vectors with the root-mean-square of the measured
    errors: they must agree within 30 % (a factor-2 slip fails). Your ``sd`` must also describe
    the *vector*, not one rounding accident: moving the first entry by a third of the grid
    spacing at the largest partial sum must change it by less than 1 % (the measured error itself
    changes completely).
    """
    g = _rng(seed)
    M = _SUM_ROWS
    kinds = [("float32, 1000 entries uniform in (0, 1)",
              lambda: g.uniform(0.0, 1.0, (M, 1000)).astype(np.float32)),
             ("float32, 4000 standard normal entries (partial sums wander through 0)",
              lambda: g.standard_normal((M, 4000)).astype(np.float32)),
             ("float32, 2000 entries, normal with mean 3",
              lambda: (3.0 + g.standard_normal((M, 2000))).astype(np.float32)),
             ("float64, 2000 entries uniform in (0, 1)",
              lambda: g.uniform(0.0, 1.0, (M, 2000))),
             ("float32, 300 entries uniform in (-1, 10)",
              lambda: g.uniform(-1.0, 10.0, (M, 300)).astype(np.float32))]
    cases = []
    for label, draw in kinds:
        X = draw()
        X2 = X.copy()           # x_1 moved by 0.37 of the grid spacing at the largest partial sum:
        top = np.abs(np.cumsum(X.astype(np.float64), axis=1)).max(axis=1)     # new rounding
        X2[:, 0] = X2[:, 0] + (0.37 * np.spacing(top.astype(X.dtype))).astype(X.dtype)  # errors
        cases.append(Case(label, (np.concatenate([X, X2]),)))

    def mine_rows(X):                   # runs with the references poisoned; only calls fn
        return [fn(row.copy()) for row in X]

    def post(out, X):
        sd = np.array([float(np.asarray(v)) if np.size(v) == 1 else np.nan for v in out])
        if not np.all(np.isfinite(sd)) or np.any(sd < 0):
            raise AssertionError("sum_rounding_sd: your function must return one finite number "
                                 f"≥ 0 per vector (got e.g. {out[int(np.argmax(~np.isfinite(sd) | (sd < 0)))]!r})")
        a, b = sd[:M], sd[M:]
        moved = np.abs(a - b) / np.maximum(np.maximum(a, b), np.finfo(float).tiny)
        if moved.max() > 0.01:
            raise AssertionError(
                f"sum_rounding_sd: moving x[0] by a fraction of the final grid spacing changed your sd by {moved.max():.0%} "
                "(at most 1 % expected): it should predict the spread of the error from the sizes "
                "of the partial sums, not measure this vector's error")
        return {"rms of sd over the vectors": float(np.sqrt(np.mean(sd ** 2)))}

    def oracle(X):
        return {"rms of sd over the vectors": _measured_sd(X)}

    options.setdefault("rtol", 0.3)
    options.setdefault("atol", 0.0)
    _run_cases("sum_rounding_sd", mine_rows, reference or oracle, cases, task="11.2", post=post, **options)
