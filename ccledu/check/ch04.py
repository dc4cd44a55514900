"""Checks for chapter 4, direct feedback alignment: one hidden layer's DFA update (Task 4.1)
and the DFA gradients of a whole MLP.

References are ccledu's own code: a block's backward pass fed the broadcast error e Dᵀ, and
:class:`ccledu.rules.dfa.DFA`.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["dfa_update", "dfa_gradients", "_ref_dfa_update", "_ref_dfa_gradients"]


def _ref_dfa_update(e, D, a_prev, W):
    from ..layers import Activation, Linear
    from ..models import Block
    block = Block([Linear(W.shape[1], W.shape[0], dtype=W.dtype), Activation("elu")], "linear", "elu")
    block.main.params["weight"] = W
    block.forward(a_prev)
    block.backward(e @ D.T, need_dx=False)          # δ_l = (e D_lᵀ) ⊙ σ'(z_l);  ∇W_l = δ_lᵀ a_{l-1}
    return block.main.grads["weight"]


@register
def dfa_update(fn, reference=None, seed=0, **options) -> int:
    """The direct-feedback-alignment gradient of one hidden ELU layer.

    Contract: ``fn(e, D, a_prev, W) -> dW`` with e = δ_L the output error (N, C), D = D_l the
    fixed feedback matrix (d_l, C), a_prev = a_{l-1} the layer's input (N, d_{l-1}), W = W_l
    (d_l, d_{l-1}); returns ∇W_l = δ_lᵀ a_{l-1} (d_l, d_{l-1}) with
    δ_l = (e D_lᵀ) ⊙ σ'(z_l), z_l = a_{l-1} W_lᵀ, σ = ELU (α = 1), no bias.
    """
    g = _rng(seed)
    cases = []
    for n, c, d, d_prev in [(1, 3, 2, 4), (4, 10, 7, 5), (16, 10, 6, 12), (3, 2, 1, 3), (8, 5, 9, 9)]:
        cases.append(Case(f"N={n}, C={c}, d_l={d}, d_(l-1)={d_prev}",
                          (g.standard_normal((n, c)), g.standard_normal((d, c)),
                           g.standard_normal((n, d_prev)), g.standard_normal((d, d_prev)))))
    return _run_cases("dfa_update", fn, reference or _ref_dfa_update, cases, **options)


def _ref_dfa_gradients(model, D, x, y):
    from ..rules.dfa import DFA
    rule = DFA().setup(model, seed=0)
    rule.set_feedback({f"fixed.{l}.weight": D[l] for l in range(len(model.blocks) - 1)})
    return {k: np.array(v, copy=True) for k, v in rule.step(model, x, y).grads.items()}


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
def dfa_gradients(fn, reference=None, seed=0, **options) -> int:
    """Direct feedback alignment through a whole MLP for the mean cross-entropy.

    Contract: ``fn(model, D, x, y) -> {name: gradient}``, one entry ``forward.<l>.weight`` per
    block of ``model`` (a :class:`ccledu.models.Network` MLP, ELU, no bias), with
    ``D = [D_0, ..., D_{L-2}]``: ``D[l]`` (d_l, C) carries the output error e to hidden block l
    (0-based, like the parameter names); the classifier's gradient is backprop's eᵀ a_{L-1}.
    """
    cases = dfa_cases(seed)

    def mine(model, D, x, y):
        return {k: np.array(v, copy=True) for k, v in dict(fn(model, D, x, y)).items()}

    return _run_cases("dfa_gradients", mine, reference or _ref_dfa_gradients, cases, **options)
