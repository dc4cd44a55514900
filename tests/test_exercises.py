"""Grading tests for the package exercises, one pytest marker per chapter.

Each test calls the *package's* function (the one a student fills in, in a student copy made
with ``ccledu course make-student``) and compares it with an oracle that does not depend on the
exercise: finite differences, or the definition computed one output position at a time. So

    pytest -m ch02

tests a student's ``im2col`` / ``col2im`` / ``MaxPool2d.backward``; before the tasks are done the
tests fail with the ``NotImplementedError`` that names the task.
"""
import numpy as np
import pytest

from ccledu import check
from ccledu.testing import numerical_vjp

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)   # tolerances against finite differences
EXACT = dict(rtol=1e-12, atol=1e-12, verbose=False, poison=False)


# --------------------------------------------------------------------------------------------
# Chapter 1: Linear.backward (Task 1.3), ELU derivative (Task 1.4), backprop through an MLP
# --------------------------------------------------------------------------------------------

def package_linear_backward(x, W, dy):
    from ccledu.layers import Linear
    layer = Linear(W.shape[1], W.shape[0], dtype="float64")
    layer.params["weight"] = W
    layer.forward(x)
    dx = layer.backward(dy)
    return layer.grads["weight"], dx


def fd_linear_backward(x, W, dy):
    f = lambda: x @ W.T  # noqa: E731
    return numerical_vjp(f, W, dy), numerical_vjp(f, x, dy)


@pytest.mark.ch01
def test_linear_backward_matches_finite_differences():
    check.linear_backward(package_linear_backward, reference=fd_linear_backward, **FD)


@pytest.mark.ch01
def test_linear_backward_bias_and_feedback_weight(rng):
    from ccledu.layers import Linear
    layer = Linear(6, 4, bias=True, seed=3, dtype="float64")
    x, dy = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))
    layer.forward(x)
    B = rng.standard_normal((4, 6))
    dx = layer.backward(dy, weight=B)
    assert layer.grads["bias"].shape == (4,)
    np.testing.assert_allclose(layer.grads["bias"],
                               numerical_vjp(lambda: layer.forward(x), layer.params["bias"], dy),
                               rtol=1e-6, atol=1e-8)
    # the error crosses the layer through B (feedback alignment), not through W
    np.testing.assert_allclose(dx, numerical_vjp(lambda: x @ B.T, x, dy), rtol=1e-6, atol=1e-8)
    layer.forward(x)
    assert layer.backward(dy, need_dx=False) is None
    assert layer.grads["weight"].shape == (4, 6)


def package_elu_grad(z):
    from ccledu.layers import activate, activation_grad
    return activation_grad("elu", z, activate("elu", z))


def fd_elu_grad(z):
    from ccledu.layers import activate
    h = 1e-6
    return (activate("elu", z + h) - activate("elu", z - h)) / (2 * h)


@pytest.mark.ch01
def test_elu_derivative_matches_finite_differences():
    check.elu_grad(package_elu_grad, reference=fd_elu_grad, **FD)


@pytest.mark.ch01
def test_elu_derivative_exact_values():
    from ccledu.layers import Activation
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    act = Activation("elu")
    act.forward(z)
    np.testing.assert_allclose(act.backward(np.ones_like(z)),
                               [np.exp(-2.0), np.exp(-0.5), 1.0, 1.0, 1.0], rtol=1e-12)


@pytest.mark.ch01
def test_bp_through_an_mlp_matches_finite_differences(rng):
    from ccledu.losses import cross_entropy
    from ccledu.models import mlp
    from ccledu.rules.bp import BP
    model = mlp([9, 7, 6, 4], activation="elu", bias=True, seed=5, dtype="float64")
    x, y = rng.standard_normal((5, 9)), rng.integers(0, 4, 5)
    grads = {k: v.copy() for k, v in BP().step(model, x, y).grads.items()}
    for name, p in model.parameters().items():
        check.gradient_check(lambda: cross_entropy(model.forward(x), y, grad=False), p,
                             grads[name], name=name, verbose=False)


# --------------------------------------------------------------------------------------------
# Chapter 2: im2col (Task 2.3), col2im (Task 2.4), MaxPool2d.backward (Task 2.5)
# --------------------------------------------------------------------------------------------

def loop_im2col(x, kh, kw, stride, pad):
    """One receptive field at a time: the definition, with no vectorisation."""
    N, C, H, W = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    rows = []
    for n in range(N):
        for p in range(oh):
            for q in range(ow):
                field = xpad[n, :, p * stride:p * stride + kh, q * stride:q * stride + kw]
                rows.append(field.reshape(-1))
    return np.stack(rows)


def loop_col2im(cols, x_shape, kh, kw, stride, pad):
    N, C, H, W = x_shape
    oh, ow = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    img = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    r = 0
    for n in range(N):
        for p in range(oh):
            for q in range(ow):
                img[n, :, p * stride:p * stride + kh, q * stride:q * stride + kw] += \
                    cols[r].reshape(C, kh, kw)
                r += 1
    return img[:, :, pad:pad + H, pad:pad + W]


@pytest.mark.ch02
def test_im2col_matches_explicit_loops():
    from ccledu.im2col import im2col
    check.im2col(im2col, reference=loop_im2col, **EXACT)


@pytest.mark.ch02
def test_col2im_matches_explicit_loops():
    from ccledu.im2col import col2im
    check.col2im(col2im, reference=loop_col2im, **EXACT)


@pytest.mark.ch02
@pytest.mark.parametrize("geometry", check.CONV_GEOMETRIES, ids=lambda g: f"{g[0]}-k{g[1]}x{g[2]}-s{g[3]}-p{g[4]}")
def test_col2im_is_the_adjoint_of_im2col(rng, geometry):
    from ccledu.im2col import col2im, im2col
    shape, kh, kw, s, p = geometry
    x = rng.standard_normal(shape)
    cols = im2col(x, kh, kw, s, p)
    c = rng.standard_normal(cols.shape)
    back = col2im(c, shape, kh, kw, s, p)
    lhs, rhs = np.sum(cols * c), np.sum(x * back)
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), f"<im2col(x), c> = {lhs} but <x, col2im(c)> = {rhs}"
    # a pair of zero maps is adjoint too: every pixel lies in some field here, so neither may vanish
    assert np.any(cols != 0) and np.any(back != 0), "im2col or col2im returned all zeros"


def package_conv_backward(x, W, dy, stride, pad):
    from ccledu.layers import Conv2d
    F, C, k, _ = W.shape
    layer = Conv2d(C, F, k, stride, pad, dtype="float64")
    layer.params["weight"] = W
    layer.forward(x)
    dx = layer.backward(dy)
    return layer.grads["weight"], dx


def loop_conv_backward(x, W, dy, stride, pad):
    """Both gradients straight from the definition y[n,f,P,Q] = Σ W[f,c,i,j] xpad[n,c,sP+i,sQ+j],
    one output position at a time."""
    F, C, k, _ = W.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dW, dxpad = np.zeros_like(W), np.zeros_like(xpad)
    for P in range(dy.shape[2]):
        for Q in range(dy.shape[3]):
            field = xpad[:, :, P * stride:P * stride + k, Q * stride:Q * stride + k]  # (N, C, k, k)
            g = dy[:, :, P, Q]                                                          # (N, F)
            dW += np.einsum("nf,ncij->fcij", g, field)
            dxpad[:, :, P * stride:P * stride + k, Q * stride:Q * stride + k] += np.einsum("nf,fcij->ncij", g, W)
    H, Wd = x.shape[2:]
    return dW, dxpad[:, :, pad:pad + H, pad:pad + Wd]


@pytest.mark.ch02
def test_conv_backward_matches_the_definition():
    check.conv_backward(package_conv_backward, reference=loop_conv_backward, rtol=1e-10, atol=1e-12, poison=False,
                        verbose=False)


def package_maxpool_backward(x, dy, k):
    from ccledu.layers import MaxPool2d
    pool = MaxPool2d(k)
    pool.forward(x)
    return pool.backward(dy)


def fd_maxpool_backward(x, dy, k):
    N, C, H, W = x.shape
    def forward():
        oh, ow = H // k, W // k
        win = x[:, :, :oh * k, :ow * k].reshape(N, C, oh, k, ow, k)
        return win.max(axis=(3, 5))
    return numerical_vjp(forward, x, dy)


@pytest.mark.ch02
def test_maxpool_backward_matches_finite_differences():
    check.maxpool_backward(package_maxpool_backward, reference=fd_maxpool_backward, **FD)
