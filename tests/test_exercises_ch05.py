"""Grading tests for chapter 5's package exercise (Task 5.2: ``match_loss`` in
``ccledu/rules/ccl.py``), marker ``ch05``.

The oracles do not use the exercise: central finite differences of the loss written out here, and
the gradients of a whole CCL step against finite differences of the documented MLP objective with
every layer input frozen.
"""
import numpy as np
import pytest

from ccledu import check
from ccledu.testing import grad_rel_error, numerical_gradient

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)


def package_pair(A, S, Y, lam):
    from ccledu.rules.ccl import match_loss
    return match_loss(A, S, Y, lam * 256 / A.shape[1])


def fd_pair(A, S, Y, lam):
    coef = lam * 256 / A.shape[1]
    f = lambda: coef * np.mean((A @ S.T - Y) ** 2)  # noqa: E731
    return f(), numerical_gradient(f, A), numerical_gradient(f, S)


@pytest.mark.ch05
def test_match_loss_matches_finite_differences():
    check.ccl_mlp_pair(package_pair, reference=fd_pair, **FD)


@pytest.mark.ch05
def test_match_loss_value_and_zero_residual(rng):
    from ccledu.rules.ccl import match_loss
    A, S = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    Y = np.eye(4)[[0, 1, 2, 3, 0]]
    value, dA, dS = match_loss(A, S, Y, 0.7)
    assert np.isclose(float(value), 0.7 * np.sum((A @ S.T - Y) ** 2) / 20)
    assert dA.shape == A.shape and dS.shape == S.shape
    # a perfect match has zero loss and zero gradients
    S2 = np.eye(4)
    A2 = Y.copy()
    value, dA, dS = match_loss(A2, S2, Y, 1.0)
    assert float(value) == 0 and not dA.any() and not dS.any()


@pytest.mark.ch05
def test_ccl_mlp_step_matches_finite_differences_of_the_pair_objective():
    """Every gradient of a CCL step (MLP form) equals finite differences of CE + Σ pairs, each
    block recomputed from its frozen input (the detaches)."""
    from ccledu.models import build_model
    from ccledu.rules import get_rule
    model = build_model("mlp:9-7-6-3", seed=0, dtype="float64")
    rule = get_rule("ccl").setup(model, seed=0)
    g = np.random.default_rng(3)
    x, y = g.standard_normal((5, 9)), np.array([0, 1, 2, 0, 1])
    res = rule.step(model, x, y)
    grads = {k: np.array(v, copy=True) for k, v in res.grads.items()}
    model.forward(x)
    sig = rule.feedback_forward()
    a_in = [x.copy()] + [b.out.copy() for b in model.blocks[:-1]]
    s_in = [s.copy() for s in sig[1:]]
    L, C = len(model.blocks), 3
    Y = np.eye(C)[y]

    def objective():
        outs = [model.blocks[k].forward(a_in[k]) for k in range(L)]
        sigs = [rule.feedback[k].forward(s_in[k]) for k in range(L)]
        z = outs[-1] - outs[-1].max(1, keepdims=True)
        total = -(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(5), y].mean()
        for l, A in enumerate([a_in[0]] + outs[:-1]):
            total += 0.5 * np.mean((A @ sigs[l].T - Y) ** 2) * 256 / A.shape[1]
        return total

    params = dict(model.parameters())
    params.update(rule.parameters())
    for name, p in params.items():
        err = grad_rel_error(grads[name], numerical_gradient(objective, p))
        assert err < 1e-6, f"{name}: relative error {err:.2e}"
