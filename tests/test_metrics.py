"""ccledu.metrics: angles, alignment with backprop, linear CKA, weight ratios."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ccledu import metrics
from ccledu.models import build_model
from ccledu.rules.bp import BP
from ccledu.rules.fa import FA


def test_angle_of_special_pairs():
    g = np.random.default_rng(0)
    v = g.standard_normal((4, 5))
    assert metrics.angle(v, v) == 0.0
    assert metrics.angle(v, 3.5 * v) == pytest.approx(0.0, abs=1e-6)
    assert metrics.angle(v, -v) == 180.0
    w = g.standard_normal(20)
    w -= (w @ v.ravel()) / (v.ravel() @ v.ravel()) * v.ravel()    # orthogonal to v
    assert metrics.angle(v, w.reshape(2, 10)) == pytest.approx(90.0, abs=1e-9)
    assert metrics.angle(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(45.0)
    assert isinstance(metrics.angle(v, v), float)
    assert math.isnan(metrics.angle(v, np.zeros_like(v)))
    with pytest.raises(ValueError):
        metrics.angle(np.ones(3), np.ones(4))


def test_angle_agrees_with_arccos_of_the_cosine():
    g = np.random.default_rng(1)
    for _ in range(20):
        a, b = g.standard_normal(7), g.standard_normal(7)
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert metrics.angle(a, b) == pytest.approx(np.degrees(np.arccos(cos)), abs=1e-9)


def test_linear_cka_properties():
    g = np.random.default_rng(2)
    X = g.standard_normal((50, 8))
    Y = X @ g.standard_normal((8, 6)) + 0.5 * g.standard_normal((50, 6))
    assert metrics.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    Q, _ = np.linalg.qr(g.standard_normal((6, 6)))
    c = metrics.linear_cka(X, Y)
    assert 0.0 < c < 1.0
    assert metrics.linear_cka(X, Y @ Q) == pytest.approx(c, abs=1e-12)     # orthogonal map
    assert metrics.linear_cka(X, 7.0 * Y) == pytest.approx(c, abs=1e-12)   # isotropic scaling
    assert metrics.linear_cka(X, Y + 3.0) == pytest.approx(c, abs=1e-12)   # centring
    assert metrics.linear_cka(Y, X) == pytest.approx(c, abs=1e-12)
    # wide activations (N < d) take the Gram-matrix route: same number
    W = g.standard_normal((10, 40))
    Z = W @ g.standard_normal((40, 30))
    Wc, Zc = W - W.mean(0), Z - Z.mean(0)
    direct = (np.linalg.norm(Zc.T @ Wc) ** 2
              / (np.linalg.norm(Wc.T @ Wc) * np.linalg.norm(Zc.T @ Zc)))
    assert metrics.linear_cka(W, Z) == pytest.approx(direct, rel=1e-10)
    # conv-shaped activations are flattened
    A = g.standard_normal((12, 2, 3, 3))
    assert metrics.linear_cka(A, A.reshape(12, -1)) == pytest.approx(1.0)


def test_cka_matrix_shape_and_diagonal():
    model = build_model("mlp:12-10-8-5", dtype="float64")
    x = np.random.default_rng(3).standard_normal((30, 12))
    model.forward(x)
    acts = [a.copy() for a in model.activations]
    M = metrics.cka_matrix(acts)
    assert M.shape == (3, 3) and isinstance(M, np.ndarray)
    np.testing.assert_allclose(np.diag(M), 1.0, atol=1e-12)
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert metrics.cka_matrix(acts[:2], acts).shape == (2, 3)


@pytest.mark.parametrize("spec", ["mlp:12-10-8-5", "cnn:2x8x8-c3-c4-5"])
def test_alignment_with_bp_is_zero_for_bp(spec):
    model = build_model(spec, dtype="float64")
    g = np.random.default_rng(4)
    x = g.standard_normal((8, *model.input_shape))
    y = g.integers(0, 5, size=8)
    before = {k: v.copy() for k, v in model.parameters().items()}
    angles = metrics.alignment_with_bp(model, BP(), x, y)
    assert set(angles) == set(model.parameters())
    assert all(isinstance(v, float) and v == pytest.approx(0.0, abs=1e-6) for v in angles.values())
    assert all(np.array_equal(before[k], v) for k, v in model.parameters().items())
    # a rule with random feedback is not aligned in the hidden layers (but is at the top)
    fa = metrics.alignment_with_bp(model, FA().setup(model, 0), x, y)
    assert fa["forward.0.weight"] > 1.0
    assert fa[f"forward.{len(model.blocks) - 1}.weight"] == pytest.approx(0.0, abs=1e-6)


def test_weight_ratio():
    params = {"a": np.full((2, 2), 2.0), "b": np.ones(4)}
    deltas = {"a": np.full((2, 2), 0.2), "b": np.zeros(4), "c": np.ones(1)}
    r = metrics.weight_ratio(deltas, params)
    assert set(r) == {"a", "b"}
    assert r["a"] == pytest.approx(0.1) and r["b"] == 0.0
    assert isinstance(r["a"], float)
    after = {"a": params["a"] * 1.5, "b": params["b"].copy()}
    u = metrics.update_ratio(params, after)
    assert u["a"] == pytest.approx(0.5) and u["b"] == 0.0


def test_metrics_on_cupy_if_available():
    cp = pytest.importorskip("cupy")
    if not cp.is_available():
        pytest.skip("no CUDA device")
    g = np.random.default_rng(5)
    a, b = g.standard_normal(10), g.standard_normal(10)
    assert metrics.angle(cp.asarray(a), cp.asarray(b)) == pytest.approx(metrics.angle(a, b))
    X, Y = g.standard_normal((20, 4)), g.standard_normal((20, 3))
    assert metrics.linear_cka(cp.asarray(X), cp.asarray(Y)) == pytest.approx(metrics.linear_cka(X, Y))
