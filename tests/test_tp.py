"""Target propagation: DTP, DRL, L-DRL, FW-DTP (ccledu/rules/dtp.py, drl.py, ldrl.py, fwdtp.py).

Every gradient the rules claim is the gradient of a local loss is checked against central
differences in float64; the identities that pin the family down are checked on small problems.
"""
import numpy as np
import pytest

from ccledu.losses import softmax, one_hot
from ccledu.models import mlp
from ccledu.rules import get_rule
from ccledu.rules.dtp import (Map, batchnorm, batchnorm_backward, difference_targets,
                              output_target)
from ccledu.testing import grad_rel_error, numerical_gradient

TP_RULES = ["dtp", "drl", "ldrl", "fwdtp"]


def _setup(rule_name, sizes=(12, 9, 8, 5), N=7, seed=0, act="tanh", **opts):
    model = mlp(list(sizes), activation=act, seed=seed, dtype="float64")
    rule = get_rule(rule_name, **opts).setup(model, seed=seed)
    g = np.random.default_rng(seed + 10)
    x = g.standard_normal((N, sizes[0]))
    y = g.integers(0, sizes[-1], N)
    return model, rule, x, y


# -------------------------------------------------------------------------------------------
# building blocks
# -------------------------------------------------------------------------------------------

def test_batchnorm_forward_and_backward_match_finite_differences():
    g = np.random.default_rng(0)
    v = g.standard_normal((6, 4)) * 3 + 1
    y, _ = batchnorm(v)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=0, ddof=1), 1, rtol=1e-10)   # unbiased, as torch.std
    dy = g.standard_normal(v.shape)
    _, cache = batchnorm(v)
    mine = batchnorm_backward(dy, cache)
    num = numerical_gradient(lambda: np.sum(batchnorm(v)[0] * dy), v)
    assert grad_rel_error(mine, num) < 1e-7


@pytest.mark.parametrize("bn", [False, True])
def test_map_backward_matches_finite_differences(bn):
    g = np.random.default_rng(1)
    M = g.standard_normal((5, 4)) * 0.5
    v = g.standard_normal((6, 4))
    dy = g.standard_normal((6, 5))
    m = Map(M, "tanh", bn)
    m(v)
    dv, dM, _ = m.backward(dy)
    assert grad_rel_error(dv, numerical_gradient(lambda: np.sum(Map(M, "tanh", bn)(v) * dy), v)) < 1e-7
    assert grad_rel_error(dM, numerical_gradient(lambda: np.sum(Map(M, "tanh", bn)(v) * dy), M)) < 1e-7


# -------------------------------------------------------------------------------------------
# forward (target) gradients
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,bn", [("dtp", False), ("dtp", True), ("fwdtp", True), ("fwdtp", False)])
def test_forward_gradients_are_gradients_of_the_local_target_losses(name, bn):
    model, rule, x, y = _setup(name, batchnorm=bn, feedback_iters=0, stepsize=0.5)
    for Q in rule.Q.values():          # sizeable feedback, so that every layer's target moves
        Q[...] = 0.5 * np.random.default_rng(4).standard_normal(Q.shape)
    acts, maps = rule.forward(model, x)
    targets = [t.copy() for t in rule.compute_targets(model, acts, y)]
    grads, _ = rule.forward_grads(model, x, acts, maps, targets)
    inputs = [x] + acts[:-1]
    for l in range(len(model.blocks)):
        W = model.blocks[l].main.params["weight"]
        a_in = inputs[l].copy()

        def loss():
            out = rule.f(model, l)(a_in)
            return np.sum((out - targets[l]) ** 2) / x.shape[0]
        assert grad_rel_error(grads[f"forward.{l}.weight"], numerical_gradient(loss, W)) < 1e-6, l


def test_classifier_update_is_two_beta_times_backprop():
    beta = 0.07
    model, rule, x, y = _setup("dtp", stepsize=beta, feedback_iters=0)
    res = rule.step(model, x, y)
    L = len(model.blocks)
    bp = get_rule("bp").step(model, x, y).grads
    np.testing.assert_allclose(res.grads[f"forward.{L - 1}.weight"], 2 * beta * bp[f"forward.{L - 1}.weight"],
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("bn", [False, True])
def test_difference_correction_is_exact_at_zero_step(bn):
    """t_top = a_top gives t_l = a_l at every layer, for any feedback weights."""
    model, rule, x, y = _setup("dtp", batchnorm=bn)
    for Q in rule.Q.values():
        Q[...] = np.random.default_rng(3).standard_normal(Q.shape)
    acts, _ = rule.forward(model, x)
    inv = [None] + [rule.g(l) for l in range(1, len(model.blocks))]
    targets = difference_targets(acts, acts[-1].copy(), inv, bn=bn)
    for a, t in zip(acts, targets):
        np.testing.assert_allclose(t, a, atol=1e-10)


def test_exact_inverses_give_gauss_newton_targets():
    """With g_l = f_l⁻¹ and step β, t_l − a_l = −β J_{F_l}⁻¹ (softmax − Y) + O(β²), F_l the map
    from a_l to the logits (Meulemans et al. 2020): checked per sample, with the O(β²) rate."""
    d, N = 5, 4
    model = mlp([d, d, d, d], activation="tanh", seed=2, dtype="float64")
    rule = get_rule("dtp", orthogonal_init=False).setup(model, seed=0)
    g = np.random.default_rng(5)
    for b in model.blocks:                       # well-conditioned square weights
        b.main.params["weight"][...] = np.eye(d) + 0.3 * g.standard_normal((d, d))
    x = 0.5 * g.standard_normal((N, d))
    y = g.integers(0, d, N)
    acts, _ = rule.forward(model, x)
    Ws = [b.main.params["weight"] for b in model.blocks]
    acts_list = [x] + acts

    def inverse(l):
        Winv = np.linalg.inv(Ws[l])
        last = l == len(Ws) - 1
        return lambda t: (t if last else np.arctanh(t)) @ Winv.T

    inv = [None] + [inverse(l) for l in range(1, len(Ws))]
    e = softmax(acts[-1]) - one_hot(y, d, np.float64)

    def jac(l, n):       # J of the map a_l -> logits at sample n
        J = np.eye(d)
        for j in range(l + 1, len(Ws)):
            z = acts_list[j][n] @ Ws[j].T
            D = np.eye(d) if j == len(Ws) - 1 else np.diag(1 - np.tanh(z) ** 2)
            J = D @ Ws[j] @ J
        return J

    errs = []
    for beta in (1e-3, 1e-4):
        targets = difference_targets(acts, output_target(acts[-1], y, beta), inv)
        worst = 0.0
        for l in range(len(Ws) - 1):
            for n in range(N):
                gn = -beta * np.linalg.solve(jac(l, n), e[n])
                worst = max(worst, np.linalg.norm(targets[l][n] - acts[l][n] - gn) / np.linalg.norm(gn))
        errs.append(worst)
    assert errs[1] < 1e-3
    assert errs[1] < errs[0] / 5          # the deviation is O(β): relative error shrinks with β


# -------------------------------------------------------------------------------------------
# feedback gradients
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts", [("dtp", {}), ("dtp", {"batchnorm": True}),
                                       ("drl", {}), ("drl", {"drl_target": "noisy"}),
                                       ("drl", {"batchnorm": True}),
                                       ("ldrl", {}), ("ldrl", {"batchnorm": True})])
def test_feedback_gradients_match_finite_differences(name, opts):
    model, rule, x, y = _setup(name, sizes=(6, 5, 5, 4, 3), noise_std=0.3, **opts)
    for Q in rule.Q.values():
        Q[...] = 0.4 * np.random.default_rng(11).standard_normal(Q.shape)
    acts, _ = rule.forward(model, x)
    for l in range(1, len(model.blocks)):
        noise = rule.draw_noise(acts, l)
        loss, dQ = rule.feedback_loss_grad(model, l, x, acts, noise)
        Q = rule.Q[f"feedback.{l}.weight"]
        kw = {}
        if name != "dtp":        # DRL / L-DRL hold the difference term a − g(a) fixed (sg)
            kw["const"] = acts[l - 1] - rule.g(l)(acts[l])
        num = numerical_gradient(lambda: rule.feedback_loss_grad(model, l, x, acts, noise, **kw)[0], Q)
        assert grad_rel_error(dQ, num) < 1e-6, (name, opts, l)


def test_public_drl_loss_vanishes_at_zero_feedback():
    """The public code's DRL ('clean' target) compares the reconstruction with the clean input:
    q̂ − a = g(q̂_l) − g(a_l), which is 0 for Q_l = 0 — a decay, not a reconstruction. The paper's
    noisy target does not vanish there."""
    for target, zero in (("clean", True), ("noisy", False)):
        model, rule, x, y = _setup("drl", sizes=(6, 5, 5, 3), noise_std=0.3, drl_target=target)
        acts, _ = rule.forward(model, x)
        rule.Q["feedback.1.weight"][...] = 0
        loss, _ = rule.feedback_loss_grad(model, 1, x, acts, rule.draw_noise(acts, 1))
        assert (float(loss) < 1e-20) is zero


def test_ldrl_feedback_converges_to_the_transpose_on_a_linear_layer():
    """Linear f(h) = h Wᵀ, g(s) = s Qᵀ: E[∂L-DRL/∂Q] = σ² (Q − Wᵀ), so Q → Wᵀ. The code holds
    g(a_l) fixed, which adds zero-mean terms ∝ a_l to each draw's gradient (checked: the mean over
    draws is still σ²(Q − Wᵀ)); SGD on it converges to Wᵀ up to that noise."""
    model = mlp([6, 4, 3], activation="identity", seed=0, dtype="float64")
    rule = get_rule("ldrl", feedback_activation="identity", noise_std=0.1,
                    orthogonal_init=False).setup(model, seed=0)
    W = model.blocks[1].main.params["weight"]
    Q = rule.Q["feedback.1.weight"]
    x = np.random.default_rng(0).standard_normal((1024, 6))
    acts, _ = rule.forward(model, x)
    Q[...] = 0.3 * np.random.default_rng(1).standard_normal(Q.shape)
    mean = sum(rule.feedback_loss_grad(model, 1, x, acts, rule.draw_noise(acts, 1))[1]
               for _ in range(1000)) / 1000
    assert grad_rel_error(mean, 0.1 ** 2 * (Q - W.T)) < 0.05
    x = np.random.default_rng(0).standard_normal((4096, 6))
    acts, _ = rule.forward(model, x)
    start = grad_rel_error(Q, W.T)
    for _ in range(1500):
        Q -= 10.0 * rule.feedback_loss_grad(model, 1, x, acts, rule.draw_noise(acts, 1))[1]
    assert start > 0.5 and grad_rel_error(Q, W.T) < 0.1


def test_dtp_feedback_training_learns_an_inverse():
    model, rule, x, y = _setup("dtp", sizes=(8, 8, 8, 4), N=64, lr_backward=0.5, noise_std=0.05,
                               feedback_iters=0)
    acts, _ = rule.forward(model, x)
    first = float(rule.feedback_loss_grad(model, 1, x, acts, rule.draw_noise(acts, 1))[0])
    rule.train_feedback(model, x, acts, 300)
    after = float(rule.feedback_loss_grad(model, 1, x, acts, rule.draw_noise(acts, 1))[0])
    assert after < 0.2 * first


def test_fwdtp_keeps_its_feedback_fixed_and_trains_nothing_else():
    model, rule, x, y = _setup("fwdtp")
    assert rule.parameters() == {} and set(rule.buffers()) == {"feedback.1.weight", "feedback.2.weight"}
    before = {k: v.copy() for k, v in rule.buffers().items()}
    res = rule.step(model, x, y)
    assert set(res.grads) == {f"forward.{l}.weight" for l in range(3)}
    for k, v in rule.buffers().items():
        np.testing.assert_array_equal(v, before[k])
    assert np.abs(before["feedback.1.weight"]).max() <= 1e-3


def test_tp_rules_reject_cnns_and_bad_options():
    from ccledu.models import cnn
    with pytest.raises(ValueError, match="MLPs only"):
        get_rule("dtp").setup(cnn((1, 8, 8), (2,), 3, dtype="float64"))
    with pytest.raises(ValueError, match="stepsize"):
        get_rule("dtp", stepsize=0)
    with pytest.raises(ValueError, match="drl_target"):
        get_rule("drl", drl_target="both")


# -------------------------------------------------------------------------------------------
# real training
# -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,opts,lr", [
    ("dtp", {"stepsize": 0.1}, 1.0), ("drl", {"stepsize": 0.1, "feedback_iters": 1}, 1.0),
    ("ldrl", {"stepsize": 0.1, "feedback_iters": 1}, 1.0), ("fwdtp", {}, 1.0)])
def test_tp_rules_learn_mnist_subset(name, opts, lr):
    from ccledu.train import run
    m = run(dict(rule=name, model="mlp:784-128-128-10", data="mnist", epochs=2, seed=0,
                 limit_train=4000, limit_test=1000, lr_forward=lr, rule_options=opts), progress=False)
    assert m["test_accuracy"] > 0.6, m["test_accuracy"]
    assert m["config"]["activation"] == "tanh" and m["config"]["batch_size"] == 256


# -------------------------------------------------------------------------------------------
# chapter 12 exercises: the reference solutions pass their checks, wrong answers do not
# -------------------------------------------------------------------------------------------

def test_chapter_12_solutions_pass_and_common_mistakes_fail():
    from conftest import load_solutions
    from ccledu import check
    sol = load_solutions("12_target_propagation")
    quiet = dict(verbose=False)
    check.tp_targets(sol["my_tp_targets"], **quiet)
    check.tp_local_grad(sol["my_tp_local_grad"], **quiet)
    check.drtp_update(sol["my_drtp_update"], **quiet)

    def no_correction(acts, y, Qs, beta):
        t = sol["my_tp_targets"](acts, y, Qs, beta)
        return [t[l] - acts[l] + np.tanh(acts[l + 1] @ Qs[l + 1].T) for l in range(len(t) - 1)] + [t[-1]]
    with pytest.raises(AssertionError, match="tp_targets"):
        check.tp_targets(no_correction, **quiet)
    with pytest.raises(AssertionError, match="tp_local_grad"):
        check.tp_local_grad(lambda a, W, t: 0.5 * sol["my_tp_local_grad"](a, W, t), **quiet)
    with pytest.raises(AssertionError, match="drtp_update"):
        check.drtp_update(lambda Y, D, a, W: sol["my_drtp_update"](Y, D, a, W) * a.shape[0], **quiet)
    from ccledu.check import ReferenceCalled
    from ccledu.rules.dtp import difference_targets
    with pytest.raises(ReferenceCalled):
        check.tp_targets(lambda acts, y, Qs, beta: difference_targets(
            acts, acts[-1], [None] + [lambda s, Q=Q: np.tanh(s @ Q.T) for Q in Qs[1:]]), **quiet)


def test_diagnostics_train_nothing_and_the_top_target_follows_the_gradient():
    model, rule, x, y = _setup("dtp")
    before = {k: v.copy() for k, v in rule.Q.items()}
    W = {k: v.copy() for k, v in model.parameters().items()}
    d = rule.diagnostics(model, x, y)
    for k, v in rule.Q.items():
        np.testing.assert_array_equal(v, before[k])
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, W[k])
    L = len(model.blocks)
    assert d[f"target_bp/{L - 1}"] < 1e-5 and d[f"align_bp/{L - 1}"] < 1e-5   # exact at the top
    assert set(d) == {f"{k}/{l}" for k in ("target_bp", "align_bp") for l in range(L)}


# -------------------------------------------------------------------------------------------
# agreement with the public code's algorithm (re-expressed here in PyTorch autograd, float64)
# -------------------------------------------------------------------------------------------

def _torch_public_step(Ws, Qs, x, y, method, beta, lr, lrb, iters, noises, bn):
    """One mini-batch of the public TP code's algorithm (Shibuya et al., tp_net.py), written with
    torch autograd: `iters` feedback updates (Q ← Q − lrb/N ∇ of the summed loss), targets from
    the summed cross-entropy's gradient, W ← W − lr/N ∇Σ‖t − a‖². Returns (new W list, new Q)."""
    import torch
    L = len(Ws)
    W = [torch.tensor(w, requires_grad=True) for w in Ws]
    Q = [None] + [torch.tensor(q, requires_grad=True) for q in Qs[1:]]
    xt, yt = torch.tensor(x), torch.tensor(y)
    N = x.shape[0]

    def norm(v):
        return (v - v.mean(0)) / (v.std(0) + 1e-12) if bn else v

    def f(l, h):
        z = h @ W[l].T
        return norm(z if l == L - 1 else torch.tanh(z))

    def g(l, s):
        return norm(torch.tanh(s @ Q[l].T))

    def diff(l, v, a):
        with torch.no_grad():
            rec = g(l, f(l, a))
        return norm(v + (a - rec))

    def forward():
        outs, h = [], xt
        for l in range(L):
            h = f(l, h)
            outs.append(h)
        return outs

    for _ in range(iters if method != "fwdtp" else 0):
        outs = forward()
        for d in range(L - 1, 0, -1):
            nz = {k: torch.tensor(v) for k, v in next(noises).items()}
            a = outs[d - 1].detach()
            if method == "dtp":
                q = a + nz["q"]
                loss = ((g(d, f(d, q)) - q) ** 2).sum()
            elif method == "drl":
                q = a + nz["q"]
                for j in range(d, L):
                    q = f(j, q)
                for j in range(L - 1, d - 1, -1):
                    q = diff(j, g(j, q), outs[j - 1].detach())
                loss = ((a - q) ** 2).sum()
            else:
                q = a + nz["q"]
                q_rec = diff(d, g(d, f(d, q)), a)
                r_rec = diff(d, g(d, f(d, a) + nz["r"]), a)
                loss = -((q - a) * (q_rec - a)).sum() + ((r_rec - a) ** 2).sum() / 2
            (gq,) = torch.autograd.grad(loss, [Q[d]])
            Q[d] = (Q[d] - lrb / N * gq).detach().requires_grad_()
    outs = forward()
    logits = outs[-1]
    (gz,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, yt, reduction="sum"), [logits])
    with torch.no_grad():
        t = [None] * L
        t[-1] = logits - beta * gz
        for d in range(L - 2, -1, -1):
            t[d] = diff(d + 1, g(d + 1, t[d + 1]), outs[d])
    outs = forward()
    newW = []
    for d in range(L):
        (gw,) = torch.autograd.grad(((t[d] - outs[d]) ** 2).sum(), [W[d]], retain_graph=True)
        newW.append((W[d] - lr / N * gw).detach().numpy())
    return newW, [None] + [q.detach().numpy() for q in Q[1:]]


@pytest.mark.parametrize("name,bn", [("dtp", False), ("dtp", True), ("drl", False), ("drl", True),
                                     ("ldrl", False), ("ldrl", True), ("fwdtp", True), ("fwdtp", False)])
def test_one_step_equals_the_public_codes_algorithm(name, bn):
    """ccledu's step + SGD (rate lr on the mean losses, the rule's own feedback SGD) gives the same
    forward and feedback weights as the public code's algorithm with the same noise."""
    pytest.importorskip("torch")          # torch is an optional extra; the FD tests above do not need it
    from ccledu.optim import Optimizer, ParamGroup
    beta, lr, lrb, iters = 0.3, 0.5, 0.2, 2
    model, rule, x, y = _setup(name, sizes=(8, 6, 6, 5, 4), N=16, stepsize=beta, lr_backward=lrb,
                               feedback_iters=iters, noise_std=0.1, batchnorm=bn)
    for Q in rule.Q.values():
        Q[...] = 0.5 * np.random.default_rng(9).standard_normal(Q.shape)
    Ws = [b.main.params["weight"].copy() for b in model.blocks]
    Qs = [None] + [rule.Q[f"feedback.{l}.weight"].copy() for l in range(1, len(model.blocks))]
    drawn = []
    original = rule.draw_noise

    def recording(acts, l):
        nz = original(acts, l)
        drawn.append({k: v.copy() for k, v in nz.items()})
        return nz
    rule.draw_noise = recording
    opt = Optimizer([ParamGroup("forward", model.parameters(), lr=lr, momentum=0.0, clip=0.0)])
    opt.step(rule.step(model, x, y).grads)
    newW, newQ = _torch_public_step(Ws, Qs, x, y, name, beta, lr, lrb, iters, iter(drawn), bn)
    for l, b in enumerate(model.blocks):          # compare the updates themselves
        mine, theirs = b.main.params["weight"] - Ws[l], newW[l] - Ws[l]
        assert np.linalg.norm(theirs) > 1e-6 and grad_rel_error(mine, theirs) < 1e-9, ("W", l)
    for l in range(1, len(model.blocks)):
        mine, theirs = rule.Q[f"feedback.{l}.weight"] - Qs[l], newQ[l] - Qs[l]
        if name == "fwdtp":
            assert np.abs(mine).max() == 0 and np.abs(theirs).max() == 0
        else:
            assert np.linalg.norm(theirs) > 1e-12 and grad_rel_error(mine, theirs) < 1e-9, ("Q", l)
