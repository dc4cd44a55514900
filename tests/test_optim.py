"""ccledu.optim: hand-computed SGD steps, and (when torch is installed) PyTorch itself."""
import math

import numpy as np
import pytest

from ccledu.optim import Optimizer, ParamGroup, cosine_lr

RTOL = 1e-12


def _arrays(seed=0):
    r = np.random.default_rng(seed)
    return {"W": r.normal(size=(3, 4)), "b": r.normal(size=(3,)), "V": r.normal(size=(4, 2, 2))}


def test_plain_sgd_one_step_updates_in_place():
    p = _arrays()
    W = p["W"]
    g = _arrays(1)
    g_copy = {k: v.copy() for k, v in g.items()}
    opt = Optimizer([ParamGroup("all", p, lr=0.1)])
    expected = {k: p[k] - 0.1 * g[k] for k in p}
    opt.step(g)
    assert p["W"] is W                                     # same array object, updated in place
    for k in p:
        np.testing.assert_allclose(p[k], expected[k], rtol=RTOL)
        np.testing.assert_array_equal(g[k], g_copy[k])     # caller's gradients untouched


def test_momentum_first_step_buffer_and_weight_decay():
    p = {"W": np.array([[1.0, -2.0], [0.5, 3.0]])}
    g1 = {"W": np.array([[0.2, 0.1], [-0.3, 0.4]])}
    g2 = {"W": np.array([[-0.1, 0.5], [0.2, 0.0]])}
    lr, mu, wd = 0.5, 0.9, 0.01
    opt = Optimizer([ParamGroup("f", p, lr=lr, momentum=mu, weight_decay=wd)])
    W0 = p["W"].copy()
    # step 1: buffer = d (no momentum scaling on the first step)
    d1 = g1["W"] + wd * W0
    buf = d1
    W1 = W0 - lr * buf
    opt.step(g1)
    np.testing.assert_allclose(p["W"], W1, rtol=RTOL)
    # step 2: buffer = mu * buffer + d
    d2 = g2["W"] + wd * W1
    buf = mu * buf + d2
    W2 = W1 - lr * buf
    opt.step(g2)
    np.testing.assert_allclose(p["W"], W2, rtol=RTOL)
    np.testing.assert_allclose(opt.momentum_buffers["W"], buf, rtol=RTOL)


def test_per_group_clipping_is_separate():
    pf = {"W1": np.zeros((2, 2)), "b1": np.zeros(2)}
    pb = {"V1": np.zeros((2, 3))}
    gf = {"W1": np.array([[3.0, 0.0], [0.0, 0.0]]), "b1": np.array([0.0, 4.0])}   # norm 5
    gb = {"V1": np.full((2, 3), 0.1)}                                                # norm ~0.245
    opt = Optimizer([ParamGroup("fwd", pf, lr=1.0, clip=1.0),
                     ParamGroup("fb", pb, lr=1.0, clip=1.0)])
    info = opt.step({**gf, **gb})
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(pf["W1"], -coef * gf["W1"], rtol=RTOL)
    np.testing.assert_allclose(pf["b1"], -coef * gf["b1"], rtol=RTOL)
    np.testing.assert_allclose(pb["V1"], -gb["V1"], rtol=RTOL)   # below the limit: unclipped
    assert info["fwd"]["grad_norm"] == pytest.approx(5.0, rel=1e-12)
    assert info["fwd"]["clip_coef"] == pytest.approx(coef, rel=1e-12)
    assert info["fb"]["clip_coef"] == 1.0
    assert info["fb"]["grad_norm"] == pytest.approx(math.sqrt(6 * 0.01), rel=1e-12)


def test_gradient_centralization_only_for_ndim_above_one():
    p = {"W": np.zeros((2, 3)), "K": np.zeros((2, 2, 1, 2)), "b": np.zeros(2)}
    g = {"W": np.array([[1.0, 2.0, 6.0], [0.0, -3.0, 0.0]]),
         "K": np.arange(8.0).reshape(2, 2, 1, 2),
         "b": np.array([5.0, 7.0])}
    opt = Optimizer([ParamGroup("g", p, lr=1.0, centralize=True)])
    opt.step(g)
    expW = g["W"] - np.array([[3.0], [-1.0]])
    expK = g["K"] - np.array([1.5, 5.5]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(p["W"], -expW, rtol=RTOL)
    np.testing.assert_allclose(p["K"], -expK, rtol=RTOL)
    np.testing.assert_allclose(p["b"], -g["b"], rtol=RTOL)      # 1-D: not centralized


def test_warmup_factor_then_full_gradient():
    p = {"W": np.zeros((1, 2))}
    g = {"W": np.array([[1.0, -2.0]])}
    opt = Optimizer([ParamGroup("g", p, lr=1.0)], warmup=4)
    total = 0.0
    for t in range(6):
        info = opt.step(g)
        f = (t + 1) / 4 if t < 4 else 1.0
        assert info["g"]["warmup_factor"] == f
        total += f
        np.testing.assert_allclose(p["W"], -total * g["W"], rtol=RTOL)


def test_warmup_before_clipping():
    # factor 1/2 brings the norm from 4 to 2; clip at 1 then halves it again.
    p = {"W": np.zeros(2)}
    opt = Optimizer([ParamGroup("g", p, lr=1.0, clip=1.0)], warmup=2)
    info = opt.step({"W": np.array([4.0, 0.0])})
    assert info["g"]["grad_norm"] == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(p["W"], [-2.0 / (2.0 + 1e-6), 0.0], rtol=RTOL)


def test_cosine_schedule_after_several_epochs():
    p1, p2 = {"W": np.zeros(1)}, {"V": np.zeros(1)}
    opt = Optimizer([ParamGroup("a", p1, lr=1.0), ParamGroup("b", p2, lr=0.1)],
                    cosine_tmax=10, eta_min=1e-3)
    for _ in range(3):
        opt.end_epoch()
    for name, lr0 in (("a", 1.0), ("b", 0.1)):
        expected = 1e-3 + (lr0 - 1e-3) * (1 + math.cos(math.pi * 3 / 10)) / 2
        assert opt.lrs[name] == pytest.approx(expected, rel=RTOL)
    info = opt.step({"W": np.array([2.0]), "V": np.array([2.0])})
    np.testing.assert_allclose(p1["W"], [-2.0 * opt.lrs["a"]], rtol=RTOL)
    assert info["b"]["lr"] == opt.lrs["b"]
    for _ in range(7):
        opt.end_epoch()
    assert opt.lrs["a"] == pytest.approx(1e-3, rel=1e-12)
    assert cosine_lr(1.0, 0, 10, 0.0) == 1.0


def test_constant_lr_without_cosine():
    p = {"W": np.zeros(1)}
    opt = Optimizer([ParamGroup("a", p, lr=0.3)])
    opt.end_epoch()
    assert opt.lrs["a"] == 0.3 and opt.epoch == 1


def test_missing_and_unknown_gradients():
    p = {"W": np.ones(2), "b": np.ones(2)}
    opt = Optimizer([ParamGroup("g", p, lr=1.0, momentum=0.9)])
    opt.step({"W": np.ones(2)})                 # no gradient for b: skipped
    np.testing.assert_array_equal(p["b"], np.ones(2))
    assert "b" not in opt.momentum_buffers
    with pytest.raises(KeyError, match="no ParamGroup"):
        opt.step({"Z": np.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"W": np.ones(3)})
    with pytest.raises(TypeError, match=r"gradient 'W' must be an array shaped like the parameter \(2,\), got list"):
        opt.step({"W": [1.0, 1.0]})
    np.testing.assert_array_equal(p["W"], np.zeros(2))      # only the first step moved W


def test_bad_groups_rejected():
    p = {"W": np.ones(2)}
    with pytest.raises(ValueError, match="in groups"):
        Optimizer([ParamGroup("a", p, lr=1.0), ParamGroup("b", p, lr=1.0)])
    with pytest.raises(ValueError, match="lr must be"):
        ParamGroup("a", p, lr=-1.0)
    with pytest.raises(TypeError, match="parameter 'W' must be a floating-point array .* int64"):
        ParamGroup("a", {"W": np.ones(2, dtype=np.int64)}, lr=1.0)
    with pytest.raises(TypeError, match="parameter 'W' must be a floating-point array .* list"):
        ParamGroup("a", {"W": [1.0]}, lr=1.0)


def test_state_dict_round_trip():
    def make():
        p = {"W": np.array([[1.0, 2.0]]), "b": np.array([0.5])}
        return p, Optimizer([ParamGroup("g", p, lr=0.5, momentum=0.8, weight_decay=0.1)],
                            warmup=3, cosine_tmax=5)
    g = {"W": np.array([[0.3, -0.2]]), "b": np.array([0.7])}
    p1, o1 = make()
    o1.step(g)
    o1.end_epoch()
    state = o1.state_dict()
    p2, o2 = make()
    for k in p2:
        p2[k][...] = p1[k]
    o2.load_state_dict(state)
    o1.step(g)
    o2.step(g)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_matches_torch_sgd_clip_and_cosine():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    shapes_f = {"W1": (5, 4), "b1": (5,), "W2": (3, 5)}
    shapes_b = {"V1": (4, 5), "V2": (5, 3)}
    init = {k: r.normal(size=s) for k, s in {**shapes_f, **shapes_b}.items()}
    grads = [{k: r.normal(size=v.shape) * 2.0 for k, v in init.items()} for _ in range(3)]
    cfg_f = dict(lr=1.0, momentum=0.8, weight_decay=1e-2)
    cfg_b = dict(lr=0.5, momentum=0.5, weight_decay=1e-3)
    clip_f, clip_b, warmup, tmax, eta_min = 0.3, 1.0, 2, 4, 1e-3

    ours_f = {k: init[k].copy() for k in shapes_f}
    ours_b = {k: init[k].copy() for k in shapes_b}
    opt = Optimizer([ParamGroup("fwd", ours_f, clip=clip_f, centralize=True, **cfg_f),
                     ParamGroup("fb", ours_b, clip=clip_b, centralize=True, **cfg_b)],
                    warmup=warmup, cosine_tmax=tmax, eta_min=eta_min)

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    tf = [tp[k] for k in shapes_f]
    tb = [tp[k] for k in shapes_b]
    topt = torch.optim.SGD([dict(params=tf, **cfg_f), dict(params=tb, **cfg_b)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=tmax, eta_min=eta_min)

    for t, g in enumerate(grads):
        opt.step(g)
        factor = (t + 1) / warmup if t < warmup else 1.0
        for k, v in g.items():
            gt = torch.tensor(v, dtype=torch.float64) * factor
            if gt.ndim > 1:
                gt = gt - gt.mean(dim=tuple(range(1, gt.ndim)), keepdim=True)
            tp[k].grad = gt
        torch.nn.utils.clip_grad_norm_(tf, clip_f)
        torch.nn.utils.clip_grad_norm_(tb, clip_b)
        topt.step()
        sched.step()          # one "epoch" per step, to exercise the schedule
        opt.end_epoch()
        for k in init:
            np.testing.assert_allclose({**ours_f, **ours_b}[k], tp[k].detach().numpy(),
                                       rtol=1e-10, atol=1e-12)
        assert opt.lrs["fwd"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-10)
        assert opt.lrs["fb"] == pytest.approx(topt.param_groups[1]["lr"], rel=1e-10)


def test_adam_hand_computed_two_steps():
    # torch.optim.Adam, written out: g <- g + wd p; m, v moving averages; bias-corrected step.
    p = {"W": np.array([[1.0, -2.0], [0.5, 3.0]])}
    g1 = np.array([[0.2, 0.1], [-0.3, 0.4]])
    g2 = np.array([[-0.1, 0.5], [0.2, 0.0]])
    lr, b1, b2, eps, wd = 0.01, 0.8, 0.99, 1e-8, 0.1
    opt = Optimizer([ParamGroup("f", p, lr=lr, momentum=0.9, weight_decay=wd, optimizer="adam",
                                betas=(b1, b2), eps=eps)])
    W = p["W"].copy()
    m = np.zeros_like(W)
    v = np.zeros_like(W)
    for k, g in enumerate((g1, g2), start=1):
        d = g + wd * W
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        mhat = m / (1 - b1 ** k)
        vhat = v / (1 - b2 ** k)
        W = W - lr * mhat / (np.sqrt(vhat) + eps)     # = torch's (lr/bc1) m / (√v/√bc2 + eps)
        opt.step({"W": g})
        np.testing.assert_allclose(p["W"], W, rtol=1e-12)
    # first step of Adam moves every entry by lr·sign(d) (up to eps): |m̂/√v̂| = 1
    q = {"W": np.zeros(3)}
    Optimizer([ParamGroup("a", q, lr=0.5, optimizer="adam")]).step({"W": np.array([2.0, -3.0, 1e-3])})
    np.testing.assert_allclose(q["W"], [-0.5, 0.5, -0.5], rtol=1e-4)
    assert opt.adam_state["W"]["step"] == 2
    assert not opt.momentum_buffers                   # momentum is not used by Adam


def test_adam_eps_outside_the_bias_corrected_root():
    # p <- p - (lr/(1 - b1^k)) m / (sqrt(v)/sqrt(1 - b2^k) + eps): with a tiny gradient the eps
    # term dominates, so its placement is visible.
    p = {"W": np.zeros(1)}
    lr, b1, b2, eps = 1.0, 0.9, 0.999, 1e-3
    opt = Optimizer([ParamGroup("a", p, lr=lr, optimizer="adam", betas=(b1, b2), eps=eps)])
    g = 1e-3
    opt.step({"W": np.array([g])})
    m, v = (1 - b1) * g, (1 - b2) * g * g
    expected = -(lr / (1 - b1)) * m / (np.sqrt(v) / np.sqrt(1 - b2) + eps)
    np.testing.assert_allclose(p["W"], [expected], rtol=1e-12)
    assert expected == pytest.approx(-0.5, rel=1e-12)


def test_adam_rejects_bad_settings():
    with pytest.raises(ValueError, match="optimizer must be"):
        ParamGroup("a", {"W": np.ones(1)}, lr=1.0, optimizer="rmsprop")
    with pytest.raises(ValueError, match="betas"):
        ParamGroup("a", {"W": np.ones(1)}, lr=1.0, optimizer="adam", betas=(1.0, 0.9))


def test_adam_state_dict_round_trip():
    def make():
        p = {"W": np.array([[1.0, 2.0]]), "b": np.array([0.5])}
        return p, Optimizer([ParamGroup("g", p, lr=0.05, weight_decay=0.1, optimizer="adam")])
    g = {"W": np.array([[0.3, -0.2]]), "b": np.array([0.7])}
    p1, o1 = make()
    o1.step(g)
    o1.step({"W": g["W"]})                 # b has taken one step, W two
    p2, o2 = make()
    for k in p2:
        p2[k][...] = p1[k]
    o2.load_state_dict(o1.state_dict())
    assert o2.adam_state["b"]["step"] == 1 and o2.adam_state["W"]["step"] == 2
    o1.step(g)
    o2.step(g)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])


def test_matches_torch_adam_warmup_centralize_clip_and_cosine():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(5)
    shapes_f = {"W1": (5, 4), "b1": (5,), "W2": (3, 5)}
    shapes_b = {"V1": (4, 5)}
    init = {k: r.normal(size=s) for k, s in {**shapes_f, **shapes_b}.items()}
    grads = [{k: r.normal(size=v.shape) * 2.0 for k, v in init.items()} for _ in range(3)]
    grads[1].pop("b1")                       # b1 skips a step: its own step count lags
    cfg_f = dict(lr=0.01, weight_decay=1e-2, betas=(0.9, 0.999), eps=1e-8)
    cfg_b = dict(lr=0.003, weight_decay=0.0, betas=(0.8, 0.99), eps=1e-6)
    clip_f, warmup, tmax, eta_min = 0.5, 2, 4, 1e-4

    ours_f = {k: init[k].copy() for k in shapes_f}
    ours_b = {k: init[k].copy() for k in shapes_b}
    opt = Optimizer([ParamGroup("fwd", ours_f, clip=clip_f, centralize=True, optimizer="adam",
                                **cfg_f),
                     ParamGroup("fb", ours_b, optimizer="adam", **cfg_b)],
                    warmup=warmup, cosine_tmax=tmax, eta_min=eta_min)

    tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in init.items()}
    tf = [tp[k] for k in shapes_f]
    tb = [tp[k] for k in shapes_b]
    topt = torch.optim.Adam([dict(params=tf, **cfg_f), dict(params=tb, **cfg_b)])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=tmax, eta_min=eta_min)

    for t, g in enumerate(grads):
        opt.step(g)
        factor = (t + 1) / warmup if t < warmup else 1.0
        for k in init:
            if k not in g:
                tp[k].grad = None
                continue
            gt = torch.tensor(g[k], dtype=torch.float64) * factor
            if gt.ndim > 1 and k in shapes_f:
                gt = gt - gt.mean(dim=tuple(range(1, gt.ndim)), keepdim=True)
            tp[k].grad = gt
        torch.nn.utils.clip_grad_norm_([q for q in tf if q.grad is not None], clip_f)
        topt.step()
        sched.step()
        opt.end_epoch()
        for k in init:
            np.testing.assert_allclose({**ours_f, **ours_b}[k], tp[k].detach().numpy(),
                                       rtol=1e-10, atol=1e-12)
        assert opt.lrs["fwd"] == pytest.approx(topt.param_groups[0]["lr"], rel=1e-10)


def _reference_sgd(params, grads_seq, lr, momentum, wd, clip, centralize, warmup):
    """The SGD update written out the plain way (copy, warm-up scale, centralize, clip, weight
    decay, momentum, p -= η b), one temporary per operation: what Optimizer.step must equal
    bit for bit, however it arranges its passes."""
    params = {k: v.copy() for k, v in params.items()}
    bufs = {}
    for t, grads in enumerate(grads_seq):
        factor = (t + 1) / warmup if t < warmup else 1.0
        work = {}
        for k, g in grads.items():
            g = g * factor if factor != 1.0 else g.copy()
            if centralize and g.ndim > 1:
                g = g - g.mean(axis=tuple(range(1, g.ndim)), keepdims=True)
            work[k] = g
        sq = None
        for g in work.values():
            s = g.reshape(-1) @ g.reshape(-1)
            sq = s if sq is None else sq + s
        if clip > 0:
            coef = np.minimum(clip / (np.sqrt(sq) + 1e-6), 1.0)
            work = {k: g * coef for k, g in work.items()}
        for k, g in work.items():
            if wd:
                g = g + wd * params[k]
            if momentum:
                bufs[k] = g.copy() if k not in bufs else bufs[k] * momentum + g
                g = bufs[k]
            params[k] = params[k] - lr * g
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,wd,clip,centralize,warmup", [
    (0.0, 0.0, 0.0, False, 0), (0.0, 0.0, 0.5, False, 0), (0.0, 0.0, 1e3, False, 0),
    (0.9, 0.0, 0.5, False, 0), (0.9, 1e-3, 0.0, False, 0), (0.9, 1e-3, 0.5, True, 0),
    (0.0, 0.0, 0.5, False, 2), (0.9, 0.0, 0.5, True, 3)])
def test_sgd_equals_the_plain_sequence_bit_for_bit(dtype, momentum, wd, clip, centralize, warmup):
    """Optimizer.step skips a copy and a temporary where it can (clipping makes the copy;
    the momentum update reuses the gradient's copy); the parameters must come out exactly as
    the plain sequence gives them, and the caller's gradients must stay untouched."""
    rng = np.random.default_rng(3)
    shapes = {"w": (5, 4), "b": (5,), "v": (3, 2, 2)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads_seq = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
                 for _ in range(4)]
    want = _reference_sgd(params, grads_seq, 0.1, momentum, wd, clip, centralize, warmup)
    mine = {k: v.copy() for k, v in params.items()}
    opt = Optimizer([ParamGroup("g", mine, lr=0.1, momentum=momentum, weight_decay=wd, clip=clip,
                                centralize=centralize)], warmup=warmup)
    for grads in grads_seq:
        before = {k: v.copy() for k, v in grads.items()}
        opt.step(grads)
        for k in grads:
            np.testing.assert_array_equal(grads[k], before[k], err_msg=f"caller's gradient {k} changed")
    for k in shapes:
        assert mine[k].dtype == dtype
        np.testing.assert_array_equal(mine[k], want[k], err_msg=f"{k}: mine vs the plain sequence")
