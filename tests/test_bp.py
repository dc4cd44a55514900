"""Whole-network backprop gradients against finite differences of the loss (float64)."""
import numpy as np
import pytest

from ccledu.backend import to_numpy
from ccledu.losses import cross_entropy
from ccledu.models import build_model, parse_spec
from ccledu.rules import get_rule
from ccledu.testing import compare, grad_rel_error as rel_error, numerical_gradient


@pytest.mark.parametrize("spec,act,bias", [("mlp:9-7-6-4", "elu", False), ("mlp:9-7-6-4", "tanh", True),
                                           ("cnn:2x8x8-c3-c4-5", "elu", False),
                                           ("cnn:1x6x6-c2-3", "sigmoid", True)])
def test_bp_gradients_equal_finite_differences(spec, act, bias):
    rng = np.random.default_rng(0)
    model = build_model(spec, activation=act, bias=bias, seed=3, dtype="float64")
    x = rng.standard_normal((5,) + model.input_shape)
    y = rng.integers(0, model.num_classes, 5)
    res = get_rule("bp").step(model, x, y)
    assert set(res.grads) == set(model.parameters())
    for name, p in model.parameters().items():
        num = numerical_gradient(lambda: cross_entropy(model.forward(x), y, grad=False), p)
        err = rel_error(res.grads[name], num)
        assert err < 1e-6, f"{spec} {name}: rel error {err:.2e}"


def test_cross_entropy_gradient():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 3))
    y = np.array([0, 2, 1, 2])
    loss, d = cross_entropy(z, y)
    num = numerical_gradient(lambda: cross_entropy(z, y, grad=False), z)
    assert rel_error(d, num) < 1e-7
    # the stable form survives huge logits
    big = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert np.isfinite(cross_entropy(big, np.array([0, 1]), grad=False))


def test_paper_presets():
    assert parse_spec("mlp", "mnist") == ("mlp", [784, 256, 256, 256, 256, 256, 10])
    assert parse_spec("mlp-cifar100")[1] == [3072, 1024, 1024, 1024, 100]
    m = build_model("cnn", data="cifar10", dtype="float32")
    assert [b.main.params["weight"].shape[0] for b in m.blocks[:-1]] == [128, 128, 256, 256, 512]
    assert m.shapes[-2] == (512, 1, 1) and m.blocks[-1].main.params["weight"].shape == (10, 512)
    m = build_model("cnn", data="mnist")
    assert m.input_shape == (1, 32, 32)
    with pytest.raises(ValueError, match="cannot read model specification"):
        parse_spec("mlp:abc")
    with pytest.raises(ValueError, match="unknown learning rule"):
        get_rule("hebb")


@pytest.mark.parametrize("spec, msg", [
    ("mlp:784-0-10", "an MLP's widths must all be at least 1 .*got 784-0-10"),
    ("mlp:0-10", "an MLP's widths must all be at least 1 .*got 0-10"),
    ("cnn:1x28x28-c0-10", r"channels \(0,\)"),
    ("cnn:0x28x28-c8-10", r"got input \(0, 28, 28\)"),
    ("cnn:1x28x28-c8-0", "0 classes")])
def test_zero_sizes_refused(spec, msg):
    """A zero width, channel count, input size or class count is refused by the builders
    (it used to end in a ZeroDivisionError inside the weight initialisation)."""
    with pytest.raises(ValueError, match=msg):
        build_model(spec)


def test_too_many_conv_blocks_refused():
    """Six 2x2 pools cannot fit a 28x28 input: refused before any layer is built, naming the
    block that would get a 1x1 image (it used to fail inside a Conv2d on a 0x0 input)."""
    with pytest.raises(ValueError, match=r"block 4 would get 1x1, too small to pool\. Use at most 4"):
        build_model("cnn:1x28x28-c8-c8-c8-c8-c8-c8-10")
    assert build_model("cnn:1x28x28-c8-c8-c8-c8-10").shapes[-2] == (8, 1, 1)


def test_same_seed_same_weights():
    a = build_model("mlp:20-8-4", seed=7).parameters()
    b = build_model("mlp:20-8-4", seed=7).parameters()
    c = build_model("mlp:20-8-4", seed=8).parameters()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["forward.0.weight"], c["forward.0.weight"])


def test_bp_on_backend(xp):
    """BP on the back-end under test equals BP on NumPy for the same seed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 8, 8))
    y = rng.integers(0, 5, 6)
    ref_model = build_model("cnn:2x8x8-c3-c4-5", seed=1, dtype="float64")
    ref = get_rule("bp").step(ref_model, x, y)
    model = build_model("cnn:2x8x8-c3-c4-5", seed=1, dtype="float64")
    res = get_rule("bp").step(model, xp.asarray(x), xp.asarray(y))
    for k in ref.grads:
        compare(k, to_numpy(res.grads[k]), ref.grads[k], rtol=1e-10, atol=1e-13)
