"""Checks for the notebook exercises: run a student's function on fixed float64 cases, compare it
with an *independent oracle* and explain the first mismatch.

In a notebook::

    from ccledu import check
    def my_im2col(x, kh, kw, stride, pad):
        ...
    check.im2col(my_im2col)          # prints "✓ im2col: all 7 cases match" or raises

Every check

* builds a few float64 cases (several shapes, stride 2, padding, the edge cases the task warns
  about) from a seed; ``seed=`` picks other random cases (the hidden tests of the graded cells
  use seeds the student never sees);
* calls ``fn`` and the oracle on *separate copies* of the inputs;
* compares every output with :func:`ccledu.testing.compare`; on the first mismatch it raises
  ``AssertionError`` naming the case and the output;
* returns ``None``: nothing numeric is ever a grade cell's last value (nbgrader would read it
  as a partial score);
* lets ``NotImplementedError`` from ``fn`` through unchanged (the stub of an unfinished task).

**Oracles that do not give the answer away.** The oracles never call the package code a task
asks for (nor its twin): gradients are compared with central finite differences of the loss
*definition*, layouts with the definition evaluated one index at a time, and metrics with an
equivalent but different formula (CKA from centred Gram matrices, the angle from atan2). So a
check still works in a student copy where the package twin of the task is a stub.

**No calling the reference.** While the student's function runs, every function of
``ccledu.check`` and of ``ccledu.testing``'s finite-difference helpers, and the package functions
a check lists as the task's reference (e.g. ``ccledu.metrics.linear_cka`` for Task 9.1), are
*poisoned*: their code object is swapped, for every function object that shares it (so an
earlier ``from ccledu.metrics import linear_cka`` or a saved reference is caught too), for one
that raises :class:`ReferenceCalled` — "your function calls ccledu's own ...; write it
yourself". The swap is undone before the oracle runs.

**Grade cells that a student cell cannot fake.** A graded cell first drops ``ccledu.check`` and
``ccledu.testing`` from ``sys.modules`` and imports the check afresh from disk (so a student cell
that replaced ``check.im2col`` by ``lambda f: print("✓")`` has no effect), and its hidden-test
part (nbgrader's ``### BEGIN HIDDEN TESTS``) runs the check again with an unseen seed.

``reference=`` replaces the oracle (the package tests pass their own), ``rtol=``, ``atol=``,
``verbose=`` go to :func:`_run_cases`. ``CHECKS`` lists the registered checks by name.

Adding a check: write an oracle with the contract's signature, a list of :class:`Case`, and call
:func:`_run_cases` with the task id and the package functions to poison::

    @register
    def fa_delta(fn, reference=None, seed=0, **options):
        \"\"\"fn(delta_next, B, z) -> delta  ...\"\"\"
        cases = [...]
        _run_cases("fa_delta", fn, reference or _fd_fa_delta, cases, task="3.1",
                   forbid=("ccledu.rules.fa",), **options)
"""
from __future__ import annotations

import copy
import gc
import importlib
import inspect
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..testing import compare

#: name -> check function (filled by :func:`register`)
CHECKS: dict = {}

RTOL = 1e-7
ATOL = 1e-10


def register(fn):
    """Decorator: list a check in ``CHECKS`` under its function name."""
    CHECKS[fn.__name__] = fn
    return fn


@dataclass
class Case:
    """One input of a check: a label for messages, positional and keyword arguments."""
    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


def _rng(seed):
    return np.random.default_rng([20240, int(seed)])


class ReferenceCalled(AssertionError):
    """Raised when a student's function calls ccledu's own implementation of the task (or one of
    the checks' oracles) instead of computing the answer itself. Graded cells re-import this
    module, so compare by name (``type(e).__name__``) or catch ``AssertionError``."""


# --------------------------------------------------------------------------------------------
# Poisoning the references while the student's function runs
# --------------------------------------------------------------------------------------------

#: package functions no task may call (finite differences are the checks' oracle, not an answer)
ALWAYS_FORBIDDEN = ("ccledu.testing:numerical_gradient", "ccledu.testing:numerical_vjp")


def _functions_of(obj, prefix=""):
    """(qualified name, plain function) for a function, or every function/method of a class or
    module (a module: only what it defines itself)."""
    if isinstance(obj, types.FunctionType):
        return [(prefix or obj.__qualname__, obj)]
    if isinstance(obj, (staticmethod, classmethod)):
        return _functions_of(obj.__func__, prefix)
    if isinstance(obj, property):
        return [f for part in (obj.fget, obj.fset) if part is not None
                for f in _functions_of(part, prefix)]
    out = []
    if isinstance(obj, type):
        for k, v in vars(obj).items():
            out += _functions_of(v, f"{prefix}.{k}") if isinstance(
                v, (types.FunctionType, staticmethod, classmethod, property)) else []
        return out
    if isinstance(obj, types.ModuleType):
        for k, v in vars(obj).items():
            if getattr(v, "__module__", None) != obj.__name__:
                continue
            if isinstance(v, (types.FunctionType, type)):
                out += _functions_of(v, f"{obj.__name__}.{k}")
        return out
    return out


def _resolve(spec: str):
    """'pkg.mod' (everything it defines itself) or 'pkg.mod:Name.attr' (that object, wherever it
    is defined: name a re-exported reference this way) -> [(qualified name, function)]."""
    mod_name, _, attr = spec.partition(":")
    mod = importlib.import_module(mod_name)
    if not attr:
        return _functions_of(mod)
    obj = mod
    for part in attr.split("."):
        obj = inspect.getattr_static(obj, part)
    return _functions_of(obj, f"{mod_name}.{attr}")


def _check_functions():
    """Every function and method that the ccledu.check modules define (module level and class
    level; the closures a check builds at run time are new code objects and stay callable)."""
    out = []
    for name, mod in list(sys.modules.items()):
        if mod is not None and (name == __name__ or name.startswith(__name__ + ".")):
            out += _functions_of(mod)
    return out


def _poison_code(fn, message):
    """A code object that raises ReferenceCalled(message), with ``fn``'s number of free
    variables (so that it can replace ``fn.__code__``)."""
    names = [f"_v{i}" for i in range(len(fn.__code__.co_freevars))]
    body = ("def _outer():\n" + "".join(f"    {n} = None\n" for n in names)
            + "    def _poisoned(*args, **kwargs):\n"
            + (f"        ({', '.join(names)},)\n" if names else "")
            + "        raise __import__('ccledu.check', fromlist=['ReferenceCalled'])"
              f".ReferenceCalled({message!r})\n"
            + "    return _poisoned\n")
    ns = {}
    exec(compile(body, "<ccledu.check: reference poisoned>", "exec"), ns)
    return ns["_outer"]().__code__.replace(co_name=fn.__code__.co_name)


def _code_key(code):
    """Where a function was defined: the same key for a function object and its copies, and for
    the function of a module that was imported again (a grade cell re-imports the checks)."""
    return (code.co_filename, code.co_firstlineno, code.co_name)


@contextmanager
def _no_reference(task=None, forbid=()):
    """While active, every function object whose code comes from a forbidden function (the
    checks' own functions, ``ALWAYS_FORBIDDEN`` and ``forbid``) raises :class:`ReferenceCalled`;
    everything is restored on exit."""
    targets = {}
    for spec in tuple(forbid) + ALWAYS_FORBIDDEN:
        for qual, fn in _resolve(spec):
            targets.setdefault(_code_key(fn.__code__), qual)
    for qual, fn in _check_functions():
        targets.setdefault(_code_key(fn.__code__), f"ccledu.check helper {qual}")
    what = f"Task {task}: " if task else ""
    plan = []
    for obj in gc.get_objects():
        if type(obj) is types.FunctionType and _code_key(obj.__code__) in targets:
            message = (f"{what}your function calls {targets[_code_key(obj.__code__)]} (ccledu's own code); "
                       f"compute the result yourself: NumPy is fine, ccledu's implementation and "
                       f"the checks' oracles are not")
            plan.append((obj, obj.__code__, _poison_code(obj, message)))
    swapped = []
    try:
        for obj, original, poisoned in plan:      # no call below may reach a poisoned function
            swapped.append((obj, original))
            obj.__code__ = poisoned
        yield
    finally:
        for obj, original in swapped:
            obj.__code__ = original


@contextmanager
def _nothing():
    yield


# --------------------------------------------------------------------------------------------
# Running cases
# --------------------------------------------------------------------------------------------

def _as_outputs(out, names):
    """Normalise a function's result into an ordered {name: array} dict."""
    if isinstance(out, dict):
        return dict(out)
    if isinstance(out, (tuple, list)):
        names = names or [f"output[{i}]" for i in range(len(out))]
        if len(out) != len(names):
            raise AssertionError(f"expected {len(names)} outputs ({', '.join(names)}), got {len(out)}")
        return dict(zip(names, out))
    return {(names[0] if names else "output"): out}


def _run_cases(name: str, mine, reference, cases, *, outputs=None, rtol: float = RTOL,
               atol: float = ATOL, verbose: bool = True, task: str | None = None,
               forbid=(), poison: bool = True, post=None) -> None:
    """Compare ``mine(*case.args, **case.kwargs)`` with ``reference(...)`` on every case.

    ``outputs``: names of the outputs when the functions return a tuple (e.g. ("dW", "dx"));
    dict results are compared key by key (``mine`` must return the same keys). ``mine`` runs
    with the checks' functions and ``forbid`` poisoned (see the module docstring) unless
    ``poison`` is False. ``post(result, *case.args)``, when given, turns the student's raw result
    into the outputs to compare, after the poison is lifted. Returns None.
    """
    if not callable(mine):
        raise TypeError(f"check.{name} expects your function, got {type(mine).__name__}")
    results = []
    with (_no_reference(task, forbid) if poison else _nothing()):
        for k, case in enumerate(cases, 1):
            where = f"{name}, case {k} of {len(cases)} ({case.label})"
            try:
                got = mine(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
            except NotImplementedError:
                raise
            except Exception as e:
                if type(e).__name__ == "ReferenceCalled":   # (the class of a re-imported check too)
                    raise
                if hasattr(e, "add_note"):
                    e.add_note(f"raised by your function in {where}")
                results.append(e)          # raised when its case comes up, after earlier mismatches
                break
            results.append(got)
    for k, (case, got) in enumerate(zip(cases, results), 1):
        where = f"{name}, case {k} of {len(cases)} ({case.label})"
        if isinstance(got, Exception):
            raise got
        if got is None:
            raise AssertionError(f"{where}: your function returned None (a missing return?)")
        if post is not None:
            got = post(got, *case.args)
        try:
            ref = reference(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except NotImplementedError as e:
            raise RuntimeError(f"{where}: the reference is itself an unfinished exercise in this "
                               f"copy ({e}); finish that task first") from None
        ref = _as_outputs(ref, outputs)
        got = _as_outputs(got, outputs)
        missing = [n for n in ref if n not in got]
        if missing:
            raise AssertionError(f"{where}: your result lacks {missing} (it has {list(got)})")
        for out_name, r in ref.items():
            label = where if len(ref) == 1 else f"{where}, {out_name}"
            compare(label, got[out_name], r, rtol=rtol, atol=atol)
    if verbose:
        print(f"✓ {name}: all {len(cases)} cases match")
    return None


# --------------------------------------------------------------------------------------------
# Oracle helpers shared by the chapters' checks (definitions and finite differences)
# --------------------------------------------------------------------------------------------

FD_STEP = 1e-6


def fd_grad(f, x, h: float = FD_STEP):
    """Central differences of the scalar ``f(x)`` with respect to the float64 array ``x``
    (``x`` is not modified): returns ∂f/∂x, shape of x."""
    x = np.array(x, dtype=np.float64, copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = float(f(x))
        flat[i] = old - h
        fm = float(f(x))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def fd_vjp(f, x, dy, h: float = FD_STEP):
    """Finite-difference vector–Jacobian product ∂⟨f(x), dy⟩/∂x."""
    dy = np.asarray(dy, dtype=np.float64)
    return fd_grad(lambda v: np.sum(np.asarray(f(v), dtype=np.float64) * dy), x, h)


def elu(z):
    """ELU (α = 1), the forward definition: z for z > 0, eᶻ − 1 otherwise."""
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def mean_cross_entropy(logits, y):
    """−(1/N) Σ_n log softmax(z_n)_{y_n}, with log-sum-exp (definition)."""
    logits = np.asarray(logits, dtype=np.float64)
    lse = np.logaddexp.reduce(logits, axis=1)
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


# --------------------------------------------------------------------------------------------
# The chapters' checks live in one module each (ccledu/check/chNN.py) and register themselves
# here, so ``ccledu.check.<name>`` reaches every check.
# --------------------------------------------------------------------------------------------
import importlib as _importlib  # noqa: E402
import pkgutil as _pkgutil  # noqa: E402

for _m in sorted(m.name for m in _pkgutil.iter_modules(__path__) if m.name.startswith("ch")):
    _mod = _importlib.import_module(f"{__name__}.{_m}")
    for _name in getattr(_mod, "__all__", []):
        globals()[_name] = getattr(_mod, _name)
