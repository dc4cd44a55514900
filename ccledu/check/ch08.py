"""Checks for chapter 8 (the forward-forward algorithm, Task 8.1).

Oracle: the loss definition (softplus written as log-add-exp) and finite differences of it for
∂L/∂h; ccledu.rules.ff is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_grad, register

__all__ = ["ff_layer_grad"]


def _ff_loss(h, sign, theta):
    N = h.shape[0] // 2
    g = (h.reshape(h.shape[0], -1) ** 2).sum(axis=1)
    return float(np.logaddexp(0.0, sign * (theta - g)).sum() / N)


def _fd_ff_layer_grad(h, sign, theta):
    return _ff_loss(h, sign, theta), fd_grad(lambda v: _ff_loss(v, sign, theta), h)


@register
def ff_layer_grad(fn, reference=None, seed=0, **options) -> None:
    """The forward-forward loss of one block and its gradient with respect to the block output
    (Task 8.1).

    Contract: ``fn(h, sign, theta) -> (loss, dh)``. ``h`` (2N, ...) holds the block outputs of
    N positive and N negative rows (any trailing shape: (2N, d) for an MLP block, (2N, K, H, W)
    for a conv block); ``sign`` (2N,) is +1 for a positive row and −1 for a negative one;
    ``theta`` a float. Goodness g_n = Σ h_n² over all trailing axes;
    loss = (1/N) Σ_n softplus(sign_n (θ − g_n)) with N = len(h) // 2 (a scalar);
    dh = ∂loss/∂h, the shape of h. Compared with finite differences of the loss. Catches: the
    factor 2 of ∂g/∂h, the mean over all 2N rows, the sign of the negative rows, a softplus
    that overflows (large goodness), goodness summed over the last axis only (conv blocks).
    """
    g = _rng(seed)
    cases = []

    def signs(n, shuffle=False):
        s = np.concatenate([np.ones(n), -np.ones(n)])
        return g.permutation(s) if shuffle else s

    h = g.standard_normal((8, 6))
    cases.append(Case("MLP block, 4 pos + 4 neg, theta 2", (h, signs(4), 2.0)))
    h = np.abs(g.standard_normal((2, 5)))
    cases.append(Case("1 pos + 1 neg, theta 0.5", (h, signs(1), 0.5)))
    h = 3 * g.standard_normal((10, 9))
    cases.append(Case("rows in mixed order, large goodness", (h, signs(5, True), 4.0)))
    h = 0.1 * g.standard_normal((6, 3))
    cases.append(Case("tiny goodness, theta 10 (sigmoid saturates)", (h, signs(3), 10.0)))
    h = np.maximum(g.standard_normal((4, 3, 2, 2)), 0)
    cases.append(Case("conv block (4, 3, 2, 2)", (h, signs(2), 1.5)))
    h = 30 * g.standard_normal((4, 5))
    cases.append(Case("goodness in the thousands (softplus must not overflow)", (h, signs(2), 1.0)))

    def mine(h, sign, theta):
        with np.errstate(over="ignore"):
            return fn(h, sign, theta)

    def post(out, h, sign, theta):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AssertionError("ff_layer_grad: your function must return (loss, dh)")
        loss, dh = out
        return np.asarray(loss, dtype=np.float64).reshape(()), dh

    _run_cases("ff_layer_grad", mine, reference or _fd_ff_layer_grad, cases, outputs=("loss", "dh"),
               task="8.1", forbid=("ccledu.rules.ff:FF",), post=post,
               **dict(dict(rtol=1e-6, atol=1e-7), **options))
