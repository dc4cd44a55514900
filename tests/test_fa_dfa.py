"""Feedback alignment and direct feedback alignment: exactness against BP when the feedback is
the forward weights, agreement with finite differences of each rule's local objective, and
(slow) learning on MNIST."""
from __future__ import annotations

import numpy as np
import pytest

from ccledu.losses import cross_entropy
from ccledu.models import build_model
from ccledu.rules import get_rule
from ccledu.rules.bp import BP
from ccledu.rules.dfa import DFA
from ccledu.rules.fa import FA
from ccledu.testing import grad_rel_error, numerical_gradient

MLP = "mlp:12-10-8-5"
CNN = "cnn:2x8x8-c3-c4-5"


def batch(model, n=6, seed=1):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, *model.input_shape))
    y = g.integers(0, model.num_classes, size=n)
    return x, y


def copy_grads(grads):
    return {k: v.copy() for k, v in grads.items()}


# ---------------------------------------------------------------------------------------------
# set-up: shapes, names, determinism
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MLP, CNN])
def test_fa_buffers_have_forward_shapes(spec):
    model = build_model(spec, dtype="float64")
    rule = FA().setup(model, seed=3)
    bufs = rule.buffers()
    assert sorted(bufs) == [f"fixed.{l}.weight" for l in range(1, len(model.blocks))]
    for l in range(1, len(model.blocks)):
        B, W = bufs[f"fixed.{l}.weight"], model.blocks[l].main.params["weight"]
        assert B.shape == W.shape and B.dtype == W.dtype
        assert not np.allclose(B, W)
    again = FA().setup(build_model(spec, dtype="float64"), seed=3).buffers()
    assert all(np.array_equal(bufs[k], again[k]) for k in bufs)
    other = FA().setup(build_model(spec, dtype="float64"), seed=4).buffers()
    assert not any(np.array_equal(bufs[k], other[k]) for k in bufs)


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_dfa_buffers_have_layer_by_class_shapes(spec):
    model = build_model(spec, dtype="float32")
    bufs = DFA().setup(model, seed=0).buffers()
    assert sorted(bufs) == [f"fixed.{l}.weight" for l in range(len(model.blocks) - 1)]
    for l in range(len(model.blocks) - 1):
        D = bufs[f"fixed.{l}.weight"]
        assert D.shape == (int(np.prod(model.shapes[l])), model.num_classes)
        assert D.dtype == np.float32


def test_rules_are_registered_and_never_train_their_matrices():
    for name, cls in [("fa", FA), ("dfa", DFA)]:
        rule = get_rule(name)
        assert isinstance(rule, cls) and rule.name == name
        model = build_model(MLP, dtype="float64")
        rule.setup(model, seed=0)
        assert rule.parameters() == {}
        assert set(rule.param_groups(model)) == {"forward"}
        before = copy_grads(rule.buffers())
        x, y = batch(model)
        res = rule.step(model, x, y)
        assert set(res.grads) == set(model.parameters())
        assert all(np.array_equal(before[k], v) for k, v in rule.buffers().items())
        assert isinstance(cls.defaults("mlp", "mnist"), dict)


def test_set_feedback_checks_names_and_shapes():
    model = build_model(MLP, dtype="float64")
    rule = FA().setup(model, 0)
    with pytest.raises(KeyError):
        rule.set_feedback({"fixed.0.weight": np.zeros((10, 12))})
    with pytest.raises(ValueError):
        rule.set_feedback({"fixed.1.weight": np.zeros((3, 3))})
    with pytest.raises(ValueError):
        FA(feedback_scale=0)


# ---------------------------------------------------------------------------------------------
# exactness: with the forward weights as feedback both rules are backprop
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [MLP, CNN])
def test_fa_with_forward_weights_is_backprop(spec):
    model = build_model(spec, dtype="float64", seed=2)
    x, y = batch(model)
    ref = copy_grads(BP().step(model, x, y).grads)
    rule = FA().setup(model, seed=0)
    plain = copy_grads(rule.step(model, x, y).grads)
    rule.set_feedback({f"fixed.{l}.weight": model.blocks[l].main.params["weight"].copy()
                       for l in range(1, len(model.blocks))})
    mine = rule.step(model, x, y).grads
    for name in ref:
        assert np.max(np.abs(mine[name] - ref[name])) <= 1e-12, name
    # with random feedback the hidden gradients differ, the classifier's does not
    top = f"forward.{len(model.blocks) - 1}.weight"
    assert np.max(np.abs(plain[top] - ref[top])) <= 1e-12
    assert np.max(np.abs(plain["forward.0.weight"] - ref["forward.0.weight"])) > 1e-6


def test_dfa_with_output_weights_is_backprop_for_one_hidden_layer():
    model = build_model("mlp:12-7-5", dtype="float64", seed=5)
    x, y = batch(model, n=9)
    ref = copy_grads(BP().step(model, x, y).grads)
    rule = DFA().setup(model, seed=0)
    rule.set_feedback({"fixed.0.weight": model.blocks[1].main.params["weight"].T.copy()})
    mine = rule.step(model, x, y).grads
    for name in ref:
        assert np.max(np.abs(mine[name] - ref[name])) <= 1e-12, name


# ---------------------------------------------------------------------------------------------
# finite differences of the local objective each rule implies
# ---------------------------------------------------------------------------------------------

def _record_main_inputs(model):
    """Wrap every block's main layer so that its backward records dy (= the error at z_l)."""
    seen = {}
    for l, b in enumerate(model.blocks):
        original = b.main.backward

        def wrapped(dy, *args, _l=l, _orig=original, **kw):
            seen[_l] = dy.copy()
            return _orig(dy, *args, **kw)
        b.main.backward = wrapped
    return seen


def _block_input(model, l):
    return model.x if l == 0 else model.blocks[l - 1].out


def _main_output(block, a_prev):
    """z_l: the block's layers up to and including the parametric one."""
    for layer in block.layers[:block._main_index + 1]:
        a_prev = layer.forward(a_prev)
    return a_prev


def _check_top_layer(model, rule_grads, x, y):
    top = len(model.blocks) - 1
    W = model.blocks[top].main.params["weight"]
    num = numerical_gradient(lambda: cross_entropy(model.forward(x), y, grad=False), W)
    assert grad_rel_error(rule_grads[f"forward.{top}.weight"], num) < 1e-6


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_fa_gradient_is_that_of_its_local_objective(spec):
    model = build_model(spec, dtype="float64", seed=7)
    x, y = batch(model, n=5)
    rule = FA().setup(model, seed=1)
    seen = _record_main_inputs(model)
    grads = copy_grads(rule.step(model, x, y).grads)
    acts = [_block_input(model, l).copy() for l in range(len(model.blocks))]
    L = len(model.blocks)
    for l in range(L - 1):
        block = model.blocks[l]
        W = block.main.params["weight"]
        delta = seen[l]                                       # δ̃_l, held fixed: sg(δ̃_l)
        f = lambda: np.sum(_main_output(block, acts[l]) * delta)   # ⟨sg(δ̃_l), z_l(W_l)⟩
        assert grad_rel_error(grads[f"forward.{l}.weight"], numerical_gradient(f, W)) < 1e-6, l

        # and δ̃_l itself is the error δ̃_{l+1} sent down through B_{l+1}, pool and σ':
        # δ̃_l = ∂/∂z_l ⟨sg(δ̃_{l+1}), ẑ_{l+1}(z_l)⟩ with B_{l+1} in place of W_{l+1}
        z = _main_output(block, acts[l]).copy()
        nxt = model.blocks[l + 1]
        W_next = nxt.main.params["weight"]
        saved = W_next.copy()
        W_next[...] = rule.buffers()[f"fixed.{l + 1}.weight"]

        def g():
            a = z
            for layer in block.layers[block._main_index + 1:]:
                a = layer.forward(a)
            return np.sum(_main_output(nxt, a) * seen[l + 1])
        num_delta = numerical_gradient(g, z)
        W_next[...] = saved
        assert grad_rel_error(delta, num_delta) < 1e-6, l
    model.forward(x)
    _check_top_layer(model, grads, x, y)


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_dfa_gradient_is_that_of_its_local_objective(spec):
    model = build_model(spec, dtype="float64", seed=8)
    x, y = batch(model, n=5)
    rule = DFA().setup(model, seed=2)
    grads = copy_grads(rule.step(model, x, y).grads)
    logits = model.forward(x)
    _, e = cross_entropy(logits, y)                          # e, held fixed
    acts = [_block_input(model, l).copy() for l in range(len(model.blocks))]
    for l in range(len(model.blocks) - 1):
        block = model.blocks[l]
        W = block.main.params["weight"]
        signal = (e @ rule.buffers()[f"fixed.{l}.weight"].T).reshape(len(x), *model.shapes[l])
        f = lambda: np.sum(block.forward(acts[l]) * signal)      # ⟨sg(e D_lᵀ), a_l(W_l)⟩
        assert grad_rel_error(grads[f"forward.{l}.weight"], numerical_gradient(f, W)) < 1e-6, l
    _check_top_layer(model, grads, x, y)


def test_dfa_hidden_gradient_matches_the_formula():
    """δ_l = (e D_lᵀ) ⊙ σ'(z_l), ∇W_l = δ_lᵀ a_{l-1}, written out for an MLP."""
    model = build_model(MLP, dtype="float64", seed=4)
    x, y = batch(model, n=7)
    rule = DFA().setup(model, seed=4)
    grads = rule.step(model, x, y).grads
    _, e = cross_entropy(model.forward(x), y)
    a_prev = x
    for l in range(len(model.blocks) - 1):
        W = model.blocks[l].main.params["weight"]
        z = a_prev @ W.T
        dsig = np.where(z > 0, 1.0, np.exp(z))               # ELU'
        delta = (e @ rule.buffers()[f"fixed.{l}.weight"].T) * dsig
        np.testing.assert_allclose(grads[f"forward.{l}.weight"], delta.T @ a_prev, rtol=1e-12,
                                   atol=1e-15)
        a_prev = model.blocks[l].out


# ---------------------------------------------------------------------------------------------
# diagnostics
# ---------------------------------------------------------------------------------------------

def test_diagnostics_report_alignment_angles():
    model = build_model(MLP, dtype="float64")
    x, y = batch(model, n=16)
    fa = FA().setup(model, 0)
    d = fa.diagnostics(model, x, y)
    L = len(model.blocks)
    assert set(d) == {f"align_bp/{l}" for l in range(L)} | {f"align_weights/{l}" for l in range(1, L)}
    assert all(isinstance(v, float) and 0.0 <= v <= 180.0 for v in d.values())
    assert d[f"align_bp/{L - 1}"] == pytest.approx(0.0, abs=1e-6)
    fa.set_feedback({f"fixed.{l}.weight": model.blocks[l].main.params["weight"].copy()
                     for l in range(1, L)})
    d = fa.diagnostics(model, x, y)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in d.values())

    dfa = DFA().setup(model, 0)
    d = dfa.diagnostics(model, x, y)
    assert set(d) == {f"align_bp/{l}" for l in range(L)}
    assert d[f"align_bp/{L - 1}"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# learning (slow): needs ccledu.train
# ---------------------------------------------------------------------------------------------

def _run(**kw):
    train = pytest.importorskip("ccledu.train")
    return train.run(train.TrainConfig(**kw), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_mlp_mnist_two_epochs(rule):
    metrics = _run(rule=rule, model="mlp", data="mnist", epochs=2, seed=0)
    print(f"{rule} MLP: {metrics['test_accuracy']:.4f}")
    assert metrics["test_accuracy"] >= 0.93


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_small_cnn_mnist_subset(rule):
    metrics = _run(rule=rule, model="cnn:1x28x28-c8-c16-10", data="mnist", epochs=2, seed=0,
                   limit_train=4000, limit_test=2000)
    print(f"{rule} CNN: {metrics['test_accuracy']:.4f}")
    assert metrics["test_accuracy"] > 0.85


@pytest.mark.slow
def test_fa_alignment_improves_during_training():
    train = pytest.importorskip("ccledu.train")
    config = train.TrainConfig(rule="fa", model="mlp:784-128-128-10", data="mnist", epochs=3,
                               seed=0, limit_train=6000, limit_test=2000, diagnostics=True)
    # the angles at initialisation, on the batch the trainer uses for its diagnostics
    resolved = train.resolve(config)
    model = build_model(resolved.model, data="mnist", seed=resolved.seed)
    rule = FA(**resolved.rule_options).setup(model, seed=resolved.seed)
    _, (x_val, y_val), _ = train.load_splits(resolved, model.input_shape)
    start = rule.diagnostics(model, x_val[:512], y_val[:512])
    history = train.run(config, progress=False)["history"]
    assert all("align_bp/0" in h and "align_weights/1" in h for h in history)
    for l in (0, 1):
        angles = [start[f"align_bp/{l}"]] + [h[f"align_bp/{l}"] for h in history]
        assert angles[-1] < angles[0] - 5.0, angles
        assert angles[-1] < 90.0, angles
        print(f"FA align_bp/{l} by epoch (0 = init): {[round(a, 1) for a in angles]}")
    assert history[-1]["align_weights/1"] < start["align_weights/1"]


def test_trainer_defaults_for_long_runs():
    """FA/DFA defaults carry a cosine over the paper's 100 epochs (DFA also weight decay): at a
    constant rate their training loss rises over a 100-epoch run (see fa.py / dfa.py)."""
    train = pytest.importorskip("ccledu.train")
    fa = train.resolve(train.TrainConfig(rule="fa", model="mlp", data="mnist"))
    assert (fa.batch_size, fa.lr_forward, fa.momentum_forward, fa.centralize, fa.cosine_tmax,
            fa.eta_min, fa.weight_decay_forward) == (32, 0.03, 0.9, True, 100, 1e-3, 0.0)
    dfa = train.resolve(train.TrainConfig(rule="dfa", model="mlp", data="fashion-mnist"))
    assert (dfa.batch_size, dfa.lr_forward, dfa.momentum_forward, dfa.weight_decay_forward,
            dfa.cosine_tmax) == (128, 0.2, 0.5, 1e-4, 100)
    short = train.resolve(train.TrainConfig(rule="dfa", cosine_tmax=0, weight_decay_forward=0.0))
    assert short.cosine_tmax == 0 and short.weight_decay_forward == 0.0   # explicit settings win
