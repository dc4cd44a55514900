"""Every layer's backward against central finite differences (float64), and im2col against
direct convolution loops and scipy."""
import numpy as np
import pytest
import scipy.signal

from ccledu.backend import to_numpy
from ccledu.im2col import col2im, im2col
from ccledu.layers import (ACTIVATIONS, Activation, Conv2d, Flatten, Linear, MaxPool2d, Reshape,
                           Upsample2d)
from ccledu.testing import compare, grad_rel_error as rel_error, numerical_vjp

TOL = 1e-6


def check_layer(layer, x, rng, params=True):
    """dx and every dW/db of ``layer`` equal finite differences of <forward(x), dy>."""
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    num_dx = numerical_vjp(lambda: layer.forward(x), x, dy)
    assert rel_error(dx, num_dx) < TOL, f"{type(layer).__name__} dx: rel error {rel_error(dx, num_dx):.2e}"
    if params:
        for name, p in layer.params.items():
            num = numerical_vjp(lambda: layer.forward(x), p, dy)
            err = rel_error(layer.grads[name], num)
            assert err < TOL, f"{type(layer).__name__} d{name}: rel error {err:.2e}"


@pytest.mark.parametrize("bias", [False, True])
def test_linear_backward(rng, bias):
    layer = Linear(7, 5, bias=bias, seed=1, dtype="float64")
    check_layer(layer, rng.standard_normal((4, 7)), rng)


@pytest.mark.parametrize("shape,cout,k,stride,pad,bias", [
    ((2, 3, 7, 7), 4, 3, 1, 1, False),
    ((2, 3, 8, 8), 4, 3, 2, 1, True),
    ((1, 2, 9, 7), 3, 3, 2, 0, False),
    ((2, 1, 6, 6), 2, 5, 1, 2, True),
    ((1, 2, 5, 5), 3, 1, 1, 0, False),
])
def test_conv_backward(rng, shape, cout, k, stride, pad, bias):
    layer = Conv2d(shape[1], cout, k, stride, pad, bias=bias, seed=2, dtype="float64")
    check_layer(layer, rng.standard_normal(shape), rng)


@pytest.mark.parametrize("shape,k", [((2, 3, 4, 6), 2), ((1, 2, 5, 7), 2), ((2, 1, 6, 6), 3)])
def test_maxpool_backward(rng, shape, k):
    # distinct values, so the maximum is unique and finite differences are well defined
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64) / 10
    check_layer(MaxPool2d(k), x, rng, params=False)


def test_maxpool_ties_route_to_one_position():
    x = np.zeros((1, 1, 2, 2))
    pool = MaxPool2d(2)
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape,k", [((3, 4, 8, 8), 2), ((2, 3, 7, 9), 2), ((2, 2, 9, 7), 3),
                                     ((1, 1, 4, 4), 1)])
def test_maxpool_forward_separable_equals_the_k2_tap_loop(rng, shape, k, dtype):
    """The forward takes the maximum over column taps, then row taps; the k² tap loop in
    row-major order is the definition. Same bits, in both memory layouts, with ties, ±0 and NaN."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)     # many ties
    zeros = x == 0
    x[zeros] = np.where(np.arange(int(zeros.sum())) % 2 == 1, -0.0, 0.0)   # +0 and -0 in turn
    x.flat[rng.choice(x.size, 3, replace=False)] = np.nan
    N, C, H, W = shape
    oh, ow = H // k, W // k
    ref = x[:, :, 0:oh * k:k, 0:ow * k:k].copy()
    for t in range(1, k * k):
        i, j = divmod(t, k)
        np.maximum(ref, x[:, :, i:oh * k:k, j:ow * k:k], out=ref)
    for xin in (x, np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)):
        y = MaxPool2d(k).forward(xin)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        assert np.array_equal(y, ref, equal_nan=True), "max-pool forward: values differ"
        assert np.array_equal(np.signbit(y), np.signbit(ref)), "max-pool forward: sign of 0 differs"


@pytest.mark.parametrize("s", [2, 3])
def test_upsample_backward(rng, s):
    check_layer(Upsample2d(s), rng.standard_normal((2, 3, 3, 4)), rng, params=False)
    y = Upsample2d(s).forward(np.arange(4.0).reshape(1, 1, 2, 2))
    assert y.shape == (1, 1, 2 * s, 2 * s) and y[0, 0, s, 0] == 2.0


def test_flatten_and_reshape_backward(rng):
    check_layer(Flatten(), rng.standard_normal((2, 3, 2, 2)), rng, params=False)
    check_layer(Reshape((3, 2, 2)), rng.standard_normal((2, 12)), rng, params=False)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_backward(rng, name):
    # keep away from the kinks of relu / leaky relu / elu at 0
    x = rng.standard_normal((3, 5))
    x = np.where(np.abs(x) < 0.05, 0.3, x)
    check_layer(Activation(name), x, rng, params=False)


def test_activation_values():
    z = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    act = lambda n: Activation(n).forward(z)  # noqa: E731
    np.testing.assert_allclose(act("relu"), np.maximum(z, 0))
    np.testing.assert_allclose(act("elu"), np.where(z > 0, z, np.exp(z) - 1))
    np.testing.assert_allclose(act("sigmoid"), 1 / (1 + np.exp(-z)))
    np.testing.assert_allclose(act("leaky_relu"), np.where(z > 0, z, 0.01 * z))
    assert np.all(np.isfinite(Activation("sigmoid").forward(np.array([-1000.0, 1000.0]))))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Activation("swish")


def direct_conv(x, W, stride, pad):
    """Reference: the convolution sum written as loops over output positions."""
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (H + 2 * pad - kh) // stride + 1
    ow = (Wd + 2 * pad - kw) // stride + 1
    y = np.zeros((N, F, oh, ow))
    for p in range(oh):
        for q in range(ow):
            patch = xp_[:, :, p * stride:p * stride + kh, q * stride:q * stride + kw]
            y[:, :, p, q] = np.einsum("nchw,fchw->nf", patch, W)
    return y


@pytest.mark.parametrize("stride,pad", [(1, 0), (1, 1), (2, 1), (3, 2)])
def test_conv_equals_direct_loop_and_scipy(rng, stride, pad):
    x = rng.standard_normal((2, 3, 9, 8))
    layer = Conv2d(3, 4, 3, stride, pad, seed=0, dtype="float64")
    y = layer.forward(x)
    compare("conv vs direct loop", y, direct_conv(x, layer.params["weight"], stride, pad), rtol=1e-10, atol=1e-12)
    # scipy: full cross-correlation per (n, f), summed over channels, then strided
    W = layer.params["weight"]
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ref = np.stack([np.stack([sum(scipy.signal.correlate(xpad[n, c], W[f, c], mode="valid")
                                  for c in range(3)) for f in range(4)]) for n in range(2)])
    compare("conv vs scipy", y, ref[:, :, ::stride, ::stride], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,k,stride,pad", [((2, 3, 7, 6), 3, 1, 1), ((1, 2, 8, 8), 3, 2, 1),
                                                 ((2, 2, 5, 9), 2, 2, 0), ((1, 1, 6, 6), 4, 1, 3)])
def test_col2im_is_adjoint_of_im2col(rng, shape, k, stride, pad):
    x = rng.standard_normal(shape)
    cols = im2col(x, k, k, stride, pad)
    c = rng.standard_normal(cols.shape)
    lhs = np.sum(cols * c)
    rhs = np.sum(x * col2im(c, shape, k, k, stride, pad))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"expects input \(N, 7\)"):
        Linear(7, 3).forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="expects input"):
        Conv2d(3, 4, 3).forward(np.zeros((2, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        im2col(np.zeros((1, 1, 2, 2)), 3, 3)


def test_layers_on_backend(xp, rng):
    """The same computation on the back-end under test equals NumPy's (CuPy where available)."""
    x = rng.standard_normal((2, 3, 8, 8))
    dy = rng.standard_normal((2, 4, 4, 4))
    ref = Conv2d(3, 4, 3, 2, 1, bias=True, seed=5, dtype="float64")
    mine = Conv2d(3, 4, 3, 2, 1, bias=True, seed=5, dtype="float64")  # drawn on host, moved to xp
    assert type(mine.params["weight"]).__module__.split(".")[0] == xp.__name__
    y_ref, y = ref.forward(x), mine.forward(xp.asarray(x))
    dx_ref, dx = ref.backward(dy), mine.backward(xp.asarray(dy))
    compare("conv forward", to_numpy(y), y_ref, rtol=1e-12, atol=1e-12)
    compare("conv dx", to_numpy(dx), dx_ref, rtol=1e-12, atol=1e-12)
    compare("conv dW", to_numpy(mine.grads["weight"]), ref.grads["weight"], rtol=1e-12, atol=1e-12)
    pool, pool_ref = MaxPool2d(2), MaxPool2d(2)
    a = rng.standard_normal((2, 3, 6, 6))
    compare("pool", to_numpy(pool.forward(xp.asarray(a))), pool_ref.forward(a))
    g = rng.standard_normal((2, 3, 3, 3))
    compare("pool backward", to_numpy(pool.backward(xp.asarray(g))), pool_ref.backward(g))
    up = Upsample2d(2)
    compare("upsample", to_numpy(up.forward(xp.asarray(a))), Upsample2d(2).forward(a))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_block_pools_before_the_activation_without_changing_anything(rng, name, dtype):
    """models.conv_block runs conv -> pool -> σ; for a nondecreasing σ that is conv -> σ -> pool:
    the output is bit-identical, and (no near-ties in random data) so are dx and dW."""
    from ccledu.models import Block, conv_block
    x = rng.standard_normal((3, 2, 9, 8)).astype(dtype)
    fast = conv_block(Conv2d(2, 4, 3, 1, 1, seed=5, dtype=dtype), name, 2)
    plain = Block([Conv2d(2, 4, 3, 1, 1, seed=5, dtype=dtype), Activation(name), MaxPool2d(2)],
                  "conv", name, 2)
    assert [type(layer).__name__ for layer in fast.layers] == ["Conv2d", "MaxPool2d", "Activation"]
    y_fast, y_plain = fast.forward(x), plain.forward(x)
    assert y_fast.shape == (3, 4, 4, 4)
    assert np.array_equal(y_fast, y_plain), "conv->pool->σ output differs from conv->σ->pool"
    dy = rng.standard_normal(y_fast.shape).astype(dtype)
    dx_fast, dx_plain = fast.backward(dy), plain.backward(dy)
    # (ReLU windows with every z <= 0 send their zero gradient to different positions: still 0)
    np.testing.assert_array_equal(dx_fast, dx_plain)
    np.testing.assert_array_equal(fast.main.grads["weight"], plain.main.grads["weight"])


def test_float32_expm1_is_faithfully_rounded():
    """The polynomial candidate of ELU's float32 expm1 (``accel.expm1_nonpositive_f32``, kept as
    ``layers.expm1_nonpositive_f32``): within 1 ulp of the exact value (float64 reference)
    everywhere on [-30, 0], like the C library's expm1f."""
    from ccledu.layers import expm1_nonpositive_f32
    g = np.random.default_rng(0)
    x = np.concatenate([-np.logspace(-12, np.log10(30), 1_000_000), -30 * g.random(500_000),
                        [0.0, -0.0, -30.0, -np.log(2) / 2, -np.log(2)]]).astype(np.float32)
    exact = np.expm1(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    ulp[ulp == 0] = np.spacing(np.float32(0))
    mine = expm1_nonpositive_f32(x)
    assert mine.dtype == np.float32
    err = np.abs(mine.astype(np.float64) - exact) / ulp
    libm = np.abs(np.expm1(x).astype(np.float64) - exact) / ulp
    assert err.max() < 1.0, f"mine: max error {err.max():.3f} ulp (NumPy expm1: {libm.max():.3f})"
    assert err.mean() < 0.2
    assert np.isnan(expm1_nonpositive_f32(np.array([np.nan], dtype=np.float32)))[0]


#: float32 ELU against float64 ELU: 3 units of 2⁻²³ relative. NumPy's own float32 expm1 (the
#: default kernel) is a SIMD approximation on AVX-512 CPUs, measured within 2.3 ulp of exact
#: on [-30, 0]; the polynomial candidate is within 1 ulp.
ELU_F32_RTOL = 3 * 2.0 ** -23


@pytest.mark.parametrize("kernel", ["default", "poly"])
def test_float32_elu_matches_float64_elu(monkeypatch, kernel):
    """ELU in float32 (with either expm1 kernel) agrees with float64 ELU to float32 rounding,
    including -inf, large negatives (-> -1), +inf and NaN."""
    from ccledu import accel
    monkeypatch.setenv("CCLEDU_KERNELS", f"expm1_nonpositive={kernel}")
    monkeypatch.setattr(accel, "_chosen", {})
    z = np.concatenate([np.random.default_rng(1).standard_normal(100_000) * 5,
                        [-np.inf, -1e30, -40.0, -30.0, -1e-30, 0.0, 1e-30, 3.0, np.inf, np.nan]])
    a32 = Activation("elu").forward(z.astype(np.float32))
    a64 = Activation("elu").forward(z)
    assert accel.choices()["expm1_nonpositive"]["use"] == kernel
    assert a32.dtype == np.float32
    np.testing.assert_allclose(a32[:-1], a64[:-1].astype(np.float32), rtol=ELU_F32_RTOL, atol=1e-38)
    assert a32[-10] == -1.0 and a32[-2] == np.inf and np.isnan(a32[-1])


# -- memory layouts (ccledu.accel.conv_layout): the same numbers in both -----------------------

LAYOUT_CASES = [((3, 2, 7, 6), 4, 3, 1, 1, False), ((2, 3, 8, 8), 4, 3, 2, 1, True),
                ((2, 2, 5, 9), 3, 2, 2, 0, True), ((1, 1, 6, 6), 2, 5, 1, 2, False)]


@pytest.mark.parametrize("shape,cout,k,stride,pad,bias", LAYOUT_CASES)
def test_conv_layouts_compute_the_same(rng, monkeypatch, shape, cout, k, stride, pad, bias):
    """Conv2d in the batch-last layout (default) and the channel-major one: y, dx, dW, db agree
    to float64 rounding (only the order of the sums over positions differs), and each output
    lies in memory as its layout says."""
    x = rng.standard_normal(shape)
    out = {}
    for layout in ("channel_major", "batch_last"):
        monkeypatch.setenv("CCLEDU_CONV_LAYOUT", layout)
        conv = Conv2d(shape[1], cout, k, stride, pad, bias=bias, seed=3, dtype="float64")
        y = conv.forward(x)
        dy = np.random.default_rng(9).standard_normal(y.shape)
        dx = conv.backward(dy)
        out[layout] = (y, dx, conv.grads["weight"]) + ((conv.grads["bias"],) if bias else ())
        moved = y.transpose(1, 2, 3, 0) if layout == "batch_last" else y.transpose(1, 0, 2, 3)
        assert moved.flags.c_contiguous, layout               # (F, OH, OW, N) or (F, N, OH, OW)
        moved = dx.transpose(1, 2, 3, 0) if layout == "batch_last" else dx.transpose(1, 0, 2, 3)
        assert moved.flags.c_contiguous, layout
    for name, a, b in zip(("y", "dx", "dW", "db"), out["channel_major"], out["batch_last"]):
        compare(f"{name}: channel-major vs batch-last", b, a, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape,k,stride,pad", [((2, 3, 7, 6), 3, 1, 1), ((1, 2, 8, 8), 3, 2, 1),
                                                 ((2, 2, 5, 9), 2, 2, 0), ((1, 1, 6, 6), 4, 1, 3)])
def test_tap_buffers_are_the_same_in_both_layouts(rng, shape, k, stride, pad):
    """im2col_taps/col2im_taps store their arrays differently but compute bit-for-bit the same
    numbers (copies, and the same additions in the same order); im2col is the reshaped buffer."""
    from ccledu.im2col import col2im_taps, im2col_taps
    x = rng.standard_normal(shape)
    a, b = im2col_taps(x, k, k, stride, pad), im2col_taps(x, k, k, stride, pad, batch_last=True)
    assert b.transpose(0, 1, 2, 4, 5, 3).flags.c_contiguous and a.flags.c_contiguous
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(im2col(x, k, k, stride, pad), a.reshape(a.shape[0] * k * k, -1).T)
    d = rng.standard_normal(a.shape)
    d_last = np.ascontiguousarray(d.transpose(0, 1, 2, 4, 5, 3)).transpose(0, 1, 2, 5, 3, 4)
    np.testing.assert_array_equal(col2im_taps(d, shape, k, k, stride, pad),
                                  col2im_taps(d_last, shape, k, k, stride, pad, batch_last=True))
    with pytest.raises(ValueError, match="tap buffer has shape"):
        col2im_taps(d[:, :, :1], shape, k, k, stride, pad)


def test_upsample_layouts_and_bad_layout_setting(rng, monkeypatch):
    x = rng.standard_normal((3, 2, 4, 5))
    res = {}
    for layout in ("channel_major", "batch_last"):
        monkeypatch.setenv("CCLEDU_CONV_LAYOUT", layout)
        up = Upsample2d(2)
        y = up.forward(x)
        dy = np.random.default_rng(4).standard_normal(y.shape)
        res[layout] = (np.array(y), up.backward(dy))
        check_layer(Upsample2d(2), x, rng, params=False)
    for a, b in zip(res["channel_major"], res["batch_last"]):
        compare("upsample: channel-major vs batch-last", b, a, rtol=1e-14, atol=1e-14)
    monkeypatch.setenv("CCLEDU_CONV_LAYOUT", "nhwc")
    with pytest.raises(ValueError, match="CCLEDU_CONV_LAYOUT='nhwc': use one of batch_last, channel_major"):
        Conv2d(1, 2, 3).forward(np.zeros((1, 1, 5, 5), np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elu_is_the_textbook_sum_bit_for_bit(dtype, monkeypatch):
    """ELU is computed as max(z, expm1(min(z, 0))) (one temporary); it equals the textbook
    expm1(min(z, 0)) + max(z, 0) bit for bit (NaN, infinities, subnormals, tiny and large
    values; −0 by value, whose sign NumPy leaves to the CPU), with NumPy's expm1."""
    from ccledu import accel
    from ccledu.layers import activate
    monkeypatch.setenv("CCLEDU_KERNELS", "expm1_nonpositive=default")
    monkeypatch.setattr(accel, "_chosen", {})
    rng = np.random.default_rng(7)
    special = np.array([0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-38, -1e-38, -1e-8, 1e-8,
                        -20.0, -200.0, 3.5, -0.5], dtype)
    z = np.concatenate([np.tile(special, 300), rng.standard_normal(50_000).astype(dtype),
                        (1e-6 * rng.standard_normal(50_000)).astype(dtype)])
    textbook = np.expm1(np.minimum(z, 0)) + np.maximum(z, 0)
    ints = np.int32 if dtype == np.float32 else np.int64
    got = activate("elu", z)
    assert got.dtype == dtype
    assert np.array_equal(got.view(ints), textbook.view(ints)), "mine vs textbook ELU differ in bits"
    mz = np.full(64, -0.0, dtype)
    assert np.all(activate("elu", mz) == 0)
