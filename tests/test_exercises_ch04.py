"""Grading tests for chapter 4 (direct feedback alignment), marker ``ch04``.

The package's DFA code (a block's backward pass fed e Dᵀ, and :class:`ccledu.rules.dfa.DFA`) is
compared with oracles that do not use it: finite differences of the local objective
⟨sg(e D_lᵀ), a_l(W_l)⟩, the DFA equations in plain NumPy, and — for one hidden layer with
D = W_outᵀ, where DFA is backprop — finite differences of the cross-entropy.
"""
import numpy as np
import pytest

from ccledu import check
from conftest import load_solutions
from ccledu.losses import cross_entropy
from ccledu.models import mlp
from ccledu.rules.dfa import DFA
from ccledu.testing import grad_rel_error, numerical_gradient, numerical_vjp

pytestmark = pytest.mark.ch04

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)
EXACT = dict(rtol=1e-10, atol=1e-12, verbose=False, poison=False)


def _elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def fd_dfa_update(e, D, a_prev, W):
    """∂⟨e Dᵀ, σ(a_prev Wᵀ)⟩/∂W by central differences."""
    return numerical_vjp(lambda: _elu(a_prev @ W.T), W, e @ D.T)


def numpy_dfa(model, D, x, y):
    """DFA for an ELU MLP without bias, from the equations alone (no ccledu code)."""
    Ws = [b.main.params["weight"] for b in model.blocks]
    a, zs = [x], []
    for l, W in enumerate(Ws):
        zs.append(a[-1] @ W.T)
        a.append(_elu(zs[-1]) if l < len(Ws) - 1 else zs[-1])
    logits = a[-1] - a[-1].max(axis=1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    e = (p - np.eye(p.shape[1])[y]) / len(y)
    grads = {f"forward.{len(Ws) - 1}.weight": e.T @ a[-2]}
    for l in range(len(Ws) - 1):
        delta = (e @ D[l].T) * np.where(zs[l] > 0, 1.0, np.exp(np.minimum(zs[l], 0)))
        grads[f"forward.{l}.weight"] = delta.T @ a[l]
    return grads


def package_dfa(model, D, x, y):
    rule = DFA().setup(model, seed=0)
    rule.set_feedback({f"fixed.{l}.weight": D[l] for l in range(len(model.blocks) - 1)})
    return {k: v.copy() for k, v in rule.step(model, x, y).grads.items()}


def test_dfa_update_matches_finite_differences():
    check.dfa_update(load_solutions("04_direct_feedback_alignment")["my_dfa_update"], reference=fd_dfa_update, **FD)


def test_dfa_gradients_match_the_equations():
    check.dfa_gradients(package_dfa, reference=numpy_dfa, **EXACT)


def test_dfa_with_one_hidden_layer_and_d_equal_w_out_is_the_loss_gradient():
    model = mlp([7, 6, 4], activation="elu", seed=12, dtype="float64")
    g = np.random.default_rng(6)
    x, y = g.standard_normal((5, 7)), g.integers(0, 4, 5)
    grads = package_dfa(model, [model.blocks[1].main.params["weight"].T.copy()], x, y)
    for name, W in model.parameters().items():
        num = numerical_gradient(lambda: cross_entropy(model.forward(x), y, grad=False), W)
        assert grad_rel_error(grads[name], num) < 1e-6, name


def test_dfa_hidden_updates_ignore_the_layers_above():
    """Changing the weights above block l leaves its DFA update unchanged except through e."""
    model = mlp([6, 5, 5, 3], activation="elu", seed=2, dtype="float64")
    g = np.random.default_rng(0)
    x, y = g.standard_normal((4, 6)), g.integers(0, 3, 4)
    D = [g.standard_normal((5, 3)), g.standard_normal((5, 3))]
    before = package_dfa(model, D, x, y)
    model.forward(x)
    e = cross_entropy(model.blocks[-1].out, y)[1]
    dW0 = load_solutions("04_direct_feedback_alignment")["my_dfa_update"](e, D[0], x, model.blocks[0].main.params["weight"])
    np.testing.assert_allclose(before["forward.0.weight"], dW0, rtol=1e-12, atol=1e-14)
