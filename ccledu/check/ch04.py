"""Checks for chapter 4, direct feedback alignment: one hidden layer's DFA update (Task 4.1)
and the DFA gradients of a whole MLP.

Oracle: DFA differentiates each hidden layer as if its output fed the logits through D_l, by
finite differences of the definitions — δ_l = ∂⟨σ(z_l) D_l, e⟩/∂z_l and
∇W_l = ∂⟨a_{l-1} W_lᵀ, δ_l⟩/∂W_l, with e = ∂(mean cross-entropy)/∂z_L — never ccledu's DFA rule.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, elu, fd_grad, fd_vjp, mean_cross_entropy, register

__all__ = ["dfa_update", "dfa_gradients", "dfa_cases"]

FD_TOL = dict(rtol=1e-6, atol=1e-7)
_FORBID = ("ccledu.rules.dfa", "ccledu.rules.bp", "ccledu.layers:Linear.backward",
           "ccledu.layers:Activation.backward", "ccledu.models:Block.backward",
           "ccledu.models:Network.backward")


def _fd_dfa_update(e, D, a_prev, W):
    z = a_prev @ W.T
    delta = fd_vjp(lambda v: elu(v) @ D, z, e)
    return fd_vjp(lambda w: a_prev @ w.T, W, delta)


@register
def dfa_update(fn, reference=None, seed=0, **options) -> None:
    """The direct-feedback-alignment gradient of one hidden ELU layer (Task 4.1).

    Contract: ``fn(e, D, a_prev, W) -> dW`` with e = δ_L the output error (N, C), D = D_l the
    fixed feedback matrix (d_l, C), a_prev = a_{l-1} the layer's input (N, d_{l-1}), W = W_l
    (d_l, d_{l-1}), z_l = a_{l-1} W_lᵀ, σ = ELU (α = 1), no bias; returns ∇W_l (d_l, d_{l-1}).
    Catches: D used untransposed (the case d_l = C), σ' evaluated at a_{l-1} instead of z_l,
    the transposed result a_{l-1}ᵀ δ_l.
    """
    g = _rng(seed)
    cases = []
    for n, c, d, d_prev in [(1, 3, 2, 4), (4, 10, 7, 5), (16, 10, 6, 12), (3, 2, 1, 3), (8, 5, 5, 5)]:
        cases.append(Case(f"N={n}, C={c}, d_l={d}, d_(l-1)={d_prev}",
                          (g.standard_normal((n, c)), g.standard_normal((d, c)),
                           g.standard_normal((n, d_prev)), g.standard_normal((d, d_prev)))))
    _run_cases("dfa_update", fn, reference or _fd_dfa_update, cases, task="4.1", forbid=_FORBID,
               **dict(FD_TOL, **options))


def _fd_dfa_gradients(model, D, x, y):
    Ws = [blk.main.params["weight"] for blk in model.blocks]
    a, zs, inputs = np.asarray(x, dtype=np.float64), [], []
    for l, W in enumerate(Ws):
        inputs.append(a)
        z = a @ W.T
        zs.append(z)
        a = elu(z) if l < len(Ws) - 1 else z
    e = fd_grad(lambda v: mean_cross_entropy(v, y), zs[-1])
    L = len(Ws)
    grads = {f"forward.{L - 1}.weight": fd_vjp(lambda w: inputs[L - 1] @ w.T, Ws[L - 1], e)}
    for l in range(L - 1):
        grads[f"forward.{l}.weight"] = _fd_dfa_update(e, D[l], inputs[l], Ws[l])
    return grads


def dfa_cases(seed=0):
    """MLPs (ELU, no bias, float64) with random D_l; one with a single hidden layer and
    D_0 = W_outᵀ (where DFA is backprop)."""
    from ..models import mlp
    g = _rng(seed)
    out = []
    for sizes, n, mirror in [([12, 9, 7, 5], 6, False), ([8, 6, 4], 3, False), ([10, 5], 4, False),
                             ([6, 8, 8, 8, 3], 7, False), ([9, 7, 4], 5, True)]:
        m = mlp(sizes, activation="elu", seed=int(g.integers(1 << 30)), dtype="float64")
        C = sizes[-1]
        if mirror:
            D = [m.blocks[1].main.params["weight"].T.copy()]
        else:
            D = [g.uniform(-1, 1, (sizes[l + 1], C)) / np.sqrt(sizes[l + 1]) for l in range(len(sizes) - 2)]
        label = f"MLP {'-'.join(map(str, sizes))}, N={n}" + (", D_0 = W_outᵀ (backprop)" if mirror else "")
        out.append(Case(label, (m, D, g.standard_normal((n, sizes[0])), g.integers(0, C, n))))
    return out


@register
def dfa_gradients(fn, reference=None, seed=0, **options) -> None:
    """Direct feedback alignment through a whole MLP for the mean cross-entropy.

    Contract: ``fn(model, D, x, y) -> {name: gradient}``, one entry ``forward.<l>.weight`` per
    block of ``model`` (a :class:`ccledu.models.Network` MLP, ELU, no bias), with
    ``D = [D_0, ..., D_{L-2}]``: ``D[l]`` (d_l, C) carries the output error e to hidden block l
    (0-based, like the parameter names); the classifier's gradient is backprop's.
    """
    cases = dfa_cases(seed)

    def mine(model, D, x, y):
        return {k: np.array(v, copy=True) for k, v in dict(fn(model, D, x, y)).items()}

    _run_cases("dfa_gradients", mine, reference or _fd_dfa_gradients, cases, task="4.1",
               forbid=_FORBID, **dict(FD_TOL, **options))
