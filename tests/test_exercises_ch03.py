"""Grading tests for chapter 3 (feedback alignment), marker ``ch03``.

The package's feedback-alignment code (the layers' backward pass with B in place of W, and
:class:`ccledu.rules.fa.FA`) is compared with oracles that do not use it: the FA recursion
written out in plain NumPy, finite differences of the ELU, and — where B = W, so that FA is
backprop — finite differences of the cross-entropy itself.
"""
import numpy as np
import pytest

from ccledu import check
from conftest import load_solutions
from ccledu.check.ch03 import fa_cases
from ccledu.losses import cross_entropy
from ccledu.models import mlp
from ccledu.rules.fa import FA
from ccledu.testing import grad_rel_error, numerical_gradient

pytestmark = pytest.mark.ch03

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)
EXACT = dict(rtol=1e-10, atol=1e-12, verbose=False, poison=False)


def _elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def fd_fa_delta(delta_next, B, z):
    h = 1e-6
    return (delta_next @ B) * (_elu(z + h) - _elu(z - h)) / (2 * h)


def numpy_fa(model, B, x, y):
    """FA for an ELU MLP without bias, from the equations alone (no ccledu code)."""
    Ws = [b.main.params["weight"] for b in model.blocks]
    a, zs = [x], []
    for l, W in enumerate(Ws):
        z = a[-1] @ W.T
        zs.append(z)
        a.append(_elu(z) if l < len(Ws) - 1 else z)
    logits = a[-1] - a[-1].max(axis=1, keepdims=True)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    delta = (p - np.eye(p.shape[1])[y]) / len(y)
    grads = {}
    for l in range(len(Ws) - 1, -1, -1):
        grads[f"forward.{l}.weight"] = delta.T @ a[l]
        if l > 0:
            delta = (delta @ B[l]) * np.where(zs[l - 1] > 0, 1.0, np.exp(np.minimum(zs[l - 1], 0)))
    return grads


def package_fa(model, B, x, y):
    rule = FA().setup(model, seed=0)
    rule.set_feedback({f"fixed.{l}.weight": B[l] for l in range(1, len(model.blocks))})
    return {k: v.copy() for k, v in rule.step(model, x, y).grads.items()}


def test_fa_delta_matches_finite_differences():
    check.fa_delta(load_solutions("03_feedback_alignment")["my_fa_delta"], reference=fd_fa_delta, **FD)


def test_fa_gradients_match_the_equations():
    check.fa_gradients(package_fa, reference=numpy_fa, **EXACT)


def test_fa_with_b_equal_w_is_the_loss_gradient():
    model = mlp([7, 6, 5, 4], activation="elu", seed=11, dtype="float64")
    g = np.random.default_rng(5)
    x, y = g.standard_normal((5, 7)), g.integers(0, 4, 5)
    B = [None] + [model.blocks[l].main.params["weight"].copy() for l in (1, 2)]
    grads = package_fa(model, B, x, y)
    for name, W in model.parameters().items():
        num = numerical_gradient(lambda: cross_entropy(model.forward(x), y, grad=False), W)
        assert grad_rel_error(grads[name], num) < 1e-6, name


def test_fa_gradient_is_that_of_the_local_objective():
    """With random B, ∇W_l is the gradient of ⟨sg(δ_l), z_l(W_l)⟩ for the FA error δ_l."""
    case = fa_cases(0)[0]
    model, B, x, y = case.args
    grads = package_fa(model, B, x, y)
    Ws = [b.main.params["weight"] for b in model.blocks]
    # the FA errors δ_l, rebuilt with NumPy and a finite-difference σ'
    a, zs = [x], []
    for l, W in enumerate(Ws):
        zs.append(a[-1] @ W.T)
        a.append(_elu(zs[-1]) if l < len(Ws) - 1 else zs[-1])
    _, delta = cross_entropy(a[-1], y)
    deltas = {len(Ws) - 1: delta}
    for l in range(len(Ws) - 1, 0, -1):
        deltas[l - 1] = fd_fa_delta(deltas[l], B[l], zs[l - 1])
    for l, W in enumerate(Ws):
        a_prev = a[l]
        num = numerical_gradient(lambda: np.sum(deltas[l] * (a_prev @ W.T)), W)
        assert grad_rel_error(grads[f"forward.{l}.weight"], num) < 1e-6, l


# --------------------------------------------------------------------------------------------
# Task 3.3 (derived): the sign-symmetry cosine
# --------------------------------------------------------------------------------------------

@pytest.mark.ch03
def test_sign_symmetry_oracle_measures_the_cosine():
    """The check's measurement: 1 when |W| is constant (sign(W) is W up to a scale), the
    notebook's prediction for uniform weights (√3/2) and FA's ≈ 0 for a B independent of W."""
    from ccledu.check.ch03 import _measured_sign_cos
    g = np.random.default_rng(4)
    W = 0.3 * np.sign(g.standard_normal((200, 150)))
    assert _measured_sign_cos(W, 1) == pytest.approx(1.0, abs=1e-12)
    assert _measured_sign_cos(g.uniform(-1, 1, (400, 300)), 2) == pytest.approx(np.sqrt(3) / 2, abs=0.01)
    delta = np.random.default_rng(3).standard_normal((256, 300))
    u, v = (delta @ g.standard_normal((300, 200))).ravel(), (delta @ np.sign(g.standard_normal((300, 200)))).ravel()
    assert abs(u @ v / np.sqrt((u @ u) * (v @ v))) < 0.02


@pytest.mark.ch03
def test_sign_symmetry_reference_passes_the_graded_seeds():
    from conftest import load_solutions
    fn = load_solutions("03_feedback_alignment")["my_sign_symmetry_cos"]
    for seed in (0, 63):
        check.sign_symmetry_cos(fn, seed=seed, verbose=False)
