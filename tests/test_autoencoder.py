"""The CCL and BP convolutional autoencoders (rules ccl-ae / bp-ae on ``models.autoencoder``):
gradients vs finite differences, which weights each loss term reaches, and that both learn on
MNIST through the one trainer and the ``ccledu train`` command."""
import json
import time

import numpy as np
import pytest

from ccledu import cli
from ccledu.models import autoencoder, build_model
from ccledu.rules.autoencoder import (BPAutoencoder, CCLAutoencoder, normalize_maps,
                                      normalize_maps_backward)
from ccledu.testing import grad_rel_error, numerical_gradient
from ccledu.train import TrainConfig, resolve, run

TOL = 1e-6


def _pair(cls, shape=(1, 8, 8), channels=(2, 3), activation="elu", seed=0, dtype="float64",
          **options):
    """(model, rule) as the trainer builds them: the rule first, its model options, setup."""
    rule = cls(**options)
    model = autoencoder(shape, channels, activation, seed=seed, dtype=dtype, **rule.model_options())
    return model, rule.setup(model, seed=seed)


def _params(model, rule):
    return {**model.parameters(), **rule.parameters()}


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

    def __init__(self, model, rule, x, pairs=None):
        model.forward(x)
        self.acts = [a.copy() for a in [x] + model.activations]
        self.sigs = [s.copy() for s in rule.reverse(x)]
        self.model, self.rule, self.x = model, rule, x
        L = len(model.blocks)
        self.pairs = list(range(L + 1)) if pairs is None else list(pairs)

    def __call__(self):
        m, r, L = self.model, self.rule, len(self.model.blocks)
        total = 0.0
        for l in self.pairs:
            A = self.x if l == 0 else m.blocks[l - 1].forward(self.acts[l - 1])
            B = self.x if l == L else r.feedback[l].forward(self.sigs[l + 1])
            total += _ref_pair(A, B, r.scale_c, r.scale_d, l in (0, L))
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
    m, r = _pair(CCLAutoencoder, (1, 16, 16), (4, 6, 8))
    assert m.shapes == [(4, 8, 8), (6, 4, 4), (8, 2, 2), (6, 4, 4), (4, 8, 8), (1, 16, 16)]
    assert m.num_classes is None and m.pixels and m.kind == "autoencoder"
    x = _batch((2, 1, 16, 16))
    m.forward(x)
    sigs = r.reverse(x)
    assert [a.shape[1:] for a in [x] + m.activations] == [s.shape[1:] for s in sigs]
    assert sigs[-1] is x
    # PyTorch layouts: W (out, in, 3, 3); V maps layer l's output channels back to its input's
    p = _params(m, r)
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
        autoencoder((1, 28, 28), (4, 4, 4))
    # the model spec pads the dataset's images to a multiple of 2^depth
    assert build_model("autoencoder:4-4-4", data="mnist").input_shape == (1, 32, 32)
    assert build_model("autoencoder", data="mnist").input_shape == (1, 28, 28)


def test_float32_default_and_seeded():
    a = _params(*_pair(CCLAutoencoder, seed=5, dtype="float32"))
    b = _params(*_pair(CCLAutoencoder, seed=5, dtype="float64"))
    for k, v in a.items():
        assert v.dtype == np.float32
        assert np.allclose(v, b[k], rtol=1e-6, atol=0)


def test_rules_refuse_other_models():
    with pytest.raises(ValueError, match="trains autoencoder models, not mlp models"):
        CCLAutoencoder().setup(build_model("mlp:12-8-4"))
    from ccledu.rules import get_rule
    with pytest.raises(ValueError, match="rules for autoencoder models: bp-ae, ccl-ae"):
        get_rule("ccl").check_kind("autoencoder")


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
    m, r = _pair(CCLAutoencoder, activation=activation, seed=3, small_init=small_init,
                 scale_d=scale_d, scale_c=0.7)
    x = _batch()
    res = r.step(m, x)
    grads = _grads_copy(res)
    ref = DetachedLoss(m, r, x)
    assert float(res.loss) == pytest.approx(ref(), rel=1e-10)
    params = _params(m, r)
    assert set(grads) == set(params)
    L = len(m.blocks)
    for name, p in params.items():
        num = numerical_gradient(ref, p, h=_fd_step(name, params, L, small_init))
        err = grad_rel_error(grads[name], num)
        assert err < TOL, f"{name}: relative error {err:.2e}"
        assert np.linalg.norm(grads[name]) > 0, f"{name} got no gradient"


def test_ccl_each_term_reaches_only_its_two_layers():
    m, r = _pair(CCLAutoencoder, seed=4, small_init=0.5)
    x = _batch(seed=5)
    L = len(m.blocks)
    total = {k: np.zeros_like(v) for k, v in _params(m, r).items()}
    for l in range(L + 1):
        res = r.step(m, x, pairs=[l])
        grads = _grads_copy(res)
        reach = set()
        if l >= 1:
            reach |= {f"forward.{l - 1}.weight", f"forward.{l - 1}.bias"}
        if l < L:
            reach |= {f"feedback.{l}.weight", f"feedback.{l}.bias"}
        for name, g in grads.items():
            if name in reach:
                assert np.linalg.norm(g) > 0, f"pair {l} should reach {name}"
                num = numerical_gradient(DetachedLoss(m, r, x, pairs=[l]), _params(m, r)[name])
                assert grad_rel_error(g, num) < TOL
            else:
                assert np.all(g == 0), f"pair {l} must not reach {name}"
            total[name] += g
        assert set(res.terms) >= {f"pair/{l}"}
    full = _grads_copy(r.step(m, x))
    for name in full:
        assert grad_rel_error(full[name], total[name]) < 1e-12


def test_ccl_terms_add_up():
    m, r = _pair(CCLAutoencoder, seed=1, small_init=0.5)
    x = _batch()
    res = r.step(m, x)
    L = len(m.blocks)
    pairs = sum(float(res.terms[f"pair/{l}"]) for l in range(L + 1))
    assert float(res.loss) == pytest.approx(pairs, rel=1e-12)
    for l in range(1, L):
        assert float(res.terms[f"pair/{l}"]) == pytest.approx(
            float(res.terms[f"pair/{l}/c"]) + float(res.terms[f"pair/{l}/d"]), rel=1e-12)
    # the output pair is the reconstruction MSE times H
    assert float(res.terms[f"pair/{L}"]) == pytest.approx(8 * float(res.terms["recon_mse"]))
    assert float(res.terms["recon_mse"]) == pytest.approx(np.mean((m.forward(x) - x) ** 2))


# ---------------------------------------------------------------------------------------------
# BP gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("small_init", [1.0, 0.3])
def test_bp_gradients_match_finite_differences(small_init):
    m, r = _pair(BPAutoencoder, seed=2, small_init=small_init)
    x = _batch(seed=7)
    res = r.step(m, x)
    grads = _grads_copy(res)
    loss = lambda: np.mean((m.forward(x) - x) ** 2)  # noqa: E731
    assert float(res.loss) == pytest.approx(loss(), rel=1e-12)
    assert set(grads) == set(m.parameters()) and r.parameters() == {}
    for name, p in m.parameters().items():
        err = grad_rel_error(grads[name], numerical_gradient(loss, p))
        assert err < TOL, f"{name}: relative error {err:.2e}"


# ---------------------------------------------------------------------------------------------
# Training and the command line
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("rule", ["ccl-ae", "bp-ae"])
def test_reconstruction_error_falls_on_mnist(rule, tmp_path):
    t0 = time.perf_counter()
    m = run(TrainConfig(rule=rule, data="mnist", epochs=2, seed=0, limit_train=1024,
                        limit_test=256, out=str(tmp_path)), progress=False)
    elapsed = time.perf_counter() - t0
    h = m["history"]
    assert len(h) == 2
    assert h[-1]["terms"]["recon_mse"] < h[0]["terms"]["recon_mse"]
    # MNIST in [0, 1]: predicting the mean image gives ~0.067, all zeros ~0.11
    assert m["test_loss"] < 0.05, m["test_loss"]
    assert "test_accuracy" not in m and "val_accuracy" not in h[0]
    assert (tmp_path / "reconstructions.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "finished" and saved["test_loss"] == m["test_loss"]
    assert saved["config"]["rule"] == rule and saved["config"]["model"] == "autoencoder:16-32"
    assert {"train_loss", "val_loss", "train_seconds", "terms"} <= set(h[0])
    if rule == "ccl-ae":
        assert "pair/0" in h[0]["terms"] and "pair/4" in h[0]["terms"]
    print(f"{rule}: test mse {m['test_loss']:.4f} in {elapsed:.1f} s")


def test_settings_and_paper_preset():
    """The autoencoders' settings come from the presets table like every rule's."""
    c = resolve(TrainConfig(rule="ccl-ae"))
    assert (c.model, c.batch_size, c.lr_forward, c.lr_feedback, c.warmup, c.bias) == (
        "autoencoder:16-32", 64, 0.02, 0.02, 20, True)
    p = resolve(TrainConfig(rule="bp-ae", model="autoencoder", preset="paper"))
    assert p.model == "autoencoder:128-256-1024-2048" and p.activation == "relu"
    assert p.rule_options == {"small_init": 1e-3} and p.epochs == 50
    assert resolve(TrainConfig(rule="bp-ae", model="autoencoder:4-8")).model == "autoencoder:4-8"


def test_cli_runs_tiny(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--rule", "ccl-ae", "--epochs", "1", "--limit-train", "64",
                     "--limit-test", "16", "--model", "autoencoder:4-4", "--batch-size", "32",
                     "--scale-d", "0.5", "--out", str(out), "--quiet"])
    assert code == 0
    assert capsys.readouterr().out.startswith("test_loss ")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["rule_config"]["scale_d"] == 0.5 and saved["model"][0]["stride"] == 2
    assert saved["model"][-1]["upsample"] == 2
    assert (out / "metrics.json").exists() and (out / "reconstructions.png").exists()
