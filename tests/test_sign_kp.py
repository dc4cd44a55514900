"""Sign-symmetric feedback (uSF/brSF/frSF) and Kolen–Pollack (ccledu/rules/sign_symmetry.py,
kolen_pollack.py)."""
import math

import numpy as np
import pytest

from ccledu.models import cnn, mlp
from ccledu.optim import Optimizer, ParamGroup
from ccledu.rules import get_rule
from ccledu.testing import grad_rel_error


def _setup(rule_name, sizes=(9, 8, 7, 4), N=6, seed=0, **opts):
    model = mlp(list(sizes), activation="tanh", seed=seed, dtype="float64")
    rule = get_rule(rule_name, **opts).setup(model, seed=seed)
    g = np.random.default_rng(seed + 1)
    return model, rule, g.standard_normal((N, sizes[0])), g.integers(0, sizes[-1], N)


def test_usf_feedback_is_scaled_sign_of_current_weights():
    model, rule, x, y = _setup("sign", variant="usf")
    B = rule.feedback_weights(model)
    for l in range(1, len(model.blocks)):
        W = model.blocks[l].main.params["weight"]
        np.testing.assert_array_equal(B[l], np.sign(W) / math.sqrt(3 * W.shape[1]))


def test_frsf_with_magnitudes_of_w_is_backprop():
    model, rule, x, y = _setup("sign", variant="frsf")
    rule.set_feedback({f"fixed.{l}.weight": np.abs(model.blocks[l].main.params["weight"])
                       for l in range(1, len(model.blocks))})
    mine = {k: v.copy() for k, v in rule.step(model, x, y).grads.items()}
    bp = get_rule("bp").step(model, x, y).grads
    for k in bp:
        assert grad_rel_error(mine[k], bp[k]) < 1e-13


def test_brsf_signs_agree_and_its_mean_update_is_usf_at_half_the_bound():
    """B = |M| ⊙ sign(W), M ~ U(−b, b) fresh each step, b = 1/√fan_in. The update is multilinear
    in the B's of different layers (independent draws), so its mean is the uSF update with
    scale E|M| = b/2."""
    model, rule, x, y = _setup("sign", variant="brsf")
    for l, B in enumerate(rule.feedback_weights(model)[1:], start=1):
        W = model.blocks[l].main.params["weight"]
        assert np.all(np.sign(B) == np.sign(W)) and np.all(np.abs(B) <= 1 / math.sqrt(W.shape[1]))
    K = 3000
    mean = None
    for _ in range(K):
        g = rule.step(model, x, y).grads
        mean = {k: v.copy() for k, v in g.items()} if mean is None else {k: mean[k] + g[k] for k in g}
    mean = {k: v / K for k, v in mean.items()}
    half = [None] + [np.sign(model.blocks[l].main.params["weight"]) * 0.5 / math.sqrt(
        model.blocks[l].main.params["weight"].shape[1]) for l in range(1, len(model.blocks))]
    from ccledu.losses import cross_entropy
    logits = model.forward(x)
    model.backward(cross_entropy(logits, y)[1], weights=half)
    ref = model.gradients()
    assert grad_rel_error(mean["forward.0.weight"], ref["forward.0.weight"]) < 0.03
    assert grad_rel_error(mean["forward.1.weight"], ref["forward.1.weight"]) < 0.03


def test_sign_symmetry_runs_on_a_cnn_and_rejects_unknown_variants():
    model = cnn((1, 8, 8), (3, 4), 5, activation="tanh", dtype="float64")
    rule = get_rule("sign", variant="frsf").setup(model, seed=0)
    res = rule.step(model, np.random.default_rng(0).standard_normal((2, 1, 8, 8)), np.array([1, 3]))
    assert res.grads["forward.0.weight"].shape == (3, 1, 3, 3)
    with pytest.raises(ValueError, match="variant"):
        get_rule("sign", variant="xsf")


def test_kp_feedback_gets_the_forward_update():
    model, rule, x, y = _setup("kp")
    res = rule.step(model, x, y)
    for l in range(1, len(model.blocks)):
        np.testing.assert_array_equal(res.grads[f"feedback.{l}.weight"], res.grads[f"forward.{l}.weight"])
    fa = get_rule("fa").setup(model, seed=0)
    fa.set_feedback({f"fixed.{l}.weight": rule.B[f"feedback.{l}.weight"] for l in range(1, len(model.blocks))})
    ref = fa.step(model, x, y).grads
    for k, v in ref.items():
        assert grad_rel_error(res.grads[k], v) < 1e-13


def test_kp_difference_decays_geometrically_and_feedback_aligns_with_w():
    """Plain SGD, equal η and λ on both groups: B − W ← (1 − ηλ)(B − W) exactly, while W keeps
    learning; the angle between B and W falls from ≈ 90° to a few degrees."""
    from ccledu.metrics import angle
    model, rule, _, _ = _setup("kp", sizes=(10, 16, 16, 4))
    eta, lam = 0.2, 0.05
    opt = Optimizer([ParamGroup(name, params, lr=eta, momentum=0.0, weight_decay=lam, clip=0.0)
                     for name, params in rule.param_groups(model).items()])
    g = np.random.default_rng(2)
    rng_teacher = g.standard_normal((10, 4))
    D0 = {l: rule.B[f"feedback.{l}.weight"] - model.blocks[l].main.params["weight"] for l in (1, 2)}
    a0 = angle(model.blocks[1].main.params["weight"], rule.B["feedback.1.weight"])
    steps = 300
    for _ in range(steps):
        x = g.standard_normal((32, 10))
        opt.step(rule.step(model, x, (x @ rng_teacher).argmax(axis=1)).grads)
    for l in (1, 2):
        D = rule.B[f"feedback.{l}.weight"] - model.blocks[l].main.params["weight"]
        np.testing.assert_allclose(D, (1 - eta * lam) ** steps * D0[l], rtol=1e-8, atol=1e-14)
    a1 = angle(model.blocks[1].main.params["weight"], rule.B["feedback.1.weight"])
    assert a0 > 60 and a1 < 5, (a0, a1)


def test_kp_defaults_keep_the_two_groups_identical():
    from ccledu.train import TrainConfig, resolve
    c = resolve(TrainConfig(rule="kp"))
    assert c.lr_feedback == c.lr_forward and c.momentum_feedback == c.momentum_forward
    assert c.weight_decay_feedback == c.weight_decay_forward > 0
    assert c.clip_forward == 0 and c.clip_feedback == 0


@pytest.mark.parametrize("name,opts", [("sign", {"variant": "usf"}), ("sign", {"variant": "brsf"}),
                                       ("sign", {"variant": "frsf"}), ("kp", {})])
def test_sign_and_kp_learn_mnist_subset(name, opts):
    from ccledu.train import run
    m = run(dict(rule=name, model="mlp:784-128-128-10", data="mnist", epochs=1, seed=0,
                 limit_train=3000, limit_test=1000, rule_options=opts), progress=False)
    assert m["test_accuracy"] > 0.75, m["test_accuracy"]
