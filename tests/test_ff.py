"""ccledu.rules.ff: local gradients against finite differences, detachment between blocks,
negative labels, reproducibility, and (slow) learning on MNIST."""
import dataclasses
import time

import numpy as np
import pytest

from ccledu.models import build_model
from ccledu.rules import get_rule
from ccledu.rules.ff import FF, length_normalise, softplus
from ccledu.testing import grad_rel_error, numerical_gradient

MLP_SPEC = "mlp:12-7-6-10"
CNN_SPEC = "cnn:2x4x10-c3-c2-10"      # W = 10 ≥ C so the label fits in row 0


def _setup(spec, activation="relu", seed=0, n=6, **options):
    model = build_model(spec, activation=activation, seed=seed, dtype="float64")
    rule = FF(**options).setup(model, seed=seed)
    r = np.random.default_rng(seed + 100)
    x = r.normal(size=(n,) + model.input_shape)
    y = r.integers(0, model.num_classes, size=n)
    return model, rule, x, y


def _boost(model, factor=3.0):
    """Scale the weights so goodness lands on both sides of θ (gradients not saturated/tiny)."""
    for p in model.parameters().values():
        p *= factor


CASES = [
    (MLP_SPEC, "relu", {}),
    (MLP_SPEC, "tanh", {"goodness": "mean", "theta": 0.5}),
    (CNN_SPEC, "elu", {}),
    (CNN_SPEC, "relu", {"goodness": "mean", "theta": 0.3, "label_value": 1.5}),
    (MLP_SPEC, "relu", {"loss": "margin", "alpha": 2.0}),
    (CNN_SPEC, "elu", {"loss": "margin", "goodness": "mean"}),
]


@pytest.mark.parametrize("spec,activation,options", CASES)
def test_every_block_gradient_matches_finite_differences_of_its_own_loss(spec, activation, options):
    model, rule, x, y = _setup(spec, activation, **options)
    _boost(model)
    y_neg = rule.draw_negatives(y, model.num_classes)
    res = rule.local_step(model, x, y, y_neg)
    grads = {k: v.copy() for k, v in res.grads.items()}
    for l, block in enumerate(model.blocks):
        W = block.main.params["weight"]

        def own_loss():
            return rule.layer_losses(model, x, y, y_neg)[l]

        num = numerical_gradient(own_loss, W)
        assert np.linalg.norm(num) > 1e-6, "degenerate check: the loss does not depend on W"
        err = grad_rel_error(grads[f"forward.{l}.weight"], num)
        assert err < 1e-6, f"block {l}: relative error {err:.2e}"


@pytest.mark.parametrize("loss", ["threshold", "margin"])
@pytest.mark.parametrize("spec", [MLP_SPEC, CNN_SPEC])
def test_loss_terms_match_layer_losses(spec, loss):
    model, rule, x, y = _setup(spec, loss=loss)
    y_neg = rule.draw_negatives(y, model.num_classes)
    res = rule.local_step(model, x, y, y_neg)
    losses = rule.layer_losses(model, x, y, y_neg)
    for l in range(len(model.blocks) - 1):
        assert float(res.terms[f"ff/{l}"]) == pytest.approx(float(losses[l]), rel=1e-12)
    assert float(res.terms["head_ce"]) == pytest.approx(float(losses[-1]), rel=1e-12)
    assert float(res.loss) == pytest.approx(float(sum(losses)), rel=1e-12)


@pytest.mark.parametrize("spec", [MLP_SPEC, CNN_SPEC])
def test_no_gradient_crosses_blocks(spec):
    """With only block l's loss switched on, every other block's gradient is exactly zero —
    in particular the blocks *below* l, which backprop of L_l would reach."""
    model, rule, x, y = _setup(spec)
    _boost(model)
    y_neg = rule.draw_negatives(y, model.num_classes)
    L = len(model.blocks)
    for l in range(L):
        res = rule.local_step(model, x, y, y_neg, active=[l])
        for k in range(L):
            g = res.grads[f"forward.{k}.weight"]
            if k == l:
                assert np.abs(g).max() > 0
            else:
                assert np.all(g == 0), f"loss of block {l} leaked a gradient into block {k}"


def test_detachment_is_not_vacuous():
    """The upper loss does depend on the lower weights through the forward pass; the rule's
    gradient ignores that dependence (finite differences of L_1 w.r.t. W_0 are not zero)."""
    model, rule, x, y = _setup(MLP_SPEC)
    _boost(model)
    y_neg = rule.draw_negatives(y, model.num_classes)
    W0 = model.blocks[0].main.params["weight"]
    num = numerical_gradient(lambda: rule.layer_losses(model, x, y, y_neg)[1], W0)
    assert np.linalg.norm(num) > 1e-6
    res = rule.local_step(model, x, y, y_neg, active=[1])
    assert np.all(res.grads["forward.0.weight"] == 0)


def test_negative_labels_are_wrong_uniform_and_reproducible():
    model, rule, _, _ = _setup(MLP_SPEC)
    y = np.random.default_rng(1).integers(0, 10, size=20000)
    neg = rule.draw_negatives(y, 10)
    assert neg.dtype == np.int64 and neg.shape == y.shape
    assert np.all(neg != y)
    assert np.all((neg >= 0) & (neg < 10))
    # every wrong label appears, roughly uniformly (expected 2000 per class offset)
    counts = np.bincount((neg - y) % 10, minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 1700 and counts[1:].max() < 2300
    other = FF().setup(model, seed=0)
    np.testing.assert_array_equal(other.draw_negatives(y, 10), neg)
    third = FF().setup(model, seed=1)
    assert np.any(third.draw_negatives(y, 10) != neg)


def test_hard_negatives_follow_the_probabilities_and_are_never_true():
    model, rule, _, _ = _setup(MLP_SPEC)
    r = np.random.default_rng(3)
    y = r.integers(0, 10, size=5000)
    probs = r.dirichlet(np.ones(10), size=5000)
    probs[np.arange(5000), y] = 0.9            # most mass on the true label: must be skipped
    neg = rule.draw_negatives(y, 10, probs)
    assert np.all(neg != y) and np.all((neg >= 0) & (neg < 10))
    # all the wrong mass on one class -> always that class
    only = np.zeros((5000, 10))
    only[np.arange(5000), (y + 3) % 10] = 1.0
    only[np.arange(5000), y] = 1.0
    np.testing.assert_array_equal(rule.draw_negatives(y, 10, only), (y + 3) % 10)
    # no wrong mass at all -> uniform over the wrong labels
    true_only = np.eye(10)[y]
    neg = rule.draw_negatives(y, 10, true_only)
    assert np.all(neg != y) and len(np.unique(neg)) == 10
    # reproducible
    a = FF(negatives="hard").setup(model, seed=5)
    b = FF(negatives="hard").setup(model, seed=5)
    np.testing.assert_array_equal(a.draw_negatives(y, 10, probs), b.draw_negatives(y, 10, probs))


def test_hard_negative_step_is_reproducible():
    a_model, _, x, y = _setup(MLP_SPEC)
    b_model, _, _, _ = _setup(MLP_SPEC)
    a = FF(negatives="hard").setup(a_model, seed=2)
    b = FF(negatives="hard").setup(b_model, seed=2)
    for _ in range(2):
        ra, rb = a.step(a_model, x, y), b.step(b_model, x, y)
        for k in ra.grads:
            np.testing.assert_array_equal(ra.grads[k], rb.grads[k])


def test_same_seed_same_gradients():
    a_model, a_rule, x, y = _setup(CNN_SPEC)
    b_model, b_rule, _, _ = _setup(CNN_SPEC)
    for _ in range(2):
        ra = a_rule.step(a_model, x, y)
        rb = b_rule.step(b_model, x, y)
        for k in ra.grads:
            np.testing.assert_array_equal(ra.grads[k], rb.grads[k])
        assert float(ra.loss) == float(rb.loss)


def test_overlay_mlp_and_cnn():
    model, rule, x, y = _setup(MLP_SPEC)
    m = np.eye(10)[y]
    xo = rule.overlay(x, m)
    np.testing.assert_array_equal(xo[:, 10:], x[:, 10:])
    np.testing.assert_allclose(xo[:, :10], m * x.max(axis=1, keepdims=True))
    model, rule, x, y = _setup(CNN_SPEC, cnn_overlay="row")
    xo = rule.overlay(x, np.eye(10)[y])
    for k in range(x.shape[1]):
        np.testing.assert_allclose(xo[:, k, 0, :10], np.eye(10)[y] * x.reshape(len(x), -1).max(1)[:, None])
    np.testing.assert_array_equal(xo[:, :, 1:], x[:, :, 1:])
    fixed = FF(label_value=2.0, cnn_overlay="row").setup(model)
    assert np.all(fixed.overlay(x, np.eye(10)[y])[:, :, 0, :10].max(axis=-1) == 2.0)
    neutral = rule.neutral(x, 10)
    np.testing.assert_allclose(neutral[:, 0, 0, :10].sum(axis=1), x.reshape(len(x), -1).max(1))
    with pytest.raises(ValueError):
        rule.overlay(x[:, :, :, :5], np.eye(10)[y])
    # default for images: a class grating added over the whole image, on every channel
    grat = FF().setup(model)
    P = grat.gratings(10, 4, 10, x)
    assert P.shape == (10, 4, 10) and np.abs(P).max() <= 1.0
    xo = grat.overlay(x, np.eye(10)[y])
    v = x.reshape(len(x), -1).max(1)
    for k in range(x.shape[1]):
        np.testing.assert_allclose(xo[:, k] - x[:, k], 0.5 * v[:, None, None] * P[y])


def test_length_normalise_and_softplus():
    a = np.random.default_rng(0).normal(size=(3, 2, 4, 5))
    n = length_normalise(a)
    np.testing.assert_allclose(np.sqrt((n.reshape(3, -1) ** 2).sum(1)), 1.0, rtol=1e-7)
    t = np.array([-1000.0, -1.0, 0.0, 2.0, 1000.0])
    np.testing.assert_allclose(softplus(t), [0.0, np.log1p(np.exp(-1.0)), np.log(2), np.log1p(np.exp(2.0)), 1000.0])


def test_predict_evaluate_and_diagnostics():
    model, rule, x, y = _setup(MLP_SPEC, n=8)
    _boost(model)
    scores = rule.class_scores(model, x)
    G = rule.candidate_goodness(model, x)
    assert scores.shape == (8, 10)
    np.testing.assert_allclose(scores, G.sum(axis=0))
    # goodness of candidate c equals the goodness of the blocks run on the overlay of c
    hs = rule.run_hidden(model, rule.overlay(x, np.eye(10)[y]))
    for l, h in enumerate(hs):
        np.testing.assert_allclose(G[l, np.arange(8), y], (h ** 2).sum(axis=1))
    skip = FF(ff_layers="skip_first").setup(model)
    np.testing.assert_allclose(skip.class_scores(model, x), G[1:].sum(axis=0))
    soft = FF(predict="softmax").setup(model)
    np.testing.assert_allclose(soft.class_scores(model, x), rule.head_logits(model, x))
    # evaluate: the expected loss over negatives equals the average of the step loss over
    # every possible wrong label
    loss, correct = rule.evaluate(model, x, y)
    assert int(correct) == int((scores.argmax(1) == y).sum())
    per_offset = []
    for k in range(1, 10):
        per_offset.append(sum(float(v) for v in rule.layer_losses(model, x, y, (y + k) % 10)))
    assert float(loss) / 8 == pytest.approx(np.mean(per_offset), rel=1e-10)
    d = rule.diagnostics(model, x, y, chunk=3)
    for l in range(2):
        assert d[f"goodness_pos/{l}"] == pytest.approx(G[l, np.arange(8), y].mean())
        assert 0 <= d[f"layer_accuracy/{l}"] <= 1
    assert d["accuracy_goodness"] == pytest.approx(int(correct) / 8)


def test_margin_loss_evaluate_is_the_expected_step_loss():
    model, _, x, y = _setup(MLP_SPEC, n=8)
    _boost(model)
    rule = FF(loss="margin", alpha=1.5).setup(model)
    loss, _ = rule.evaluate(model, x, y)
    per_offset = [sum(float(v) for v in rule.layer_losses(model, x, y, (y + k) % 10))
                  for k in range(1, 10)]
    assert float(loss) / 8 == pytest.approx(np.mean(per_offset), rel=1e-10)
    # the margin loss of one block, by hand
    hs = rule.run_hidden(model, np.concatenate([rule.overlay(x, np.eye(10)[y]),
                                                rule.overlay(x, np.eye(10)[(y + 3) % 10])]))
    g = (hs[0] ** 2).sum(axis=1)
    by_hand = np.mean(np.log1p(np.exp(-1.5 * (g[:8] - g[8:]))))
    assert float(rule.layer_losses(model, x, y, (y + 3) % 10)[0]) == pytest.approx(by_hand, rel=1e-12)
    with pytest.raises(ValueError):
        FF(loss="hinge")


def test_registry_options_presets_and_config():
    rule = get_rule("ff", theta=3.0, goodness="mean")
    assert isinstance(rule, FF) and rule.theta == 3.0
    for name, (typ, default, help_, *rng) in FF.OPTIONS.items():
        assert isinstance(default, typ) and help_
        if rng:                                   # a Range accepts the default
            assert rng[0].check(default, name) == default
    cfg = rule.config()
    assert cfg["rule"] == "ff" and cfg["goodness"] == "mean" and cfg["theta"] == 3.0
    assert cfg["loss_form"] == "threshold" and "grating" in cfg["overlay"]
    assert "row 0" in FF(cnn_overlay="row").config()["overlay"]
    d = FF.defaults("mlp", "mnist")
    assert {"batch_size", "lr_forward", "momentum_forward"} <= set(d)
    assert set(FF.PRESETS) >= {"cpu", "paper"}
    assert FF.PRESETS["cpu"]["model"] == "mlp:784-500-500-10"
    assert FF.PRESETS["paper"]["model"] == "mlp:784-2000-2000-2000-2000-10"
    with pytest.raises(ValueError):
        FF(goodness="max")
    with pytest.raises(ValueError):
        FF(predict="vote")
    with pytest.raises(ValueError):
        FF(negatives="random")


def test_trainer_resolves_the_presets():
    train = pytest.importorskip("ccledu.train")
    # the CPU default: a plain --model mlp on MNIST gets the whole "cpu" preset
    plain = train.resolve(train.TrainConfig(rule="ff", model="mlp", data="mnist"))
    cpu = train.resolve(train.TrainConfig(rule="ff", model="mlp", data="mnist", preset="cpu"))
    assert plain == dataclasses.replace(cpu, preset=None)
    assert plain.model == "mlp:784-500-500-10" and plain.rule_options["loss"] == "margin"
    assert plain.epochs == FF.PRESETS["cpu"]["epochs"] and plain.optimizer == "sgd"
    # an explicit spec, an explicit setting and other models keep theirs
    own = train.resolve(train.TrainConfig(rule="ff", model="mlp:784-100-10", data="mnist",
                                          epochs=2, optimizer="adam"))
    assert own.model == "mlp:784-100-10" and own.epochs == 2 and own.optimizer == "adam"
    # a plain --model cnn on MNIST gets the whole "cnn" preset; on CIFAR only the general defaults
    cnn = train.resolve(train.TrainConfig(rule="ff", model="cnn", data="mnist"))
    assert cnn.model == FF.PRESETS["cnn"]["model"] == "cnn:1x28x28-c16-c32-c64-10"
    assert cnn.optimizer == "adam" and cnn.rule_options["ff_layers"] == "skip_first"
    assert cnn.rule_options["loss"] == "margin" and cnn.activation == "relu"
    cifar = train.resolve(train.TrainConfig(rule="ff", model="cnn", data="cifar10"))
    assert cifar.model == "cnn" and cifar.activation == "relu" and cifar.rule_options == {}
    bp = train.resolve(train.TrainConfig(rule="bp", model="mlp", data="mnist"))
    assert bp.model == "mlp" and bp.optimizer == "sgd"
    cfg = train.resolve(train.TrainConfig(rule="ff", preset="cpu", model="mlp"))
    assert cfg.model == "mlp:784-500-500-10" and cfg.activation == "relu"
    assert cfg.clip_forward == 0.0 and cfg.diagnostics
    assert cfg.rule_options["goodness"] == "sum"
    cfg = train.resolve(train.TrainConfig(rule="ff", preset="paper", model="mlp"))
    assert cfg.rule_options["loss"] == "threshold" and cfg.rule_options["theta"] == 2.0
    assert cfg.model == "mlp:784-2000-2000-2000-2000-10" and cfg.epochs == 60
    assert cfg.rule_options["ff_layers"] == "skip_first"


# --------------------------------------------------------------------------------------------
# Learning on MNIST (slow)
# --------------------------------------------------------------------------------------------

def _mnist_run(spec, flatten, n_train, epochs, lr, batch, seed=0, n_eval=2000, optimizer="sgd",
               **rule_options):
    from ccledu.data import batches, load_dataset, prepare
    from ccledu.optim import Optimizer, ParamGroup
    sp = prepare(load_dataset("mnist"), flatten=flatten, limit=n_train, seed=seed)
    (xtr, ytr), (xte, yte) = sp.train, sp.test
    model = build_model(spec, activation="relu", seed=seed)
    rule = FF(**rule_options).setup(model, seed=seed)
    opt = Optimizer([ParamGroup("forward", model.parameters(), lr=lr, optimizer=optimizer,
                                momentum=0.9 if optimizer == "sgd" else 0.0)])
    g = np.random.default_rng(seed)
    for _ in range(epochs):
        for xb, yb in batches(xtr, ytr, batch, rng=g):
            opt.step(rule.step(model, xb, yb).grads)
    xte, yte = xte[:n_eval], yte[:n_eval]
    acc = float((rule.class_scores(model, xte).argmax(1) == yte).mean())
    soft = float((FF(predict="softmax", **{k: v for k, v in rule_options.items() if k != "predict"})
                  .class_scores(model, xte).argmax(1) == yte).mean())
    return acc, soft


@pytest.mark.slow
def test_learns_mnist_mlp():
    t = time.time()
    acc, soft = _mnist_run("mlp:784-500-500-10", True, 5000, 3, lr=1.0, batch=100)
    print(f"FF MLP, 5000 MNIST examples, 3 epochs: goodness {acc:.3f}, softmax {soft:.3f}, "
          f"{time.time() - t:.1f} s")
    assert acc > 0.75


@pytest.mark.slow
def test_learns_mnist_cnn():
    t = time.time()
    # the "cnn" preset's recipe (Adam, margin loss, blocks 1-2 counted) on a small subset; the
    # full preset run is in docs/ff.md. Chance is 0.10 (standard error on 500 images 0.013).
    p = FF.PRESETS["cnn"]
    acc, soft = _mnist_run(p["model"], False, 3000, 3, lr=p["lr_forward"], batch=p["batch_size"],
                           n_eval=500, optimizer="adam", **p["rule_options"])
    print(f"FF CNN, 3000 MNIST examples, 3 epochs: goodness {acc:.3f}, softmax {soft:.3f}, "
          f"{time.time() - t:.1f} s")
    assert acc > 0.35
