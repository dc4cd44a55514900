"""Checks for exercises: run a student's function and ccledu's reference on the same random
inputs and explain the first mismatch.

In a notebook::

    from ccledu import check
    def my_im2col(x, kh, kw, stride, pad):
        ...
    check.im2col(my_im2col)          # prints "✓ im2col: all 7 cases match" or raises

Every check

* builds a few float64 cases (several shapes, stride 2, padding, ...) from a fixed seed;
* calls ``fn`` and the reference on *separate copies* of the inputs (so an in-place slip in
  ``fn`` cannot hide behind the reference);
* compares every output with :func:`ccledu.testing.compare`; on the first mismatch it raises
  ``AssertionError`` naming the case and the output ("case 3 (stride 2, pad 1), dx: ... mine
  vs reference ...");
* lets ``NotImplementedError`` from ``fn`` through unchanged (the stub of an unfinished task);
* accepts ``reference=`` to compare against another implementation (the tests of the
  package exercises pass independent oracles: finite differences, explicit loops);
* accepts ``rtol=``, ``atol=``, ``verbose=`` (passed to :func:`_run_cases`);
* returns the number of cases.

The signature contract of ``fn`` is in each check's docstring.

Adding a check (later chapters): write a reference with the contract's signature, a list of
:class:`Case`, and call :func:`_run_cases`::

    @register
    def fa_delta(fn, reference=None, seed=0, **options):
        \"\"\"fn(delta_next, B, dsigma) -> delta  ...\"\"\"
        g = _rng(seed)
        cases = [Case(f"N={n}", (g.standard_normal((n, 5)), g.standard_normal((5, 7)),
                                 g.random((n, 7)))) for n in (1, 4)]
        return _run_cases("fa_delta", fn, reference or _ref_fa_delta, cases, **options)

``CHECKS`` lists the registered checks by name.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..testing import compare, numerical_gradient, grad_rel_error

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
               atol: float = ATOL, verbose: bool = True) -> int:
    """Compare ``mine(*case.args, **case.kwargs)`` with ``reference(...)`` on every case.

    ``outputs``: names of the outputs when the functions return a tuple (e.g. ("dW", "dx"));
    dict results are compared key by key (``mine`` must return the same keys).
    """
    if not callable(mine):
        raise TypeError(f"check.{name} expects your function, got {type(mine).__name__}")
    for k, case in enumerate(cases, 1):
        where = f"{name}, case {k} of {len(cases)} ({case.label})"
        try:
            got = mine(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except NotImplementedError:
            raise
        except Exception as e:
            if hasattr(e, "add_note"):
                e.add_note(f"raised by your function in {where}")
            raise
        if got is None:
            raise AssertionError(f"{where}: your function returned None (a missing return?)")
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
    return len(cases)


# --------------------------------------------------------------------------------------------
# Chapter 1: linear layers, activations, backprop
# --------------------------------------------------------------------------------------------

def _ref_linear_backward(x, W, dy):
    from ..layers import Linear
    layer = Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)
    layer.params["weight"] = W
    layer.forward(x)
    dx = layer.backward(dy)
    return layer.grads["weight"], dx


@register
def linear_backward(fn, reference=None, seed=0, **options) -> int:
    """Backward pass of y = x Wᵀ.

    Contract: ``fn(x, W, dy) -> (dW, dx)`` with x (N, in), W (out, in), dy = dL/dy (N, out);
    returns dW = dL/dW (out, in) and dx = dL/dx (N, in). No bias.
    """
    g = _rng(seed)
    cases = [Case(f"N={n}, in={i}, out={o}", (g.standard_normal((n, i)), g.standard_normal((o, i)),
                                            g.standard_normal((n, o))))
             for n, i, o in [(1, 3, 2), (4, 7, 5), (16, 10, 3), (5, 1, 6)]]
    return _run_cases("linear_backward", fn, reference or _ref_linear_backward, cases,
                      outputs=("dW", "dx"), **options)


def _ref_elu_grad(z):
    from ..layers import activate, activation_grad
    return activation_grad("elu", z, activate("elu", z))


@register
def elu_grad(fn, reference=None, seed=0, **options) -> int:
    """Derivative of ELU (α = 1): σ(z) = z for z > 0, eᶻ − 1 otherwise.

    Contract: ``fn(z) -> σ'(z)``, element-wise, same shape as z (any shape).
    """
    g = _rng(seed)
    cases = [Case("scalars around 0", (np.array([-3.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 3.0]),)),
             Case("(4, 5) normal", (g.standard_normal((4, 5)),)),
             Case("(2, 3, 4, 4) wide range", (10 * g.standard_normal((2, 3, 4, 4)),)),
             Case("very negative", (np.array([-50.0, -700.0]),))]
    return _run_cases("elu_grad", fn, reference or _ref_elu_grad, cases, **options)


def _small_models(seed):
    from ..models import cnn, mlp
    g = _rng(seed)
    out = []
    m = mlp([12, 9, 7, 5], activation="elu", seed=seed, dtype="float64")
    out.append(Case("MLP 12-9-7-5 ELU", (m, g.standard_normal((6, 12)), g.integers(0, 5, 6))))
    m = mlp([8, 6, 4], activation="tanh", bias=True, seed=seed + 1, dtype="float64")
    out.append(Case("MLP 8-6-4 tanh, bias", (m, g.standard_normal((3, 8)), g.integers(0, 4, 3))))
    m = cnn((2, 8, 8), (3, 4), 5, activation="elu", seed=seed + 2, dtype="float64")
    out.append(Case("CNN 2x8x8-c3-c4-5", (m, g.standard_normal((4, 2, 8, 8)), g.integers(0, 5, 4))))
    return out


def _ref_bp_gradients(model, x, y):
    from ..rules.bp import BP
    return {k: np.array(v, copy=True) for k, v in BP().step(model, x, y).grads.items()}


@register
def bp_gradients(fn, reference=None, seed=0, **options) -> int:
    """Backprop through a whole :class:`ccledu.models.Network` for the mean cross-entropy.

    Contract: ``fn(model, x, y) -> {name: gradient}`` with the names of ``model.parameters()``
    (``forward.<l>.weight``, ``forward.<l>.bias``); x a batch, y integer labels. ``fn`` may
    call ``model.forward`` and the layers' ``backward`` methods.
    """
    cases = _small_models(seed)

    def mine(model, x, y):
        out = fn(model, x, y)
        return {k: np.array(v, copy=True) for k, v in dict(out).items()}

    return _run_cases("bp_gradients", mine, reference or _ref_bp_gradients, cases, **options)


@register
def gradient_check(f, x, grad, name: str = "gradient", h: float = 1e-6, rtol: float = 1e-5,
                   verbose: bool = True) -> float:
    """Compare an analytic gradient with central finite differences.

    Contract: ``f()`` returns a scalar and reads the float64 array ``x`` (e.g. a weight, through
    a closure); ``grad`` is your ∂f/∂x, shape of ``x``. ``x`` is perturbed in place and restored.
    Raises AssertionError when the whole-tensor relative error ‖g − ĝ‖/max(‖g‖, ‖ĝ‖) exceeds
    ``rtol``; returns that error.
    """
    num = numerical_gradient(f, x, h)
    err = grad_rel_error(grad, num)
    if not err <= rtol:
        try:
            compare(f"{name} (analytic vs finite differences)", grad, num, rtol=rtol, atol=1e-8)
        except AssertionError as e:
            raise AssertionError(f"{e}\n  (relative error {err:.2e} > {rtol:g})") from None
        raise AssertionError(f"{name}: relative error {err:.2e} > {rtol:g} (analytic vs finite "
                             f"differences)")
    if verbose:
        print(f"✓ {name}: matches finite differences (relative error {err:.1e})")
    return err


# --------------------------------------------------------------------------------------------
# Chapter 2: convolutions
# --------------------------------------------------------------------------------------------

#: (x shape, kh, kw, stride, pad) of the convolution cases
CONV_GEOMETRIES = [
    ((1, 1, 4, 4), 3, 3, 1, 0),
    ((2, 3, 5, 5), 3, 3, 1, 1),
    ((2, 2, 7, 6), 3, 3, 2, 1),
    ((1, 2, 8, 8), 2, 2, 2, 0),
    ((2, 1, 6, 7), 3, 2, 1, 2),
    ((1, 3, 9, 9), 5, 5, 2, 2),
    ((3, 2, 4, 5), 1, 1, 1, 0),
]


def _geom_label(shape, kh, kw, s, p):
    return f"x {shape}, kernel {kh}x{kw}, stride {s}, pad {p}"


def _ref_im2col(x, kh, kw, stride, pad):
    from ..im2col import im2col as ref
    return ref(x, kh, kw, stride, pad)


@register
def im2col(fn, reference=None, seed=0, **options) -> int:
    """Receptive fields as rows.

    Contract: ``fn(x, kh, kw, stride, pad) -> cols`` with x (N, C, H, W) and cols
    (N·OH·OW, C·kh·kw): row n·OH·OW + p·OW + q, column c·kh·kw + i·kw + j holds
    xpad[n, c, p·stride + i, q·stride + j] (as :func:`ccledu.im2col.im2col`).
    """
    g = _rng(seed)
    cases = [Case(_geom_label(*geo), (g.standard_normal(geo[0]),) + geo[1:]) for geo in CONV_GEOMETRIES]
    return _run_cases("im2col", fn, reference or _ref_im2col, cases, **options)


def _ref_col2im(cols, x_shape, kh, kw, stride, pad):
    from ..im2col import col2im as ref
    return ref(cols, x_shape, kh, kw, stride, pad)


@register
def col2im(fn, reference=None, seed=0, **options) -> int:
    """The adjoint of im2col: add every row entry back onto the pixel it was copied from.

    Contract: ``fn(cols, x_shape, kh, kw, stride, pad) -> x`` with cols (N·OH·OW, C·kh·kw) in
    im2col's layout and x of shape ``x_shape`` = (N, C, H, W); padding positions are dropped.
    """
    from ..im2col import conv_output_size
    g = _rng(seed)
    cases = []
    for shape, kh, kw, s, p in CONV_GEOMETRIES:
        N, C, H, W = shape
        rows = N * conv_output_size(H, kh, s, p) * conv_output_size(W, kw, s, p)
        cases.append(Case(_geom_label(shape, kh, kw, s, p),
                          (g.standard_normal((rows, C * kh * kw)), shape, kh, kw, s, p)))
    return _run_cases("col2im", fn, reference or _ref_col2im, cases, **options)


def _conv_layer(W, b, stride, pad):
    from ..layers import Conv2d
    F, C, k, _ = W.shape
    layer = Conv2d(C, F, k, stride, pad, bias=b is not None, dtype=W.dtype)
    layer.params["weight"] = W
    if b is not None:
        layer.params["bias"] = b
    return layer


def _conv_cases(g, with_bias):
    cases = []
    for (shape, kh, kw, s, p), F in zip([geo for geo in CONV_GEOMETRIES if geo[1] == geo[2]],
                                        [2, 4, 3, 1, 2, 3]):
        N, C = shape[:2]
        x = g.standard_normal(shape)
        W = g.standard_normal((F, C, kh, kw))
        b = g.standard_normal(F) if with_bias and F % 2 else None
        cases.append((f"{_geom_label(shape, kh, kw, s, p)}, F={F}{', bias' if b is not None else ''}",
                      x, W, b, s, p))
    return cases


def _ref_conv_forward(x, W, b, stride, pad):
    return _conv_layer(W, b, stride, pad).forward(x)


@register
def conv_forward(fn, reference=None, seed=0, **options) -> int:
    """2-D cross-correlation (what deep learning calls a convolution).

    Contract: ``fn(x, W, b, stride, pad) -> y`` with x (N, C, H, W), W (F, C, k, k), b (F,) or
    None, y (N, F, OH, OW), OH = (H + 2·pad − k)//stride + 1.
    """
    g = _rng(seed)
    cases = [Case(lab, (x, W, b, s, p)) for lab, x, W, b, s, p in _conv_cases(g, True)]
    return _run_cases("conv_forward", fn, reference or _ref_conv_forward, cases, **options)


def _ref_conv_backward(x, W, dy, stride, pad):
    layer = _conv_layer(W, None, stride, pad)
    layer.forward(x)
    dx = layer.backward(dy)
    return layer.grads["weight"], dx


@register
def conv_backward(fn, reference=None, seed=0, **options) -> int:
    """Backward pass of a convolution without bias.

    Contract: ``fn(x, W, dy, stride, pad) -> (dW, dx)`` with x (N, C, H, W), W (F, C, k, k),
    dy = dL/dy (N, F, OH, OW); dW (F, C, k, k), dx (N, C, H, W).
    """
    from ..im2col import conv_output_size
    g = _rng(seed)
    cases = []
    for lab, x, W, _, s, p in _conv_cases(g, False):
        N, _, H, Wd = x.shape
        k = W.shape[2]
        dy = g.standard_normal((N, W.shape[0], conv_output_size(H, k, s, p), conv_output_size(Wd, k, s, p)))
        cases.append(Case(lab, (x, W, dy, s, p)))
    return _run_cases("conv_backward", fn, reference or _ref_conv_backward, cases,
                      outputs=("dW", "dx"), **options)


def _ref_maxpool_backward(x, dy, k):
    from ..layers import MaxPool2d
    pool = MaxPool2d(k)
    pool.forward(x)
    return pool.backward(dy)


@register
def maxpool_backward(fn, reference=None, seed=0, **options) -> int:
    """Backward pass of k×k max pooling with stride k (floor mode: a remainder is dropped).

    Contract: ``fn(x, dy, k) -> dx`` with x (N, C, H, W), dy (N, C, H//k, W//k), dx the shape of
    x: each window's gradient goes to the position of its maximum, zeros elsewhere. Inputs have
    distinct values, so ties never occur.
    """
    g = _rng(seed)
    cases = []
    for shape, k in [((1, 1, 4, 4), 2), ((2, 3, 6, 8), 2), ((2, 2, 5, 7), 2), ((1, 2, 9, 9), 3)]:
        x = g.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64) / 7.0
        dy = g.standard_normal(shape[:2] + (shape[2] // k, shape[3] // k))
        cases.append(Case(f"x {shape}, k={k}", (x, dy, k)))
    return _run_cases("maxpool_backward", fn, reference or _ref_maxpool_backward, cases, **options)


# --------------------------------------------------------------------------------------------
# Checks of later chapters live in one module each (ccledu/check/chNN.py) and register
# themselves here, so ``ccledu.check.<name>`` reaches every check.
# --------------------------------------------------------------------------------------------
import importlib as _importlib
import pkgutil as _pkgutil

for _m in sorted(m.name for m in _pkgutil.iter_modules(__path__) if m.name.startswith("ch")):
    _mod = _importlib.import_module(f"{__name__}.{_m}")
    for _name in getattr(_mod, "__all__", []):
        globals()[_name] = getattr(_mod, _name)
