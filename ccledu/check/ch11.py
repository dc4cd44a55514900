"""Checks for chapter 11 (validating an implementation with traces, Task 11.1).

Oracle: :func:`ccledu.trace.compare`, the comparison ``ccledu verify`` uses (no task asks for
it as package code); it is poisoned while the student's function runs.
"""
from __future__ import annotations

import math

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["trace_compare"]


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
