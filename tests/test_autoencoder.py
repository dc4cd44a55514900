"""The CCL and BP convolutional autoencoders: gradients vs finite differences, which weights each
loss term reaches, and that both learn on MNIST."""
import json
import time

import numpy as np
import pytest

from ccledu.autoencoder import (BPAutoencoder, CCLAutoencoder, ConvAutoencoder, PRESETS,
                                add_parser, normalize_maps, normalize_maps_backward,
                                train_autoencoder)
from ccledu.testing import grad_rel_error, numerical_gradient

TOL = 1e-6


def _batch(shape=(3, 1, 8, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


# ---------------------------------------------------------------------------------------------
# An independent reference of the documented loss, with every layer input frozen
# ---------------------------------------------------------------------------------------------

def _ref_norm(a, eps=1e-8):
    out = np.empty_like(a)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            y = a[n, c] - a[n, c].mean()
            out[n, c] = y / (np.sqrt(np.sum(y ** 2)) + eps)
    return out


def _ref_pair(A, B, sc, sd, end):
    H = A.shape[2]
    loss = sc * H * np.mean((A - B) ** 2)
    if not end:
        loss += sd * H * np.mean((_ref_norm(A) - _ref_norm(B)) ** 2)
    return loss


class DetachedLoss:
    """L(W, V) with a_{l-1} and s_{l+1} frozen at their values for the current weights: changing a
    weight only changes the pair that its own layer's output enters."""

    def __init__(self, model, x, pairs=None):
        model.net.forward(x)
        self.acts = [a.copy() for a in model.net.acts]
        self.sigs = [s.copy() for s in model.reverse(x)]
        self.model, self.x = model, x
        L = len(model.net.layers)
        self.pairs = list(range(L + 1)) if pairs is None else list(pairs)

    def __call__(self):
        m, L = self.model, len(self.model.net.layers)
        total = 0.0
        for l in self.pairs:
            A = self.x if l == 0 else m.net.layers[l - 1].forward(self.acts[l - 1])
            B = self.x if l == L else m.feedback[l].forward(self.sigs[l + 1])
            total += _ref_pair(A, B, m.scale_c, m.scale_d, l in (0, L))
        return total


def _grads_copy(res):
    return {k: np.array(v, copy=True) for k, v in res.grads.items()}


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

def test_normalize_maps_backward_matches_finite_differences():
    a = _batch((2, 3, 4, 4), 1)
    g = _batch((2, 3, 4, 4), 2)
    u, y, r = normalize_maps(a)
    assert np.allclose(u, _ref_norm(a))
    num = numerical_gradient(lambda: np.sum(normalize_maps(a)[0] * g), a)
    assert grad_rel_error(normalize_maps_backward(g, y, r), num) < TOL


def test_shapes_and_pairing():
    m = CCLAutoencoder((1, 16, 16), (4, 6, 8), dtype="float64")
    shapes = m.net.shapes()
    assert shapes == [(1, 16, 16), (4, 8, 8), (6, 4, 4), (8, 2, 2), (6, 4, 4), (4, 8, 8),
                      (1, 16, 16)]
    x = _batch((2, 1, 16, 16))
    m.net.forward(x)
    sigs = m.reverse(x)
    assert [a.shape[1:] for a in m.net.acts] == [s.shape[1:] for s in sigs]
    assert sigs[-1] is x
    # PyTorch layouts: W (out, in, 3, 3); V maps layer l's output channels back to its input's
    p = m.parameters()
    assert p["forward.0.weight"].shape == (4, 1, 3, 3)
    assert p["feedback.0.weight"].shape == (1, 4, 3, 3)
    assert p["forward.5.weight"].shape == (1, 4, 3, 3)
    assert p["feedback.5.weight"].shape == (4, 1, 3, 3)
    # small init on the decoder's forward and the encoder's feedback weights, zero biases
    bound = lambda fan_in: 1 / np.sqrt(fan_in)  # noqa: E731
    assert np.abs(p["forward.0.weight"]).max() > 0.1 * bound(9)
    assert np.abs(p["forward.3.weight"]).max() <= 1e-3 * bound(8 * 9)
    assert np.abs(p["feedback.1.weight"]).max() <= 1e-3 * bound(6 * 9)
    assert np.abs(p["feedback.4.weight"]).max() > 0.1 * bound(4 * 9)
    assert all(np.all(v == 0) for k, v in p.items() if k.endswith("bias"))
    with pytest.raises(ValueError, match="divisible"):
        ConvAutoencoder((1, 28, 28), (4, 4, 4))


def test_float32_default_and_seeded():
    a = CCLAutoencoder((1, 8, 8), (2, 3), seed=5)
    b = CCLAutoencoder((1, 8, 8), (2, 3), seed=5, dtype="float64")
    for k, v in a.parameters().items():
        assert v.dtype == np.float32
        assert np.allclose(v, b.parameters()[k], rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# CCL gradients
# ---------------------------------------------------------------------------------------------

def _fd_step(name, params, L, small_init):
    """Finite-difference step for parameter ``name``.

    With moderate weights, h = 1e-6. With the public init (small_init = 1e-3) some layers start
    with weights ~1e-4 and outputs ~1e-3, where the normalised-map term is strongly curved:
    there h = 1e-3·rms(W) of the layer keeps the O(h²) truncation error small. The output layer W_2D and the
    lowest feedback layer V_1 are linear maps inside a plain MSE, so the loss is exactly
    quadratic in them and a large h = 1e-3 is exact up to round-off (which a small h would
    amplify against the O(1) loss)."""
    if small_init >= 0.1:
        return 1e-6
    if name.startswith(f"forward.{L - 1}.") or name.startswith("feedback.0."):
        return 1e-3
    w = params[name.rsplit(".", 1)[0] + ".weight"]       # the layer's weight sets its scale
    return 1e-3 * float(np.sqrt(np.mean(w ** 2)))


@pytest.mark.parametrize("small_init,activation,scale_d", [
    (1e-3, "elu", 1.0), (0.5, "elu", 1.0), (0.5, "tanh", 0.0), (0.5, "elu", 2.5)])
def test_ccl_gradients_match_finite_differences(small_init, activation, scale_d):
    m = CCLAutoencoder((1, 8, 8), (2, 3), activation=activation, seed=3, dtype="float64",
                       small_init=small_init, scale_d=scale_d, scale_c=0.7)
    x = _batch()
    res = m.step(x)
    grads = _grads_copy(res)
    ref = DetachedLoss(m, x)
    assert float(res.loss) == pytest.approx(ref(), rel=1e-10)
    assert set(grads) == set(m.parameters())
    L = len(m.net.layers)
    for name, p in m.parameters().items():
        num = numerical_gradient(ref, p, h=_fd_step(name, m.parameters(), L, small_init))
        err = grad_rel_error(grads[name], num)
        assert err < TOL, f"{name}: relative error {err:.2e}"
        assert np.linalg.norm(grads[name]) > 0, f"{name} got no gradient"


def test_ccl_each_term_reaches_only_its_two_layers():
    m = CCLAutoencoder((1, 8, 8), (2, 3), seed=4, dtype="float64", small_init=0.5)
    x = _batch(seed=5)
    L = len(m.net.layers)
    total = {k: np.zeros_like(v) for k, v in m.parameters().items()}
    for l in range(L + 1):
        res = m.step(x, pairs=[l])
        grads = _grads_copy(res)
        reach = set()
        if l >= 1:
            reach |= {f"forward.{l - 1}.weight", f"forward.{l - 1}.bias"}
        if l < L:
            reach |= {f"feedback.{l}.weight", f"feedback.{l}.bias"}
        for name, g in grads.items():
            if name in reach:
                assert np.linalg.norm(g) > 0, f"pair {l} should reach {name}"
                num = numerical_gradient(DetachedLoss(m, x, pairs=[l]), m.parameters()[name])
                assert grad_rel_error(g, num) < TOL
            else:
                assert np.all(g == 0), f"pair {l} must not reach {name}"
            total[name] += g
        assert set(res.terms) >= {f"pair/{l}"}
    full = _grads_copy(m.step(x))
    for name in full:
        assert grad_rel_error(full[name], total[name]) < 1e-12


def test_ccl_terms_add_up():
    m = CCLAutoencoder((1, 8, 8), (2, 3), seed=1, dtype="float64", small_init=0.5)
    x = _batch()
    res = m.step(x)
    L = len(m.net.layers)
    pairs = sum(float(res.terms[f"pair/{l}"]) for l in range(L + 1))
    assert float(res.loss) == pytest.approx(pairs, rel=1e-12)
    for l in range(1, L):
        assert float(res.terms[f"pair/{l}"]) == pytest.approx(
            float(res.terms[f"pair/{l}/c"]) + float(res.terms[f"pair/{l}/d"]), rel=1e-12)
    # the output pair is the reconstruction MSE times H
    assert float(res.terms[f"pair/{L}"]) == pytest.approx(8 * float(res.terms["recon_mse"]))
    assert float(res.terms["recon_mse"]) == pytest.approx(np.mean((m.net.forward(x) - x) ** 2))


# ---------------------------------------------------------------------------------------------
# BP gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("small_init", [1.0, 0.3])
def test_bp_gradients_match_finite_differences(small_init):
    m = BPAutoencoder((1, 8, 8), (2, 3), seed=2, dtype="float64", small_init=small_init)
    x = _batch(seed=7)
    res = m.step(x)
    grads = _grads_copy(res)
    loss = lambda: np.mean((m.net.forward(x) - x) ** 2)  # noqa: E731
    assert float(res.loss) == pytest.approx(loss(), rel=1e-12)
    assert set(grads) == set(m.parameters())
    for name, p in m.parameters().items():
        err = grad_rel_error(grads[name], numerical_gradient(loss, p))
        assert err < TOL, f"{name}: relative error {err:.2e}"


# ---------------------------------------------------------------------------------------------
# Training and the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rule", ["ccl", "bp"])
def test_reconstruction_error_falls_on_mnist(rule, tmp_path):
    t0 = time.perf_counter()
    m = train_autoencoder(rule, "mnist", epochs=2, batch_size=64, seed=0, limit_train=1024,
                          limit_test=256, out=tmp_path, progress=False)
    elapsed = time.perf_counter() - t0
    h = m["history"]
    assert len(h) == 2
    assert h[-1]["train_recon_mse"] < h[0]["train_recon_mse"]
    # MNIST in [0, 1]: predicting the mean image gives ~0.067, all zeros ~0.11
    assert m["test_mse"] < 0.05, m["test_mse"]
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_mse"] == pytest.approx(m["test_mse"])
    assert saved["config"]["rule"] == rule
    assert {"train_loss", "val_mse", "train_seconds", "terms"} <= set(h[0])
    if rule == "ccl":
        assert "pair/0" in h[0]["terms"] and "pair/4" in h[0]["terms"]
    print(f"{rule}: test mse {m['test_mse']:.4f} in {elapsed:.1f} s")


def test_cli_parser_and_presets():
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["autoencoder", "--rule", "bp", "--data", "mnist", "--epochs", "3",
                              "--seed", "2", "--batch-size", "32", "--out", "somewhere",
                              "--limit-train", "100", "--preset", "paper", "--channels", "4,8"])
    assert args.rule == "bp" and args.epochs == 3 and args.preset == "paper"
    assert args.limit_train == 100 and args.channels == "4,8" and callable(args.func)
    assert PRESETS["paper"]["channels"] == (128, 256, 1024, 2048)


def test_cli_runs_tiny(tmp_path, capsys):
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    out = tmp_path / "run"
    args = parser.parse_args(["autoencoder", "--rule", "ccl", "--epochs", "1", "--limit-train",
                              "64", "--limit-test", "16", "--channels", "4,4", "--batch-size",
                              "32", "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    assert "test_mse" in capsys.readouterr().out
    assert (out / "metrics.json").exists() and (out / "reconstructions.png").exists()
