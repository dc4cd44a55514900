"""Checks for chapter 1 (backpropagation): the linear layer's backward pass (Task 1.1), the ELU
derivative (Task 1.2), backprop through a whole network, and a finite-difference gradient check.

The oracles are finite differences of the forward definitions (y = x Wᵀ, ELU, the mean
cross-entropy), so they hold the answer to no task and keep working in a student copy where
``Linear.backward`` (Task 1.3) or ``_elu_grad`` (Task 1.4) is a stub.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, elu, fd_grad, fd_vjp, mean_cross_entropy, register
from ..testing import compare, grad_rel_error, numerical_gradient

__all__ = ["linear_backward", "elu_grad", "bp_gradients", "gradient_check"]

FD_TOL = dict(rtol=1e-6, atol=1e-7)


def _fd_linear_backward(x, W, dy):
    return fd_vjp(lambda w: x @ w.T, W, dy), fd_vjp(lambda v: v @ W.T, x, dy)


@register
def linear_backward(fn, reference=None, seed=0, **options) -> None:
    """Backward pass of y = x Wᵀ (Task 1.1).

    Contract: ``fn(x, W, dy) -> (dW, dx)`` with x (N, in), W (out, in), dy = ∂L/∂y (N, out);
    returns dW = ∂L/∂W (out, in) and dx = ∂L/∂x (N, in). No bias. Compared with finite
    differences of ⟨x Wᵀ, dy⟩. Catches: a missing or extra transpose (shapes, and the square
    case in=out), dividing by N (the 1/N of the mean loss is already in dy), using W where Wᵀ
    belongs.
    """
    g = _rng(seed)
    cases = [Case(f"N={n}, in={i}, out={o}", (g.standard_normal((n, i)), g.standard_normal((o, i)),
                                            g.standard_normal((n, o))))
             for n, i, o in [(1, 3, 2), (4, 7, 5), (16, 10, 3), (5, 1, 6), (6, 6, 6)]]
    opts = dict(FD_TOL, **options)
    _run_cases("linear_backward", fn, reference or _fd_linear_backward, cases,
               outputs=("dW", "dx"), task="1.1", forbid=("ccledu.layers:Linear",), **opts)


def _fd_elu_grad(z, h=1e-6):
    z = np.asarray(z, dtype=np.float64)
    return (elu(z + h) - elu(z - h)) / (2 * h)


@register
def elu_grad(fn, reference=None, seed=0, **options) -> None:
    """Derivative of ELU (α = 1), σ(z) = z for z > 0, eᶻ − 1 otherwise (Task 1.2).

    Contract: ``fn(z) -> σ'(z)``, element-wise, same shape as z (any shape). Compared with
    central differences of σ. Catches: eᶻ used for z > 0 too, a ReLU-like 0 for z < 0, the
    derivative taken as eᶻ − 1 (the function itself), and overflow or NaN for large |z|.
    """
    g = _rng(seed)
    cases = [Case("scalars around 0", (np.array([-3.0, -1.0, -1e-3, 1e-3, 1.0, 3.0]),)),
             Case("(4, 5) normal", (g.standard_normal((4, 5)),)),
             Case("(2, 3, 4, 4) wide range", (10 * g.standard_normal((2, 3, 4, 4)),)),
             Case("very negative and very positive", (np.array([-50.0, -700.0, 50.0, 800.0]),))]

    def mine(z):
        with np.errstate(all="ignore"):
            return fn(z)

    opts = dict(FD_TOL, **options)
    _run_cases("elu_grad", mine, reference or _fd_elu_grad, cases, task="1.2",
               forbid=("ccledu.layers:_elu_grad", "ccledu.layers:activation_grad",
                       "ccledu.layers:Activation"), **opts)


def _small_models(seed):
    from ..models import cnn, mlp
    g = _rng(seed)
    out = []
    m = mlp([12, 9, 7, 5], activation="elu", seed=seed, dtype="float64")
    out.append(Case("MLP 12-9-7-5 ELU", (m, g.standard_normal((6, 12)), g.integers(0, 5, 6))))
    m = mlp([8, 6, 4], activation="tanh", bias=True, seed=seed + 1, dtype="float64")
    out.append(Case("MLP 8-6-4 tanh, bias", (m, g.standard_normal((3, 8)), g.integers(0, 4, 3))))
    m = cnn((2, 6, 6), (3,), 4, activation="elu", seed=seed + 2, dtype="float64")
    out.append(Case("CNN 2x6x6-c3-4", (m, g.standard_normal((2, 2, 6, 6)), g.integers(0, 4, 2))))
    return out


def _fd_bp_gradients(model, x, y):
    out = {}
    for name, p in model.parameters().items():
        def loss(v, p=p):
            old = p.copy()
            p[...] = v
            try:
                return mean_cross_entropy(model.forward(x), y)
            finally:
                p[...] = old
        out[name] = fd_grad(loss, p)
    return out


@register
def bp_gradients(fn, reference=None, seed=0, **options) -> None:
    """Backprop through a whole :class:`ccledu.models.Network` for the mean cross-entropy.

    Contract: ``fn(model, x, y) -> {name: gradient}`` with the names of ``model.parameters()``
    (``forward.<l>.weight``, ``forward.<l>.bias``); x a batch, y integer labels. ``fn`` may
    call ``model.forward`` and the layers' ``backward`` methods, not ccledu's rules. Compared
    with finite differences of the loss.
    """
    cases = _small_models(seed)

    def mine(model, x, y):
        return {k: np.array(v, copy=True) for k, v in dict(fn(model, x, y)).items()}

    opts = dict(rtol=1e-5, atol=1e-8, **options)
    _run_cases("bp_gradients", mine, reference or _fd_bp_gradients, cases, task=None,
               forbid=("ccledu.rules.bp", "ccledu.models:Network.backward"), **opts)


@register
def gradient_check(f, x, grad, name: str = "gradient", h: float = 1e-6, rtol: float = 1e-5,
                   verbose: bool = True) -> None:
    """Compare an analytic gradient with central finite differences.

    Contract: ``f()`` returns a scalar and reads the float64 array ``x`` (e.g. a weight, through
    a closure); ``grad`` is your ∂f/∂x, shape of ``x``. ``x`` is perturbed in place and restored.
    Raises AssertionError when the whole-tensor relative error ‖g − ĝ‖/max(‖g‖, ‖ĝ‖) exceeds
    ``rtol``; returns None (print the error with ``verbose``).
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
