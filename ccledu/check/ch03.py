"""Checks for chapter 3, feedback alignment: the FA error of one hidden layer (Task 3.1) and
the FA gradients of a whole MLP (Task 3.2).

Oracle: FA is backprop in which the linear map above layer l is differentiated with B_{l+1} in
place of W_{l+1}. The check computes exactly that by finite differences of the forward
definitions — δ_l = ∂⟨σ(z_l) B_{l+1}ᵀ, δ_{l+1}⟩/∂z_l, ∇W_l = ∂⟨a_{l-1} W_lᵀ, δ_l⟩/∂W_l, and
δ_L = ∂(mean cross-entropy)/∂z_L — so it never spells out the recursion and never calls
ccledu's FA rule.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, elu, fd_grad, fd_vjp, mean_cross_entropy, register

__all__ = ["fa_delta", "fa_gradients", "fa_cases", "sign_symmetry_cos"]

FD_TOL = dict(rtol=1e-6, atol=1e-7)
_FORBID = ("ccledu.rules.fa", "ccledu.rules.bp", "ccledu.layers:Linear.backward",
           "ccledu.layers:Activation.backward", "ccledu.models:Block.backward",
           "ccledu.models:Network.backward")


def _fd_fa_delta(delta_next, B, z):
    return fd_vjp(lambda v: elu(v) @ B.T, z, delta_next)


@register
def fa_delta(fn, reference=None, seed=0, **options) -> None:
    """The feedback-alignment error of a hidden ELU layer (Task 3.1).

    Contract: ``fn(delta_next, B, z) -> delta`` with delta_next = δ_{l+1} (N, d_{l+1}), B = the
    fixed feedback matrix B_{l+1} (d_{l+1}, d_l) (W_{l+1}'s shape), z = z_l (N, d_l); returns
    δ_l (N, d_l) for the ELU σ (α = 1). Catches: Bᵀ used instead of B (the square case),
    σ'(z) forgotten or taken from a ReLU, σ(z) used in place of σ'(z).
    """
    g = _rng(seed)
    cases = []
    for n, d_next, d in [(1, 3, 2), (4, 5, 7), (16, 10, 6), (3, 1, 4), (5, 6, 6)]:
        cases.append(Case(f"N={n}, d_(l+1)={d_next}, d_l={d}",
                          (g.standard_normal((n, d_next)), g.standard_normal((d_next, d)),
                           3 * g.standard_normal((n, d)))))
    _run_cases("fa_delta", fn, reference or _fd_fa_delta, cases, task="3.1", forbid=_FORBID,
               **dict(FD_TOL, **options))


def _weights(model):
    return [blk.main.params["weight"] for blk in model.blocks]


def _fd_fa_gradients(model, B, x, y):
    """FA by finite differences of the definitions, for an ELU MLP without bias."""
    Ws = _weights(model)
    a, zs, inputs = np.asarray(x, dtype=np.float64), [], []
    for l, W in enumerate(Ws):
        inputs.append(a)
        z = a @ W.T
        zs.append(z)
        a = elu(z) if l < len(Ws) - 1 else z
    delta = fd_grad(lambda v: mean_cross_entropy(v, y), zs[-1])
    grads = {}
    for l in range(len(Ws) - 1, -1, -1):
        grads[f"forward.{l}.weight"] = fd_vjp(lambda w, l=l: inputs[l] @ w.T, Ws[l], delta)
        if l > 0:
            delta = fd_vjp(lambda v, l=l: elu(v) @ B[l].T, zs[l - 1], delta)
    return grads


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
def fa_gradients(fn, reference=None, seed=0, **options) -> None:
    """Feedback alignment through a whole MLP for the mean cross-entropy (Task 3.2).

    Contract: ``fn(model, B, x, y) -> {name: gradient}``, one entry ``forward.<l>.weight`` per
    block of ``model`` (a :class:`ccledu.models.Network` MLP, ELU, no bias), with
    ``B = [None, B_1, ..., B_{L-1}]``: ``B[l]`` has the shape of block l's weight and replaces it
    when the error crosses block l on its way down (block 0 sends nothing down). x (N, d_0),
    y (N,) integer labels. ``fn`` may call ``model.forward`` and read ``model.x``,
    ``model.blocks[l].out`` and ``model.blocks[l].main.params["weight"]``; not ccledu's FA/BP
    rules or the layers' backward methods. Catches: the error sent down through W (the random-B
    cases differ from backprop), B indexed one layer off, a missing 1/N.
    """
    cases = fa_cases(seed)

    def mine(model, B, x, y):
        return {k: np.array(v, copy=True) for k, v in dict(fn(model, B, x, y)).items()}

    _run_cases("fa_gradients", mine, reference or _fd_fa_gradients, cases, task="3.2",
               forbid=_FORBID, **dict(FD_TOL, **options))


# --------------------------------------------------------------------------------------------
# Task 3.3 (derived): how well does sign symmetry align with backprop?
# --------------------------------------------------------------------------------------------

def _measured_sign_cos(W, seed):
    """The cosine, measured, between the errors that backprop (δ W) and sign symmetry
    (δ sign(W)) send below a layer of weight ``W`` (d_{l+1}, d_l), over a batch of 256 random
    errors δ (standard normal rows, drawn from ``seed``), the batch flattened into one vector."""
    delta = np.random.default_rng(seed).standard_normal((256, W.shape[0]))
    u, v = (delta @ W).ravel(), (delta @ np.sign(W)).ravel()
    return float(u @ v / np.sqrt((u @ u) * (v @ v)))


@register
def sign_symmetry_cos(fn, reference=None, seed=0, **options) -> None:
    """Task 3.3: predict the cosine between sign symmetry's and backprop's hidden error.

    Contract: ``fn(W) -> cos`` (a float): ``W`` (d_{l+1}, d_l) a weight matrix whose entries are
    drawn independently from one distribution symmetric about 0 (possibly with exact zeros);
    ``cos`` the cosine between δ W and δ sign(W) that the derivation predicts for a wide layer,
    its expectations estimated from the entries of ``W``.

    Oracle: **measurement** — 256 random errors δ (never shown to your function) are sent through
    W and through sign(W) and the cosine of the two results is measured; yours must agree within
    0.015. Six weight distributions (normal at two scales, uniform, Laplace, Student-t with 3
    degrees of freedom, and a normal with 60 % of the entries set to 0).
    """
    g = _rng(seed)
    specs = [("normal, σ = 0.05", lambda s: 0.05 * g.standard_normal(s)),
             ("normal, σ = 3", lambda s: 3.0 * g.standard_normal(s)),
             ("uniform on (-0.1, 0.1)", lambda s: g.uniform(-0.1, 0.1, s)),
             ("Laplace", lambda s: g.laplace(0.0, 0.2, s)),
             ("Student-t, 3 degrees of freedom", lambda s: 0.1 * g.standard_t(3, s)),
             ("normal with 60 % of the entries exactly 0",
              lambda s: g.standard_normal(s) * (g.random(s) < 0.4))]
    cases = []
    for label, draw in specs:
        shape = (int(g.integers(200, 400)), int(g.integers(200, 400)))
        cases.append(Case(f"{label}, W {shape[0]}×{shape[1]}", (draw(shape),)))
    oracle_seed = int(g.integers(1 << 30))

    def post(out, W):
        if np.size(out) != 1 or not np.isfinite(float(np.asarray(out))):
            raise AssertionError(f"sign_symmetry_cos: your function must return one finite number "
                                 f"(a cosine), got {out!r}")
        return float(np.asarray(out))

    def oracle(W):
        return _measured_sign_cos(W, oracle_seed)

    options.setdefault("rtol", 0.0)
    options.setdefault("atol", 0.015)
    _run_cases("sign_symmetry_cos", fn, reference or oracle, cases, task="3.3", forbid=_FORBID,
               post=post, **options)
