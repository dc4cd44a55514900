"""Checks for chapter 3, feedback alignment: the FA error of one hidden layer (Task 3.1) and
the FA gradients of a whole MLP (Task 3.2).

Both compare the student's function with ccledu's own code on float64 inputs: the layers'
backward passes (with the feedback matrix B in place of W) and :class:`ccledu.rules.fa.FA`.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, register

__all__ = ["fa_delta", "fa_gradients", "_ref_fa_delta", "_ref_fa_gradients"]


def _ref_fa_delta(delta_next, B, z):
    from ..layers import Activation, Linear
    act = Activation("elu")
    a = act.forward(z)                                   # a_l = σ(z_l), caches z_l
    upper = Linear(B.shape[1], B.shape[0], dtype=B.dtype)
    upper.forward(a)
    return act.backward(upper.backward(delta_next, weight=B))   # (δ_{l+1} B) ⊙ σ'(z_l)


@register
def fa_delta(fn, reference=None, seed=0, **options) -> int:
    """The feedback-alignment error of a hidden ELU layer.

    Contract: ``fn(delta_next, B, z) -> delta`` with delta_next = δ_{l+1} (N, d_{l+1}), B = the
    fixed feedback matrix B_{l+1} (d_{l+1}, d_l) (W_{l+1}'s shape), z = z_l (N, d_l); returns
    δ_l = (δ_{l+1} B_{l+1}) ⊙ σ'(z_l) (N, d_l) for the ELU σ (α = 1).
    """
    g = _rng(seed)
    cases = []
    for n, d_next, d in [(1, 3, 2), (4, 5, 7), (16, 10, 6), (3, 1, 4), (5, 6, 6)]:
        cases.append(Case(f"N={n}, d_(l+1)={d_next}, d_l={d}",
                          (g.standard_normal((n, d_next)), g.standard_normal((d_next, d)),
                           3 * g.standard_normal((n, d)))))
    return _run_cases("fa_delta", fn, reference or _ref_fa_delta, cases, **options)


def _ref_fa_gradients(model, B, x, y):
    from ..rules.fa import FA
    rule = FA().setup(model, seed=0)
    rule.set_feedback({f"fixed.{l}.weight": B[l] for l in range(1, len(model.blocks))})
    return {k: np.array(v, copy=True) for k, v in rule.step(model, x, y).grads.items()}


def fa_cases(seed=0):
    """MLPs (ELU, no bias, float64) with random feedback matrices, one with B = W (= BP)."""
    from ..models import mlp
    g = _rng(seed)
    out = []
    for sizes, n, mirror in [([12, 9, 7, 5], 6, False), ([8, 6, 4], 3, False), ([10, 5], 4, False),
                             ([6, 8, 8, 8, 3], 7, False), ([7, 6, 5, 4], 5, True)]:
        m = mlp(sizes, activation="elu", seed=int(g.integers(1 << 30)), dtype="float64")
        B = [None] + [m.blocks[l].main.params["weight"].copy() if mirror else
                      g.uniform(-1, 1, m.blocks[l].main.params["weight"].shape) / np.sqrt(sizes[l])
                      for l in range(1, len(sizes) - 1)]
        label = f"MLP {'-'.join(map(str, sizes))}, N={n}" + (", B = W (backprop)" if mirror else "")
        out.append(Case(label, (m, B, g.standard_normal((n, sizes[0])), g.integers(0, sizes[-1], n))))
    return out


@register
def fa_gradients(fn, reference=None, seed=0, **options) -> int:
    """Feedback alignment through a whole MLP for the mean cross-entropy.

    Contract: ``fn(model, B, x, y) -> {name: gradient}``, one entry ``forward.<l>.weight`` per
    block of ``model`` (a :class:`ccledu.models.Network` MLP, ELU, no bias), with
    ``B = [None, B_1, ..., B_{L-1}]``: ``B[l]`` has the shape of block l's weight and replaces it
    when the error crosses block l on its way down (block 0 sends nothing down). x (N, d_0),
    y (N,) integer labels. ``fn`` may call ``model.forward`` and read ``model.x``,
    ``model.blocks[l].out`` and ``model.blocks[l].main.params["weight"]``.
    """
    cases = fa_cases(seed)

    def mine(model, B, x, y):
        return {k: np.array(v, copy=True) for k, v in dict(fn(model, B, x, y)).items()}

    return _run_cases("fa_gradients", mine, reference or _ref_fa_gradients, cases, **options)
