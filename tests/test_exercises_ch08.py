"""Grading tests for chapter 8 (forward-forward): ``pytest -m ch08``.

The FF layer loss and its gradient (Task 8.1, ``check.ff_layer_grad``) are compared with
oracles that do not depend on the exercise: the loss written from its definition
(log(1 + eᵗ), no stabilisation) and central finite differences of it; and the package's own
``FF.local_step`` must give the block gradient that ∂L/∂h implies.
"""
import numpy as np
import pytest

from ccledu import check
from conftest import load_solutions
from ccledu.testing import numerical_gradient

FD = dict(rtol=1e-5, atol=1e-8, verbose=False, poison=False)


def fd_ff_layer_grad(h, sign, theta):
    h = np.array(h, dtype=np.float64)
    N = h.shape[0] // 2

    def loss():
        g = np.array([np.sum(r ** 2) for r in h])
        return float(np.sum(np.log1p(np.exp(sign * (theta - g)))) / N)

    return loss(), numerical_gradient(loss, h)


@pytest.mark.ch08
def test_ff_layer_grad_reference_matches_finite_differences():
    check.ff_layer_grad(load_solutions("08_forward_forward")["my_ff_layer_grad"], reference=fd_ff_layer_grad, **FD)


@pytest.mark.ch08
def test_wrong_gradients_are_caught():
    def no_factor_two(h, sign, theta):
        loss, dh = load_solutions("08_forward_forward")["my_ff_layer_grad"](h, sign, theta)
        return loss, dh / 2

    def mean_over_all_rows(h, sign, theta):
        loss, dh = load_solutions("08_forward_forward")["my_ff_layer_grad"](h, sign, theta)
        return loss / 2, dh / 2

    for wrong in (no_factor_two, mean_over_all_rows):
        with pytest.raises(AssertionError):
            check.ff_layer_grad(wrong, verbose=False)


@pytest.mark.ch08
@pytest.mark.parametrize("theta", [0.3, 2.0])
def test_package_block_gradient_follows_dL_dh(theta):
    """FF.local_step's gradient of hidden block 0 = (dh ⊙ relu'(z))ᵀ u with dh from the
    exercise's reference, u the normalised overlaid input."""
    from ccledu.models import mlp
    from ccledu.rules.ff import FF, length_normalise

    rng = np.random.default_rng(5)
    net = mlp([16, 9, 3], activation="relu", seed=2, dtype="float64")
    net.parameters()["forward.0.weight"][...] *= 3.0
    x, y = rng.standard_normal((4, 16)), rng.integers(0, 3, 4)
    rule = FF(theta=theta).setup(net, seed=0)
    y_neg = rule.draw_negatives(y, 3)
    got = rule.local_step(net, x, y, y_neg).grads["forward.0.weight"]

    u = length_normalise(np.concatenate([rule.overlay(x, rule.one_hot(y, 3, x)),
                                         rule.overlay(x, rule.one_hot(y_neg, 3, x))]))
    z = u @ net.parameters()["forward.0.weight"].T
    sign = np.concatenate([np.ones(4), -np.ones(4)])
    _, dh = load_solutions("08_forward_forward")["my_ff_layer_grad"](np.maximum(z, 0), sign, theta)
    np.testing.assert_allclose(got, (dh * (z > 0)).T @ u, rtol=1e-10, atol=1e-12)
