"""Counter-current learning (ccledu.rules.ccl).

Fast tests (float64):
* every gradient equals central finite differences of the documented loss, with the detaches
  built in: the reference recomputes each block from its *frozen* input, so perturbing W_l (or
  V_l) changes only that block's output, exactly the path the rule differentiates;
* each loss term reaches only the weights it should;
* the helpers' gradients (row normalisation, Gram and matching terms) against finite differences;
* when PyTorch is installed: gradients equal autograd on the public code's formulation.
Slow tests: MNIST learning with the MLP and a small CNN.
"""
import math
import time

import numpy as np
import pytest

from ccledu.models import build_model
from ccledu.rules import get_rule
from ccledu.rules.base import Rule
from ccledu.rules.ccl import (CCL, NORM_EPS, flood_mask, gram_loss, match_loss, normalize_rows,
                              normalize_rows_backward)
from ccledu.testing import grad_rel_error, numerical_gradient

MLP = "mlp:10-8-7-4"
CNN = "cnn:2x8x8-c3-c4-4"
N = 8
FD_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------------

def _batch(model, seed=1, scale=1.0):
    g = np.random.default_rng(seed)
    x = scale * g.normal(size=(N,) + model.input_shape)
    y = np.arange(N) % model.num_classes
    return x, y


def _make(spec, seed=0, data_scale=1.0, **options):
    model = build_model(spec, seed=seed, dtype="float64")
    x, y = _batch(model, scale=data_scale)
    rule = CCL(**options).setup(model, seed=seed)
    return model, rule, x, y


def _flood_between(model, x, y):
    """A flooding threshold that masks about half of the batch (and never sits on a sample)."""
    z = model.forward(x)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pt = np.sort(p[np.arange(len(y)), y])
    k = len(pt) // 2
    return 1.0 - (pt[k - 1] + pt[k]) / 2


def _copy_grads(res):
    return {k: np.array(v, copy=True) for k, v in res.grads.items()}


# --------------------------------------------------------------------------------------------
# The reference: the documented loss, written independently, with every input frozen
# --------------------------------------------------------------------------------------------

def _frozen_inputs(model, rule, x):
    """Inputs of every forward block (x, a_1..a_{L-1}) and every feedback block (s_1..s_L) at the
    current weights: the constants that sg(·) makes of them."""
    model.forward(x)
    signals = rule.feedback_forward()
    a_in = [x.copy()] + [b.out.copy() for b in model.blocks[:-1]]
    s_in = [s.copy() for s in signals[1:]]
    return a_in, s_in


def reference_loss(model, rule, y, a_in, s_in, mask):
    """CE + Σ_l pair_l, each block recomputed from its frozen input (so ∂/∂W_l and ∂/∂V_l see
    only the direct path), the flooding mask held fixed."""
    L = len(model.blocks)
    outs = [model.blocks[k].forward(a_in[k]) for k in range(L)]            # a_1 .. a_L
    sigs = [rule.feedback[l].forward(s_in[l]) for l in range(L)]          # s_0 .. s_{L-1}
    logits = outs[-1]
    n, C = logits.shape
    zs = logits - logits.max(1, keepdims=True)
    logp = zs - np.log(np.exp(zs).sum(1, keepdims=True))
    total = -logp[np.arange(n), y].mean()
    Y = np.eye(C)[y]
    A_all = [a_in[0]] + outs[:-1]
    for l in range(L):
        A = A_all[l].reshape(n, -1) * mask[:, None]
        S = sigs[l].reshape(C, -1)
        if rule.form == "mlp":
            total += rule.scale * np.mean((A @ S.T - Y) ** 2) * 256 / A.shape[1]
        else:
            An = A / (np.linalg.norm(A, axis=1, keepdims=True) + 1e-8)
            Sn = S / (np.linalg.norm(S, axis=1, keepdims=True) + 1e-8)
            total += rule.scale * np.mean((An @ Sn.T - Y) ** 2)
            total += rule.ssl_scale * np.mean((An @ An.T - np.eye(n)) ** 2)
            total += rule.ssl_scale * np.mean((Sn @ Sn.T - np.eye(C)) ** 2)
    return total


CASES = [
    pytest.param(MLP, {}, id="mlp"),
    pytest.param(MLP, {"flood": "half"}, id="mlp-flood"),
    pytest.param(CNN, {}, id="cnn"),
    pytest.param(CNN, {"flood": "half"}, id="cnn-flood"),
    pytest.param(MLP, {"form": "cnn"}, id="mlp-model-cnn-form"),
    pytest.param(CNN, {"form": "mlp", "feedback_activation": "tanh"}, id="cnn-model-mlp-form-tanh"),
]


@pytest.mark.parametrize("spec,options", CASES)
def test_every_gradient_matches_finite_differences(spec, options):
    options = dict(options)
    model = build_model(spec, seed=0, dtype="float64")
    x, y = _batch(model)
    if options.get("flood") == "half":
        options["flood"] = _flood_between(model, x, y)
    rule = CCL(**options).setup(model, seed=0)
    res = rule.step(model, x, y)
    grads = _copy_grads(res)
    mask = np.ones(N) if rule.mask is None else rule.mask.copy()
    if "flood" in options:
        assert 0 < mask.sum() < N, "the test batch must have flooded and kept samples"
    a_in, s_in = _frozen_inputs(model, rule, x)

    def f():
        return reference_loss(model, rule, y, a_in, s_in, mask)

    assert abs(f() - float(res.loss)) < 1e-12 * max(1.0, abs(f()))
    params = dict(model.parameters())
    params.update(rule.parameters())
    assert set(params) == set(grads)
    for name, p in params.items():
        num = numerical_gradient(f, p, h=1e-6)
        err = grad_rel_error(grads[name], num)
        assert err < FD_TOL, f"{spec} {options}: {name} relative error {err:.2e}"
        assert np.linalg.norm(num) > 0, f"{name}: the reference gradient is zero (vacuous test)"


def _reached(name, L):
    """Parameters a loss term may reach (with detach): see the module docstring of ccl.py."""
    if name == "ce":
        return {f"forward.{L - 1}.weight"}
    parts = name.split("/")
    l = int(parts[1])
    fwd = {f"forward.{l - 1}.weight"} if l > 0 else set()
    fb = {f"feedback.{l}.weight"}
    kind = parts[2] if len(parts) == 3 else "all"
    return {"all": fwd | fb, "cross": fwd | fb, "ssl_a": fwd, "ssl_s": fb}[kind]


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_each_term_reaches_only_its_weights(spec):
    model, rule, x, y = _make(spec)
    L = len(model.blocks)
    full = _copy_grads(rule.step(model, x, y))
    leaves = [t for t in rule.term_names(L)
              if rule.form == "mlp" or t == "ce" or t.count("/") == 2]
    summed = {k: np.zeros_like(v) for k, v in full.items()}
    for term in rule.term_names(L):
        g = _copy_grads(rule.step(model, x, y, only=[term]))
        expected = _reached(term, L)
        for name, v in g.items():
            if name in expected:
                assert np.linalg.norm(v) > 0, f"{term} should reach {name}"
            else:
                assert np.all(v == 0), f"{term} must not reach {name}"
        if term in leaves:
            for k in summed:
                summed[k] += g[k]
    for k in full:                         # the gradient is the sum of the terms' gradients
        assert grad_rel_error(summed[k], full[k]) < 1e-12, k


def test_pair_zero_trains_only_the_lowest_feedback_map():
    model, rule, x, y = _make(MLP)
    g = rule.step(model, x, y, only="pair/0").grads
    assert [k for k, v in g.items() if np.any(v != 0)] == ["feedback.0.weight"]


def test_terms_add_up_to_the_loss():
    for spec in (MLP, CNN):
        model, rule, x, y = _make(spec)
        res = rule.step(model, x, y)
        L = len(model.blocks)
        total = float(res.terms["ce"]) + sum(float(res.terms[f"pair/{l}"]) for l in range(L))
        assert math.isclose(total, float(res.loss), rel_tol=1e-14)
        assert set(res.terms) == set(rule.term_names(L))
        if rule.form == "cnn":
            for l in range(L):
                parts = sum(float(res.terms[f"pair/{l}/{k}"]) for k in ("cross", "ssl_a", "ssl_s"))
                assert math.isclose(parts, float(res.terms[f"pair/{l}"]), rel_tol=1e-14)


def test_unknown_term_is_refused():
    model, rule, x, y = _make(MLP)
    with pytest.raises(ValueError, match="unknown loss terms"):
        rule.step(model, x, y, only=["pair/9"])


# --------------------------------------------------------------------------------------------
# Flooding
# --------------------------------------------------------------------------------------------

def test_flood_mask_threshold_is_strict():
    z = np.log(np.array([[0.9, 0.1], [0.95, 0.05], [0.5, 0.5]]))
    y = np.array([0, 0, 1])
    # |p − 1| < 0.1 masks: p = 0.95 only (p = 0.9 sits on the threshold up to rounding)
    m = flood_mask(z, y, 0.1)
    assert m[1] == 0 and m[2] == 1
    assert np.array_equal(flood_mask(z, y, 0.2), [0, 0, 1])


@pytest.mark.parametrize("spec", [MLP, CNN])
def test_full_flooding_silences_every_hidden_forward_weight(spec):
    # flood = 1 masks every sample (|p − 1| < 1 for any p > 0): every A is zero, so no W_l
    # below the classifier learns. V keeps a gradient only in the cnn form (from ssl_s);
    # in the mlp form ∂/∂S = Gᵀ A vanishes with A.
    model, rule, x, y = _make(spec, flood=1.0)
    res = rule.step(model, x, y)
    assert np.all(rule.mask == 0)
    L = len(model.blocks)
    for l in range(L - 1):
        assert np.all(res.grads[f"forward.{l}.weight"] == 0)
    assert np.linalg.norm(res.grads[f"forward.{L - 1}.weight"]) > 0
    for l in range(L):
        norm = np.linalg.norm(res.grads[f"feedback.{l}.weight"])
        assert norm > 0 if rule.form == "cnn" else norm == 0


def test_flooding_changes_the_loss_only_through_the_masked_rows():
    model = build_model(CNN, seed=0, dtype="float64")
    x, y = _batch(model)
    flood = _flood_between(model, x, y)
    on = CCL(flood=flood).setup(model, seed=0)
    res_on = on.step(model, x, y)
    kept = on.mask.astype(bool)
    off = CCL().setup(model, seed=0)
    res_off = off.step(model, x[kept], y[kept])
    # the cross term is a mean over N·C entries; masked rows add (0 − Y)² = 1 each
    n_kept, C = kept.sum(), model.num_classes
    expected = (float(res_off.terms["pair/1/cross"]) * n_kept * C + (N - n_kept)) / (N * C)
    assert math.isclose(float(res_on.terms["pair/1/cross"]), expected, rel_tol=1e-12)


# --------------------------------------------------------------------------------------------
# The helpers
# --------------------------------------------------------------------------------------------

def test_normalize_rows_backward_matches_finite_differences():
    g = np.random.default_rng(3)
    X = g.normal(size=(5, 7)) * np.array([[1e-3], [1], [10], [0.1], [3]])
    dU = g.normal(size=(5, 7))

    def f():
        U, _ = normalize_rows(X)
        return np.sum(U * dU)

    U, r = normalize_rows(X)
    num = numerical_gradient(f, X, h=1e-7)
    assert grad_rel_error(normalize_rows_backward(dU, U, r), num) < 1e-7
    # a zero row: u = 0 and the gradient is g/ε (the x xᵀ term vanishes), no NaN
    Z = np.zeros((1, 3))
    Uz, rz = normalize_rows(Z)
    d = normalize_rows_backward(np.ones((1, 3)), Uz, rz)
    assert np.all(np.isfinite(d)) and np.allclose(d, 1 / NORM_EPS)


def test_match_and_gram_losses_against_finite_differences():
    g = np.random.default_rng(4)
    A, S, X = g.normal(size=(6, 5)), g.normal(size=(3, 5)), g.normal(size=(4, 5))
    Y = np.eye(3)[g.integers(0, 3, 6)]
    _, dA, dS = match_loss(A, S, Y, 0.7)
    assert grad_rel_error(dA, numerical_gradient(lambda: match_loss(A, S, Y, 0.7)[0], A)) < 1e-8
    assert grad_rel_error(dS, numerical_gradient(lambda: match_loss(A, S, Y, 0.7)[0], S)) < 1e-8
    _, dX = gram_loss(X, 0.3)
    assert grad_rel_error(dX, numerical_gradient(lambda: gram_loss(X, 0.3)[0], X)) < 1e-8


# --------------------------------------------------------------------------------------------
# Against the public code's formulation, with PyTorch autograd
# --------------------------------------------------------------------------------------------

def _torch_reference(model, rule, x, y, flood):
    """The public code's objective, written with torch ops (detach on every layer input),
    differentiated by autograd. Returns (loss, grads by ccledu name)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float64)  # noqa: E731
    W = {k: t(v).requires_grad_() for k, v in model.parameters().items()}
    V = {k: t(v).requires_grad_() for k, v in rule.parameters().items()}
    L = len(model.blocks)
    X, target = t(x), torch.tensor(y)
    C = model.num_classes
    act = F.elu if rule.feedback_activation == "elu" else torch.tanh
    # forward net
    acts, a = [X], X
    for k in range(L):
        w = W[f"forward.{k}.weight"]
        if w.dim() == 4:
            a = F.max_pool2d(act(F.conv2d(a.detach(), w, padding=w.shape[-1] // 2)), 2)
        else:
            z = a.detach().reshape(len(a), -1) @ w.T
            a = z if k == L - 1 else act(z)
        acts.append(a)
    # feedback net, from the C one-hots
    sigs, s = [None] * (L + 1), torch.eye(C, dtype=torch.float64)
    sigs[L] = s
    for l in range(L - 1, -1, -1):
        v = V[f"feedback.{l}.weight"]
        if v.dim() == 4:
            s = F.conv2d(F.interpolate(s.detach(), scale_factor=2, mode="nearest"), v,
                         padding=v.shape[-1] // 2)
        else:
            s = s.detach() @ v.T
        if l > 0:
            s = act(s)
        if v.dim() == 2 and l > 0 and len(acts[l].shape) == 4:
            s = s.reshape((C,) + tuple(acts[l].shape[1:]))
        sigs[l] = s
    logits = acts[-1]
    loss = F.cross_entropy(logits, target)
    with torch.no_grad():
        onehot = F.one_hot(target, C).double()
        mask = 1 - (((F.softmax(logits, 1) - onehot).abs() < flood).double() * onehot).sum(1) \
            if flood else torch.ones(len(y), dtype=torch.float64)
    Y = F.one_hot(target, C).double()
    for l in range(L):
        A = (acts[l] * mask.view((-1,) + (1,) * (acts[l].dim() - 1))).reshape(len(y), -1)
        S = sigs[l].reshape(C, -1)
        if rule.form == "mlp":
            loss = loss + F.mse_loss(A @ S.T, Y) / A.shape[1] * rule.scale * 256
        else:
            An = A / (torch.norm(A, dim=1, keepdim=True) + 1e-8)
            Sn = S / (torch.norm(S, dim=1, keepdim=True) + 1e-8)
            loss = loss + F.mse_loss(An @ Sn.T, Y) * rule.scale
            loss = loss + F.mse_loss(An @ An.T, torch.eye(len(y), dtype=torch.float64)) * rule.ssl_scale
            loss = loss + F.mse_loss(Sn @ Sn.T, torch.eye(C, dtype=torch.float64)) * rule.ssl_scale
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in {**W, **V}.items()}
    return float(loss.detach()), grads


@pytest.mark.parametrize("spec,flood", [(MLP, None), (MLP, "half"), (CNN, None), (CNN, "half")],
                         ids=["mlp", "mlp-flood", "cnn", "cnn-flood"])
def test_matches_pytorch_autograd_of_the_public_objective(spec, flood):
    pytest.importorskip("torch")
    model = build_model(spec, seed=0, dtype="float64")
    x, y = _batch(model)
    if flood == "half":
        flood = _flood_between(model, x, y)
    rule = CCL(flood=flood).setup(model, seed=0)
    res = rule.step(model, x, y)
    loss, ref = _torch_reference(model, rule, x, y, flood)
    assert math.isclose(float(res.loss), loss, rel_tol=1e-12)
    for name, g in ref.items():
        assert grad_rel_error(res.grads[name], g) < 1e-10, name


# --------------------------------------------------------------------------------------------
# Structure, options, configuration
# --------------------------------------------------------------------------------------------

def test_feedback_parameters_names_shapes_and_init():
    model, rule, _, _ = _make(CNN)
    p = rule.parameters()
    assert list(p) == ["feedback.0.weight", "feedback.1.weight", "feedback.2.weight"]
    assert p["feedback.0.weight"].shape == (2, 3, 3, 3)        # block 0 maps 2 -> 3 channels
    assert p["feedback.1.weight"].shape == (3, 4, 3, 3)
    assert p["feedback.2.weight"].shape == (16, 4)             # classes -> 4·2·2 features
    for w in p.values():                                       # PyTorch default init bound
        fan_in = int(np.prod(w.shape[1:]))
        assert np.abs(w).max() <= 1 / math.sqrt(fan_in)
    groups = rule.param_groups(model)
    assert set(groups) == {"forward", "feedback"} and groups["feedback"] is not None
    model2, rule2, _, _ = _make(MLP)
    assert [v.shape for v in rule2.parameters().values()] == [(10, 8), (8, 7), (7, 4)]
    for v, (name, w) in zip(rule2.parameters().values(), model2.parameters().items()):
        assert v.shape == w.T.shape, name                      # V_l has W_lᵀ's shape
    assert isinstance(get_rule("ccl"), Rule)


def test_same_seed_same_feedback_weights_and_float32_runs():
    a = _make(MLP, seed=5)[1].parameters()
    b = _make(MLP, seed=5)[1].parameters()
    c = _make(MLP, seed=6)[1].parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    model = build_model(CNN, seed=0, dtype="float32")
    rule = CCL(flood=0.1).setup(model, seed=0)
    x, y = _batch(model)
    res = rule.step(model, x.astype(np.float32), y)
    assert all(g.dtype == np.float32 for g in res.grads.values())
    assert res.loss.dtype == np.float32 and np.isfinite(float(res.loss))


def test_signals_are_class_prototypes_shaped_like_the_activations():
    model, rule, x, y = _make(CNN)
    rule.step(model, x, y)
    C = model.num_classes
    assert len(rule.signals) == len(model.blocks) + 1
    assert np.array_equal(rule.signals[-1], np.eye(C))
    shapes = [model.input_shape] + list(model.shapes[:-1])
    for s, shape in zip(rule.signals, shapes):
        assert s.shape == (C,) + tuple(shape)
    again = rule.feedback_forward()
    assert all(np.array_equal(u, v) for u, v in zip(again, rule.signals))


def test_config_resolves_and_rebuilds():
    model, rule, _, _ = _make(CNN, flood=0.1)
    cfg = rule.config()
    assert cfg == {"rule": "ccl", "form": "cnn", "scale": 1.0, "ssl_scale": 0.5, "flood": 0.1,
                   "feedback_activation": "elu"}
    again = CCL(**{k: v for k, v in cfg.items() if k != "rule"}).setup(model, seed=0)
    assert again.config() == cfg
    assert _make(MLP)[1].config()["scale"] == 0.5 and _make(MLP)[1].config()["form"] == "mlp"
    assert CCL(flood=0).flood is None                          # 0 = off, as in the public code
    for opt in ("form", "scale", "ssl_scale", "flood", "feedback_activation"):
        assert opt in CCL.OPTIONS and opt in cfg


def test_bad_options_and_shapes_are_refused():
    with pytest.raises(ValueError):
        CCL(form="rnn")
    with pytest.raises(ValueError):
        CCL(feedback_activation="swish")
    with pytest.raises(ValueError):
        CCL(flood=1.5)
    odd = build_model("cnn:1x12x12-c2-c2-c2-3", dtype="float64")   # 12 -> 6 -> 3 -> 1 (drops a row)
    with pytest.raises(ValueError, match="max-pool"):
        CCL().setup(odd)
    with pytest.raises(RuntimeError):
        model = build_model(MLP, dtype="float64")
        CCL().step(model, *_batch(model))


def test_defaults_reproduce_the_public_configs():
    mlp = CCL.defaults("mlp", "cifar10")
    assert mlp["batch_size"] == 256 and mlp["lr_forward"] == mlp["lr_feedback"] == 1.0
    assert mlp["clip_forward"] == mlp["clip_feedback"] == 1.0 and mlp["warmup"] == 0
    assert mlp["momentum_forward"] == 0 and not mlp["centralize"] and mlp["cosine_tmax"] == 0
    c10 = CCL.defaults("cnn", "cifar10")
    assert (c10["batch_size"], c10["momentum_forward"], c10["clip_forward"], c10["warmup"],
            c10["cosine_tmax"], c10["weight_decay_feedback"]) == (128, 0.8, 0.3, 100, 100, 1e-6)
    assert c10["centralize"] and c10["rule_options"] == {"flood": 0.1}
    c100 = CCL.defaults("cnn", "CIFAR-100")
    assert c100["momentum_feedback"] == 0.5 and c100["clip_forward"] == 0 and c100["rule_options"] == {}
    mn = CCL.defaults("cnn", "fashion-mnist")
    assert mn["batch_size"] == 256 and mn["warmup"] == 100 and mn["rule_options"] == {"scale": 0.5}
    from ccledu.train import TrainConfig
    fields = set(TrainConfig.__dataclass_fields__)
    for d in (mlp, c10, c100, mn):
        assert set(d) <= fields


# --------------------------------------------------------------------------------------------
# Learning (slow)
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlp_learns_mnist_in_one_epoch():
    from ccledu.train import TrainConfig, run
    t0 = time.perf_counter()
    m = run(TrainConfig(rule="ccl", model="mlp", data="mnist", epochs=1, seed=0), progress=False)
    print(f"CCL MLP MNIST, 1 epoch: {100 * m['test_accuracy']:.2f} % in {time.perf_counter() - t0:.1f} s")
    assert m["test_accuracy"] >= 0.85


@pytest.mark.slow
def test_small_cnn_learns_an_mnist_subset():
    from ccledu.train import TrainConfig, run
    t0 = time.perf_counter()
    m = run(TrainConfig(rule="ccl", model="cnn:1x28x28-c16-c32-10", data="mnist", epochs=2,
                        seed=0, limit_train=6000, limit_test=2000, batch_size=128,
                        momentum_forward=0.8, momentum_feedback=0.8, warmup=20,
                        rule_options={"flood": 0.1}),
            progress=False)
    print(f"CCL small CNN, MNIST 6000: {100 * m['test_accuracy']:.2f} % in {time.perf_counter() - t0:.1f} s")
    assert m["test_accuracy"] > 0.85
