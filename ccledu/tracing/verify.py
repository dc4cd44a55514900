"""Verifying a trace: recompute its step with ccledu and compare every tensor
(:func:`verify_trace`, :func:`compare`, the :class:`Report` and its table)."""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from ..backend import asarray, get_array_module
from .format import NONFINITE_KEY, TOLERANCES, TraceError, read_trace, rebuild
from .record import run_step



#: one compared tensor: its name, max |file − ccledu|, max relative error, whether it agrees
Row = namedtuple("Row", ["tensor", "max_abs", "max_rel", "ok"])


class Report(list):
    """The rows of :func:`verify_trace` (a list of :data:`Row`, in computation order) plus:

    ``missing``: tensors ccledu computes that the file lacks (not checked);
    ``unknown``: tensors in the file that ccledu does not compute (not checked);
    ``rtol``, ``atol``, ``meta``; ``ok`` (every row agrees) and ``first_mismatch`` (index or None).
    """

    def __init__(self, rows=(), missing=(), unknown=(), rtol=0.0, atol=0.0, meta=None):
        super().__init__(rows)
        self.missing = list(missing)
        self.unknown = list(unknown)
        self.rtol, self.atol = rtol, atol
        self.meta = meta or {}

    @property
    def ok(self) -> bool:
        """Every compared tensor agrees, and at least one was compared."""
        return len(self) > 0 and all(r.ok for r in self)

    @property
    def first_mismatch(self):
        return next((i for i, r in enumerate(self) if not r.ok), None)

    def failing(self) -> list:
        return [r.tensor for r in self if not r.ok]

    def summary(self) -> str:
        """One paragraph: all agree, or the first tensor that differs and the last that agreed."""
        i = self.first_mismatch
        tol = f"rtol {self.rtol:g}, atol {self.atol:g}"
        if i is None:
            return f"all {len(self)} tensors agree ({tol})."
        r = self[i]
        n_bad = len(self.failing())
        msg = (f"{n_bad} of {len(self)} tensors differ ({tol}). The first, in computation order, is "
               f"{r.tensor} (max abs error {r.max_abs:.3e}, max rel error {r.max_rel:.3e}). ")
        if i == 0:
            msg += ("It is the first tensor checked: look at the inputs, the parameters and the "
                    "settings in meta (layers, loss, optimizer).")
        else:
            msg += (f"The tensor computed just before it, {self[i - 1].tensor}, still agrees: the "
                    f"difference arises between the two.")
        return msg



def compare(name: str, theirs, ours, rtol: float, atol: float,
            allow_nonfinite: bool = False) -> Row:
    """Row for one tensor: max |theirs − ours|, max relative error, and whether every element
    satisfies |theirs − ours| <= atol + rtol·|ours|. The relative error of an element is
    |theirs − ours| / max(|ours|, atol/rtol) (so elements near zero are judged by atol).

    NaN or inf on either side is a mismatch (error reported as inf), even when both sides hold
    it at the same place; only with ``allow_nonfinite`` (the file says why, see
    :data:`NONFINITE_KEY`) does a tensor with non-finite elements agree, and then only when both
    sides are equal bit for bit in the file's dtype."""
    a = np.asarray(theirs)
    if a.shape != np.shape(ours):
        return Row(name, math.inf, math.inf, False)
    if a.size == 0:
        return Row(name, 0.0, 0.0, True)
    b = np.asarray(ours)
    finite = np.isfinite(a.astype(np.float64)) & np.isfinite(b.astype(np.float64))
    if not finite.all():
        same = (a.dtype.kind == "f" and np.ascontiguousarray(a).tobytes()
                == np.ascontiguousarray(b.astype(a.dtype)).tobytes())
        if allow_nonfinite and same:
            return Row(name, 0.0, 0.0, True)
        return Row(name, math.inf, math.inf, False)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    diff = np.abs(a - b)
    floor = atol / rtol if rtol > 0 else max(atol, np.finfo(np.float64).tiny)
    rel = diff / np.maximum(np.abs(b), floor)
    ok = bool(np.all(diff <= atol + rtol * np.abs(b)))
    return Row(name, float(diff.max()), float(rel.max()), ok)


def check_tolerance(value, what: str) -> float:
    """``value`` as a float, when it is a finite number >= 0; else ValueError naming ``what``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return v


def verify_trace(path, rtol: float | None = None, atol: float | None = None,
                 limits: dict | None = None) -> Report:
    """Recompute the step a trace describes and compare every tensor it holds.

    The network comes from ``meta.layers``, the rule from ``meta.rule`` and the constructor
    options in ``meta.loss``, the optimiser from ``meta.optimizer``; all ``param/*`` are loaded
    (forward weights into the model, ``feedback.*`` / ``fixed.*`` into the rule), the step runs
    on the file's ``x`` and ``y`` (replaying the draws the file records as ``input/*``), and each ``overlay/*``,
    ``act/*``, ``signal/*``, ``loss/*``, ``grad/*``, ``after/*`` in the file is compared with
    ccledu's value. Tolerances default to :data:`TOLERANCES` of ``meta.dtype``; given ones must
    be finite and >= 0 (ValueError otherwise). NaN/inf is a mismatch unless the file says why
    (``meta.nonfinite``) and both sides agree bit for bit (:func:`compare`). ``limits``: see
    :func:`read_trace`. Returns a :class:`Report` (list of rows in computation order); raises
    :class:`TraceError` for a malformed file and for one that checks nothing.
    """
    rtol = None if rtol is None else check_tolerance(rtol, "rtol")
    atol = None if atol is None else check_tolerance(atol, "atol")
    meta, arrays = read_trace(path, limits=limits)
    dtype = meta["dtype"]
    d_rtol, d_atol = TOLERANCES[dtype]
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    reason = meta.get(NONFINITE_KEY)
    allow_nonfinite = isinstance(reason, str) and reason.strip() != ""
    model, rule = rebuild(meta)
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    forward = {k: v for k, v in params.items() if k.startswith("forward.")}
    model.load_parameters({k: asarray(v, dtype=dtype) for k, v in forward.items()})
    own = dict(rule.parameters())
    own.update(rule.buffers())
    for k, v in params.items():
        if k in own:
            xp = get_array_module(own[k])
            own[k][...] = xp.asarray(np.asarray(v, dtype=dtype))
    x = asarray(np.asarray(arrays["x"], dtype=dtype), dtype=dtype)
    y = asarray(np.asarray(arrays["y"], dtype=np.int64))
    try:
        inputs = {k[len("input/"):]: v for k, v in arrays.items() if k.startswith("input/")}
        _, computed = run_step(model, rule, x, y, meta["optimizer"], inputs)
    except TraceError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise TraceError(f"cannot recompute the step from this trace: {e}") from None
    checked_prefixes = ("overlay/", "act/", "signal/", "target/", "loss/", "grad/", "after/")
    rows, missing = [], []
    for name, ours in computed.items():
        if name in arrays:
            rows.append(compare(name, arrays[name], ours, rtol, atol, allow_nonfinite))
        else:
            missing.append(name)
    unknown = sorted([k for k in arrays if k.startswith(checked_prefixes) and k not in computed]
                     + list(getattr(arrays, "skipped", [])))
    if not rows:
        raise TraceError(f"{path}: nothing to compare: the file holds none of the tensors ccledu "
                         f"computes for this step ({', '.join(list(computed)[:4])}, ...); a "
                         f"trace must hold at least one act/, signal/, loss/, grad/ or after/ "
                         f"tensor to check anything")
    return Report(rows, missing, unknown, rtol, atol, meta)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    width = max([len("tensor")] + [len(r.tensor) for r in report])
    lines = [f"{'tensor':<{width}}  {'max abs error':>13}  {'max rel error':>13}  ok"]
    for r in report:
        lines.append(f"{r.tensor:<{width}}  {r.max_abs:13.3e}  {r.max_rel:13.3e}  "
                     f"{'yes' if r.ok else 'NO'}")
    if report.missing:
        lines.append(f"not in the file (not checked): {', '.join(report.missing)}")
    if report.unknown:
        lines.append(f"not computed by ccledu (not checked): {', '.join(report.unknown)}")
    return "\n".join(lines)


