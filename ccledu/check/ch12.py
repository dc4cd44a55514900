"""Checks for chapter 12, target propagation and DRTP: difference-corrected targets
(Task 12.1), a layer's local gradient toward its target (Task 12.2) and DRTP's hidden-layer
update (Task 12.3).

Oracles never use ccledu's TP or DRTP rules: the target recursion is evaluated from its
definition in a plain loop; the two gradients are finite differences of the local losses
(1/N) Σ ‖tanh(a_{l−1} Wᵀ) − t‖² and (1/N) ⟨Y Dᵀ, tanh(a_{l−1} Wᵀ)⟩.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_vjp, register

__all__ = ["tp_targets", "tp_local_grad", "drtp_update"]

FD_TOL = dict(rtol=1e-6, atol=1e-8)
_FORBID = ("ccledu.rules.dtp", "ccledu.rules.drtp", "ccledu.rules.drl", "ccledu.rules.ldrl",
           "ccledu.rules.fwdtp", "ccledu.rules.bp", "ccledu.layers:Linear.backward",
           "ccledu.layers:Activation.backward", "ccledu.models:Block.backward",
           "ccledu.models:Network.backward")


def _def_targets(acts, y, Qs, beta):
    z = np.asarray(acts[-1], dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    Y = np.zeros_like(z)
    Y[np.arange(len(y)), y] = 1.0
    t = [None] * len(acts)
    t[-1] = z - beta * (p - Y)
    for l in range(len(acts) - 1, 0, -1):
        g = lambda s, Q=Qs[l]: np.tanh(s @ Q.T)   # noqa: E731
        t[l - 1] = g(t[l]) + acts[l - 1] - g(acts[l])
    return t


def _tp_cases(seed):
    g = _rng(seed)
    cases = []
    for sizes, n, beta in [((5, 4, 3), 2, 0.1), ((8, 6, 6, 4), 5, 0.01), ((6, 6, 6, 6, 6), 3, 0.5),
                           ((7, 3), 4, 0.2), ((9, 5, 7, 2), 1, 1.0)]:
        acts = [np.tanh(g.standard_normal((n, d))) for d in sizes[:-1]] + [g.standard_normal((n, sizes[-1]))]
        Qs = [None] + [g.standard_normal((sizes[l - 1], sizes[l])) * 0.5 for l in range(1, len(sizes))]
        y = g.integers(0, sizes[-1], n)
        cases.append(Case(f"widths {'-'.join(map(str, sizes))}, N={n}, beta={beta}", (acts, y, Qs, beta)))
    return cases


@register
def tp_targets(fn, reference=None, seed=0, **options) -> None:
    """Difference target propagation of a whole network's targets (Task 12.1).

    Contract: ``fn(acts, y, Qs, beta) -> [t_0, ..., t_{L−1}]`` with ``acts = [a_0, ..., a_{L−1}]``
    the forward activations (a_{L−1} the logits, (N, C)), ``y`` (N,) integer labels,
    ``Qs = [None, Q_1, ..., Q_{L−1}]``, Q_l (d_{l−1}, d_l), the feedback g_l(s) = tanh(s Q_lᵀ), and the
    step ``beta``: t_{L−1} = z − β (softmax(z) − Y), t_{l−1} = g_l(t_l) + a_{l−1} − g_l(a_l).
    Catches: the correction term left out or with the wrong sign, Q used untransposed, the
    output step on the mean instead of the summed cross-entropy (a factor N).
    """
    cases = _tp_cases(seed)

    def mine(*args):
        return {f"t_{l}": np.asarray(t, dtype=np.float64) for l, t in enumerate(fn(*args))}

    def ref(*args):
        return {f"t_{l}": t for l, t in enumerate((reference or _def_targets)(*args))}

    _run_cases("tp_targets", mine, ref, cases, task="12.1", forbid=_FORBID,
               **dict(dict(rtol=1e-10, atol=1e-12), **options))


def _fd_local(a_prev, W, t):
    N = a_prev.shape[0]
    from . import fd_grad
    return fd_grad(lambda w: np.sum((np.tanh(a_prev @ w.T) - t) ** 2) / N, W)


@register
def tp_local_grad(fn, reference=None, seed=0, **options) -> None:
    """The gradient of one tanh layer's local target loss (Task 12.2).

    Contract: ``fn(a_prev, W, t) -> dW`` with a_prev (N, d_in) the layer's (detached) input,
    W (d_out, d_in), t (N, d_out) its target; returns ∂/∂W of (1/N) Σ_n ‖tanh(a_prev Wᵀ)_n − t_n‖²,
    shape (d_out, d_in). Catches: the factor 2, the 1/N, tanh' at the wrong place, (a − t) vs (t − a).
    """
    g = _rng(seed)
    cases = [Case(f"N={n}, d_in={i}, d_out={o}", (g.standard_normal((n, i)), g.standard_normal((o, i)) * 0.5,
                                                 np.tanh(g.standard_normal((n, o)))))
             for n, i, o in [(1, 3, 2), (4, 5, 5), (7, 6, 3), (3, 2, 6)]]
    _run_cases("tp_local_grad", fn, reference or _fd_local, cases, task="12.2", forbid=_FORBID,
               **dict(FD_TOL, **options))


def _fd_drtp(Y, D, a_prev, W):
    N = a_prev.shape[0]
    return fd_vjp(lambda w: np.tanh(a_prev @ w.T), W, Y @ D.T / N)


@register
def drtp_update(fn, reference=None, seed=0, **options) -> None:
    """DRTP's update of one hidden tanh layer (Task 12.3).

    Contract: ``fn(Y, D, a_prev, W) -> dW`` with Y (N, C) the one-hot targets, D (d_l, C) the
    fixed projection, a_prev (N, d_{l−1}), W (d_l, d_{l−1}); returns ((Y Dᵀ / N) ⊙ tanh'(z))ᵀ a_prev,
    z = a_prev Wᵀ, shape (d_l, d_{l−1}). Catches: D untransposed (d_l = C), a missing 1/N, the
    output error used instead of Y.
    """
    g = _rng(seed)
    cases = []
    for n, c, d, dp in [(2, 3, 3, 4), (5, 10, 7, 6), (8, 4, 4, 4), (1, 2, 5, 3)]:
        y = g.integers(0, c, n)
        Y = np.zeros((n, c))
        Y[np.arange(n), y] = 1
        cases.append(Case(f"N={n}, C={c}, d_l={d}, d_(l-1)={dp}",
                          (Y, g.standard_normal((d, c)), g.standard_normal((n, dp)), g.standard_normal((d, dp)) * 0.5)))
    _run_cases("drtp_update", fn, reference or _fd_drtp, cases, task="12.3", forbid=_FORBID,
               **dict(FD_TOL, **options))
