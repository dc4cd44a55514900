"""Presets of public implementations (ccledu/peer_presets.py, issue #22).

For every preset: the peer's computation written out here from its published equations (NumPy,
float64, nothing of ccledu's rules called), ccledu's gradients equal to it to 1e-10; where
PyTorch is installed, the peer's update re-expressed in PyTorch (autograd, its own layer
functions) gives the same gradients; a trace recorded with the preset holds its options and
``verify`` recomputes it.
"""
import numpy as np
import pytest

from ccledu import peer_presets
from ccledu.models import build_model
from ccledu.rules import get_rule
from ccledu.trace import verify_trace, write_trace

TOL = 1e-10


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-300))


def preset_rule(name, rule, **extra):
    opts = peer_presets.settings(name, rule).get("rule_options", {})
    opts.update(extra)
    return get_rule(rule, **opts)


def softplus(t):
    return np.logaddexp(0.0, t)


def sig(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def mnist_like(rng, n, d=40, c=10):
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    y_neg = (y + rng.integers(1, c, n)) % c
    return x, y, y_neg


def ff_model(spec, seed=1):
    return build_model(spec, activation="relu", bias=True, seed=seed, dtype="float64")


def weights(model):
    return [(b.main.params["weight"].copy(), b.main.params["bias"].copy()) for b in model.blocks[:-1]]


# ------------------------------------------------------------------------------------------------
# loeweX/Forward-Forward (src/ff_model.py), from its equations
# ------------------------------------------------------------------------------------------------

def loewex_reference(Ws, Wc, r0, x, y, y_neg, C=10, eps=1e-8, peer=0.03, beta=0.9):
    """The peer's step written out: RMS layer norm, relu with pass-through gradient, logits
    sum(h²) − D, BCE mean over the 2N rows, peer loss on a running mean of the positive rows,
    a bias-free head on the normalised layers 1.. of the neutral pass. Returns (grads, new r)."""
    N = x.shape[0]

    def rms(z):
        return z / (np.sqrt(np.mean(z ** 2, axis=1, keepdims=True)) + eps)

    def over(lab):
        out = x.copy()
        out[:, :C] = np.eye(C)[lab]
        return out

    z = rms(np.concatenate([over(y), over(y_neg)]))
    target = np.r_[np.ones(N), np.zeros(N)]
    grads, r_new = {}, []
    for l, (W, b) in enumerate(Ws):
        h = np.maximum(z @ W.T + b, 0.0)
        D = h.shape[1]
        logit = (h ** 2).sum(axis=1) - D
        dlogit = (sig(logit) - target) / (2 * N)             # d mean BCE / d logit
        dh = 2.0 * h * dlogit[:, None]
        r = beta * r0[l] + (1 - beta) * h[:N].mean(axis=0)
        dh[:N] += peer * (2.0 / D) * (r - r.mean()) * (1 - beta) / N
        r_new.append(r)
        grads[f"forward.{l}.weight"] = dh.T @ z                # relu gradient passed through
        grads[f"forward.{l}.bias"] = dh.sum(axis=0)
        z = rms(h)
    zn = x.copy()
    zn[:, :C] = 1.0 / C
    zn = rms(zn)
    feats = []
    for l, (W, b) in enumerate(Ws):
        zn = rms(np.maximum(zn @ W.T + b, 0.0))
        if l >= 1:
            feats.append(zn)
    F = np.concatenate(feats, axis=1)
    logits = F @ Wc.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    grads["head.weight"] = ((p - np.eye(C)[y]) / N).T @ F
    return grads, r_new


def loewex_setup(seed=0, N=6):
    rng = np.random.default_rng(seed)
    model = ff_model("mlp:40-12-10-9-10")
    rule = preset_rule("loewex", "ff").setup(model, seed=0)
    # a non-trivial head and running means (the preset starts them at 0 and 0.5)
    rule.head["head.weight"][...] = rng.standard_normal(rule.head["head.weight"].shape) * 0.3
    for k, m in rule.peer_means.items():
        m[...] = rng.uniform(0.0, 1.0, m.shape)
    x, y, y_neg = mnist_like(rng, N)
    x = np.abs(x) * 0.4                       # pixel-like, so some units are off and some on
    return model, rule, x, y, y_neg


def test_loewex_matches_its_equations():
    model, rule, x, y, y_neg = loewex_setup()
    Ws = weights(model)
    Wc = rule.head["head.weight"].copy()
    r0 = [rule.peer_means[f"state.{l}.peer_mean"].copy() for l in range(3)]
    ref, r_new = loewex_reference(Ws, Wc, r0, x, y, y_neg)
    res = rule.local_step(model, x, y, y_neg)
    assert set(res.grads) == set(ref)          # the unused classifier block gets no gradient
    for k in ref:
        assert rel(res.grads[k], ref[k]) < TOL, k
    for l in range(3):
        assert rel(rule.peer_means[f"state.{l}.peer_mean"], r_new[l]) < TOL
    # each variant matters: switching any one off changes the gradients
    for opt, alt in [("norm", "l2"), ("theta_mode", "fixed"), ("loss_mean", "pairs"),
                     ("peer_norm", 0.0), ("relu_grad", "exact")]:
        m2, r2, *_ = loewex_setup()
        setattr(r2, opt, alt)
        if opt == "peer_norm":
            r2.peer_means = {}
        g2 = r2.local_step(m2, x, y, y_neg).grads
        assert max(rel(g2[k], ref[k]) for k in ref) > 1e-6, opt


def test_loewex_setup_and_preset_shapes():
    model = ff_model("mlp:40-12-10-9-10")
    rule = preset_rule("loewex", "ff").setup(model, seed=3)
    assert rule.head["head.weight"].shape == (10, 10 + 9) and not rule.head["head.weight"].any()
    assert all(np.all(m == 0.5) for m in rule.peer_means.values())
    for b in model.blocks[:-1]:                # N(0, 1/out) weights, zero biases
        W = b.main.params["weight"]
        assert not b.main.params["bias"].any()
        assert 0.5 < W.std() * np.sqrt(W.shape[0]) < 1.5
    assert set(rule.param_groups(model)) == {"forward", "head"}
    with pytest.raises(ValueError, match="at least 2 hidden blocks"):
        preset_rule("loewex", "ff").setup(ff_model("mlp:40-12-10"), seed=0)


def test_loewex_torch():
    torch = pytest.importorskip("torch")
    model, rule, x, y, y_neg = loewex_setup(seed=5)
    N, C = x.shape[0], 10
    Ws = [(torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True))
          for W, b in weights(model)]
    Wc = torch.tensor(rule.head["head.weight"].copy(), requires_grad=True)
    running = [torch.tensor(rule.peer_means[f"state.{l}.peer_mean"].copy()) for l in range(3)]

    class ReLUFullGrad(torch.autograd.Function):          # the peer's ReLU_full_grad
        @staticmethod
        def forward(ctx, inp):
            return inp.clamp(min=0)

        @staticmethod
        def backward(ctx, g):
            return g.clone()

    def layer_norm(z, eps=1e-8):                          # the peer's _layer_norm
        return z / (torch.sqrt(torch.mean(z ** 2, dim=-1, keepdim=True)) + eps)

    xt = torch.tensor(x)

    def sample(lab):
        s = xt.clone()
        s[:, :C] = torch.nn.functional.one_hot(torch.tensor(lab), C).double()
        return s

    bce = torch.nn.BCEWithLogitsLoss()
    z = torch.cat([sample(y), sample(y_neg)])
    posneg = torch.zeros(2 * N, dtype=torch.float64)
    posneg[:N] = 1
    z = layer_norm(z)
    loss = torch.zeros(1, dtype=torch.float64)
    for idx, (W, b) in enumerate(Ws):
        z = ReLUFullGrad.apply(torch.nn.functional.linear(z, W, b))
        mean_activity = torch.mean(z[:N], dim=0)
        running[idx] = running[idx].detach() * 0.9 + mean_activity * 0.1
        loss = loss + 0.03 * torch.mean((torch.mean(running[idx]) - running[idx]) ** 2)
        logits = torch.sum(z ** 2, dim=-1) - z.shape[1]
        loss = loss + bce(logits, posneg)
        z = layer_norm(z.detach())
    zn = xt.clone()
    zn[:, :C] = 1.0 / C
    zn = layer_norm(zn)
    feats = []
    with torch.no_grad():
        for idx, (W, b) in enumerate(Ws):
            zn = layer_norm(ReLUFullGrad.apply(torch.nn.functional.linear(zn, W, b)))
            if idx >= 1:
                feats.append(zn)
    out = torch.cat(feats, dim=-1) @ Wc.T
    out = out - torch.max(out, dim=-1, keepdim=True)[0]
    loss = loss + torch.nn.functional.cross_entropy(out, torch.tensor(y))
    loss.backward()
    res = rule.local_step(model, x, y, y_neg)
    for l, (W, b) in enumerate(Ws):
        assert rel(res.grads[f"forward.{l}.weight"], W.grad.numpy()) < TOL
        assert rel(res.grads[f"forward.{l}.bias"], b.grad.numpy()) < TOL
    assert rel(res.grads["head.weight"], Wc.grad.numpy()) < TOL
    for l in range(3):
        assert rel(rule.peer_means[f"state.{l}.peer_mean"], running[l].detach().numpy()) < TOL
    # the total loss is the peer's "Loss" (ff + 0.03 peer + classification)
    assert abs(float(res.loss) - float(loss.detach())) < 1e-10 * abs(float(loss.detach()))


# ------------------------------------------------------------------------------------------------
# mpezeshki/pytorch_forward_forward (main.py), from its equations
# ------------------------------------------------------------------------------------------------

def mpezeshki_reference(Ws, x, y, y_neg, C=10, eps=1e-4, theta=2.0):
    """Layer.forward: relu((x / (‖x‖ + 1e-4)) Wᵀ + b); goodness mean(h²); loss =
    mean(log(1 + exp(cat[θ − g⁺, g⁻ − θ]))); the overlay writes the batch's max value."""
    N = x.shape[0]
    vmax = x.max()

    def over(lab):
        out = x.copy()
        out[:, :C] = 0.0
        out[np.arange(N), lab] = vmax
        return out

    h = np.concatenate([over(y), over(y_neg)])
    sign = np.r_[np.ones(N), -np.ones(N)]
    grads = {}
    for l, (W, b) in enumerate(Ws):
        u = h / (np.linalg.norm(h, axis=1, keepdims=True) + eps)
        a = np.maximum(u @ W.T + b, 0.0)
        g = (a ** 2).mean(axis=1)
        t = sign * (theta - g)
        dg = -sign * sig(t) / (2 * N)
        dz = (2.0 / a.shape[1]) * a * dg[:, None] * (a > 0)
        grads[f"forward.{l}.weight"] = dz.T @ u
        grads[f"forward.{l}.bias"] = dz.sum(axis=0)
        h = a
    return grads


def mpezeshki_setup(seed=0, N=7):
    rng = np.random.default_rng(seed)
    model = ff_model("mlp:40-16-12-10")
    rule = preset_rule("mpezeshki", "ff").setup(model, seed=0)
    x, y, y_neg = mnist_like(rng, N)
    x[2, 30] = 4.0                           # the batch's maximum, in one sample only
    return model, rule, x, y, y_neg


def test_mpezeshki_matches_its_equations():
    model, rule, x, y, y_neg = mpezeshki_setup()
    ref = mpezeshki_reference(weights(model), x, y, y_neg)
    res = rule.local_step(model, x, y, y_neg)
    for k in ref:
        assert rel(res.grads[k], ref[k]) < TOL, k
    # ccledu's defaults (eps 1e-8, each sample's own max, sum/N) give other gradients
    for opt, alt in [("norm_eps", 1e-8), ("label_max", "sample"), ("loss_mean", "pairs")]:
        m2, r2, *_ = mpezeshki_setup()
        setattr(r2, opt, alt)
        g2 = r2.local_step(m2, x, y, y_neg).grads
        assert max(rel(g2[k], ref[k]) for k in ref) > 1e-6, opt


def test_mpezeshki_layerwise_schedule_matches_the_peers_greedy_training():
    """schedule='layerwise' (Net.train: layer 0 for its num_epochs steps, then layer 1 on the
    frozen layer 0), written out here with the peer's per-layer Adam(lr=0.03) and the
    gradients of :func:`mpezeshki_reference`: E = 6 epochs of one full batch, 3 per layer."""
    from ccledu.optim import Optimizer, ParamGroup
    model, rule, x, y, y_neg = mpezeshki_setup(seed=2)
    assert rule.schedule == "layerwise"
    Ws = [[W.copy(), b.copy()] for W, b in weights(model)]
    opt = Optimizer([ParamGroup("forward", model.parameters(), lr=0.03, optimizer="adam")])
    E, lr, (b1, b2), eps = 6, 0.03, (0.9, 0.999), 1e-8
    phases = []
    for epoch in range(1, E + 1):
        rule.begin_epoch(epoch, E)
        phases.append(rule.phase)
        res = rule.layerwise_step(model, x, y, y_neg)   # step() with the test's negatives
        assert not any(k.startswith(f"forward.{1 - rule.phase}.") for k in res.grads)
        opt.step(res.grads)
    assert phases == [0, 0, 0, 1, 1, 1]
    for l in (0, 1):                                       # the peer: one Adam per layer
        m = [np.zeros_like(p) for p in Ws[l]]
        v = [np.zeros_like(p) for p in Ws[l]]
        for k in range(1, 4):
            g = mpezeshki_reference([tuple(w) for w in Ws], x, y, y_neg)
            for i, name in enumerate(("weight", "bias")):
                gi = g[f"forward.{l}.{name}"]
                m[i] = b1 * m[i] + (1 - b1) * gi
                v[i] = b2 * v[i] + (1 - b2) * gi * gi
                Ws[l][i] = Ws[l][i] - lr / (1 - b1 ** k) * m[i] / (np.sqrt(v[i]) / np.sqrt(1 - b2 ** k) + eps)
    for l, (W, b) in enumerate(weights(model)):
        assert rel(W, Ws[l][0]) < TOL and rel(b, Ws[l][1]) < TOL, l
    # trained both at once for the same six steps, layer 1 ends elsewhere
    m2, r2, *_ = mpezeshki_setup(seed=2)
    opt2 = Optimizer([ParamGroup("forward", m2.parameters(), lr=0.03, optimizer="adam")])
    for epoch in range(1, E + 1):
        opt2.step(r2.local_step(m2, x, y, y_neg).grads)
    assert rel(weights(m2)[1][0], Ws[1][0]) > 1e-6


def test_mpezeshki_negatives_are_one_permutation_for_the_whole_run():
    """negatives='permuted_once' (main.py: x_neg = overlay_y_on_x(x, y[randperm]), made once):
    the first step draws y[π]; every later step, in both layers' phases, reuses it, and the
    gradients are those of the peer's equations with those negatives."""
    rng = np.random.default_rng(3)
    model = ff_model("mlp:40-16-12-10")
    rule = preset_rule("mpezeshki", "ff").setup(model, seed=5)
    assert rule.negatives == "permuted_once"
    x, y, _ = mnist_like(rng, 60)
    negs = []
    for epoch in range(1, 5):
        rule.begin_epoch(epoch, 4)
        Ws = weights(model)
        res = rule.step(model, x, y)                 # draws (epoch 1) or reuses the negatives
        negs.append(np.array(rule.y_neg))
        ref = mpezeshki_reference(Ws, x, y, negs[-1])
        for k in res.grads:
            if k in ref:
                assert rel(res.grads[k], ref[k]) < TOL, (epoch, k)
        for k, g in res.grads.items():               # a plain SGD step, so the weights move
            p = model.parameters()[k]
            p -= 0.05 * g
    assert all(np.array_equal(n, negs[0]) for n in negs)
    np.testing.assert_array_equal(np.sort(negs[0]), np.sort(y))     # a permutation of y
    assert 0 < np.sum(negs[0] == y) < len(y)        # some rows carry their own label
    assert not np.array_equal(negs[0], y)
    # the same seed draws the same permutation (so --resume needs nothing stored); another does not
    again = preset_rule("mpezeshki", "ff").setup(ff_model("mlp:40-16-12-10"), seed=5)
    np.testing.assert_array_equal(again.draw_negatives(y, 10), negs[0])
    other = preset_rule("mpezeshki", "ff").setup(ff_model("mlp:40-16-12-10"), seed=6)
    assert not np.array_equal(other.draw_negatives(y, 10), negs[0])
    # another batch is refused, and the trainer is told not to shuffle and to use one batch
    with pytest.raises(ValueError, match="same batch"):
        rule.draw_negatives(y[::-1].copy(), 10)
    assert rule.shuffle_batches(60, 60) is False and rule.shuffle_batches(100, 60) is False
    with pytest.raises(ValueError, match="--batch-size 60"):
        rule.shuffle_batches(30, 60)
    assert get_rule("ff").shuffle_batches(30, 60) is True


def test_permuted_once_trains_on_one_unshuffled_batch(tmp_path):
    """Through the trainer: the batch is the training split in its order at every step, so
    the negatives drawn at the first step stay valid for the whole run."""
    from ccledu.train import TrainConfig, run
    cfg = TrainConfig(rule="ff", model="mlp:784-8-10", data="mnist", preset="mpezeshki",
                      epochs=4, limit_train=120, limit_test=40, eval_every=2, out=str(tmp_path / "r"))
    res = run(cfg, progress=False)
    assert len(res["history"]) == 4
    assert all(np.isfinite(h["train_loss"]) for h in res["history"])


def test_mpezeshki_peer_seeds_script_trains(tmp_path):
    """benchmarks/results/ff_presets/mpezeshki_peer_seeds.py (the peer's training re-expressed in
    PyTorch, to measure its seed spread on a GPU): on 600 MNIST images, 40 steps per layer, both
    layers' losses fall and the JSON holds what the docs promise."""
    pytest.importorskip("torch")
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks/results/ff_presets/mpezeshki_peer_seeds.py"
    out = tmp_path / "peer.json"
    res = subprocess.run([sys.executable, str(script), "--steps", "40", "--limit", "600", "--seeds",
                          "3", "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "test error over 1 seeds" in res.stdout
    run = json.loads(out.read_text())["runs"][0]
    assert run["seed"] == 3 and 0 <= run["test_error"] <= 1 and 0 <= run["train_error"] <= 1
    assert len(run["layer_losses_first_last"]) == 2
    for first, last in run["layer_losses_first_last"]:
        assert last < first


def test_ff_schedule_option_is_checked():
    with pytest.raises(ValueError, match="schedule must be one of 'together', 'layerwise'"):
        get_rule("ff", schedule="greedy")


def test_mpezeshki_torch():
    torch = pytest.importorskip("torch")
    model, rule, x, y, y_neg = mpezeshki_setup(seed=4)
    xt = torch.tensor(x)

    def overlay_y_on_x(xx, yy):                           # the peer's function
        x_ = xx.clone()
        x_[:, :10] *= 0.0
        x_[range(xx.shape[0]), yy] = xx.max()
        return x_

    h_pos, h_neg = overlay_y_on_x(xt, torch.tensor(y)), overlay_y_on_x(xt, torch.tensor(y_neg))
    res = rule.local_step(model, x, y, y_neg)
    for l, (W0, b0) in enumerate(weights(model)):
        W = torch.tensor(W0, requires_grad=True)
        b = torch.tensor(b0, requires_grad=True)

        def fwd(inp):
            x_direction = inp / (inp.norm(2, 1, keepdim=True) + 1e-4)
            return torch.relu(torch.mm(x_direction, W.T) + b.unsqueeze(0))

        g_pos = fwd(h_pos).pow(2).mean(1)
        g_neg = fwd(h_neg).pow(2).mean(1)
        loss = torch.log(1 + torch.exp(torch.cat([-g_pos + 2.0, g_neg - 2.0]))).mean()
        loss.backward()
        assert rel(res.grads[f"forward.{l}.weight"], W.grad.numpy()) < TOL
        assert rel(res.grads[f"forward.{l}.bias"], b.grad.numpy()) < TOL
        assert abs(float(res.terms[f"ff/{l}"]) - float(loss)) < 1e-12
        h_pos, h_neg = fwd(h_pos).detach(), fwd(h_neg).detach()


# ------------------------------------------------------------------------------------------------
# BioTorch FA / DFA (dense and convolutional feedback)
# ------------------------------------------------------------------------------------------------

def test_biotorch_fa_matches_its_equations():
    rng = np.random.default_rng(0)
    model = build_model("mlp:20-16-12-5", activation="tanh", bias=True, seed=2, dtype="float64")
    rule = preset_rule("biotorch", "fa").setup(model, seed=0)
    for l in (1, 2):                          # xavier bound of W_l's shape
        B = rule.fixed[f"fixed.{l}.weight"]
        bound = np.sqrt(6.0 / sum(B.shape))
        assert np.abs(B).max() <= bound and np.abs(B).max() > 0.8 * bound
    x, y = rng.standard_normal((9, 20)), rng.integers(0, 5, 9)
    Ws = [(b.main.params["weight"], b.main.params["bias"]) for b in model.blocks]
    Bs = [None] + [rule.fixed[f"fixed.{l}.weight"] for l in (1, 2)]
    acts, zs = [x], []
    for l, (W, b) in enumerate(Ws):
        z = acts[-1] @ W.T + b
        zs.append(z)
        acts.append(np.tanh(z) if l < 2 else z)
    p = np.exp(zs[-1] - zs[-1].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    delta = (p - np.eye(5)[y]) / 9
    ref = {}
    for l in (2, 1, 0):
        ref[f"forward.{l}.weight"] = delta.T @ acts[l]
        ref[f"forward.{l}.bias"] = delta.sum(0)
        if l:
            delta = (delta @ Bs[l]) * (1 - np.tanh(zs[l - 1]) ** 2)
    res = rule.step(model, x, y)
    for k in ref:
        assert rel(res.grads[k], ref[k]) < TOL, k


def conv_net(seed=3):
    return build_model("cnn:2x8x8-c3-c4-6", activation="relu", bias=False, seed=seed, dtype="float64")


def kernel_signal_loops(e, K, shape, k, stride, pad):
    """BioTorch's DFA conv hook, with loops: the error e (N, C) at every output position of
    the consumer conv, carried back to its input (N, ch, H, W) through the kernel K (C, ch, k, k)."""
    N, C = e.shape
    ch, H, W = shape
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    g = np.zeros((N, ch, H + 2 * pad, W + 2 * pad))
    for i in range(OH):
        for j in range(OW):
            g[:, :, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum("nc,cduv->nduv", e, K)
    return g[:, :, pad:pad + H, pad:pad + W]


def test_biotorch_dfa_kernel_signal_matches_loops():
    rng = np.random.default_rng(1)
    model = conv_net()
    rule = preset_rule("biotorch", "dfa").setup(model, seed=0)
    K = rule.fixed["fixed.0.weight"]
    assert K.shape == (6, 3, 3, 3)                         # (C, channels of a_0, k, k)
    assert rule.fixed["fixed.1.weight"].shape == (int(np.prod(model.shapes[1])), 6)  # dense into the classifier
    assert np.abs(K).max() <= np.sqrt(6.0 / (3 * 9 + 6 * 9))
    e = rng.standard_normal((4, 6))
    conv = model.blocks[1].main
    ref = kernel_signal_loops(e, K, model.shapes[0], conv.kernel_size, conv.stride, conv.padding)
    assert rel(rule.signal(model, 0, e), ref) < TOL
    D = rule.fixed["fixed.1.weight"]
    assert rel(rule.signal(model, 1, e), (e @ D.T).reshape((4,) + tuple(model.shapes[1]))) < TOL
    # the weight-shared special case of a dense D_0: the same map written as a matrix
    Ddense = np.stack([kernel_signal_loops(np.eye(6)[[c]], K, model.shapes[0], 3, 1, 1).ravel()
                       for c in range(6)], axis=1)
    assert rel(rule.signal(model, 0, e).reshape(4, -1), e @ Ddense.T) < TOL


def test_biotorch_dfa_conv_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(2)
    model = conv_net(seed=5)
    rule = preset_rule("biotorch", "dfa").setup(model, seed=1)
    x, y = rng.standard_normal((5, 2, 8, 8)), rng.integers(0, 6, 5)
    res = rule.step(model, x, y)
    W = [torch.tensor(b.main.params["weight"].copy(), requires_grad=True) for b in model.blocks]
    K = torch.tensor(rule.fixed["fixed.0.weight"].copy())
    D1 = torch.tensor(rule.fixed["fixed.1.weight"].copy())      # (|a_1|, C); BioTorch: its transpose
    xt = torch.tensor(x)
    # forward as ccledu's blocks: conv (pad 1) -> relu -> maxpool 2, twice, then the classifier
    a0 = F.max_pool2d(torch.relu(F.conv2d(xt, W[0], padding=1)), 2)
    a1 = F.max_pool2d(torch.relu(F.conv2d(a0.detach(), W[1], padding=1)), 2)
    logits = a1.detach().flatten(1) @ W[2].T
    loss = F.cross_entropy(logits, torch.tensor(y))
    loss.backward(inputs=[W[2]])
    e = (torch.softmax(logits, 1) - F.one_hot(torch.tensor(y), 6).double()).detach() / 5
    # BioTorch's hooks: the classifier sends e @ weight_backward to its input a_1; conv 1 sends
    # conv2d_input(weight_backward, e repeated over its output positions) to its input a_0
    a1.backward((e @ D1.T).reshape(a1.shape), inputs=[W[1]])
    out_grad = e[:, :, None, None].repeat(1, 1, a0.shape[2], a0.shape[3])   # conv 1: stride 1, pad 1
    g0 = torch.nn.grad.conv2d_input(a0.shape, K, out_grad, stride=1, padding=1)
    a0.backward(g0, inputs=[W[0]])
    for l in range(3):
        assert rel(res.grads[f"forward.{l}.weight"], W[l].grad.numpy()) < TOL, l


# ------------------------------------------------------------------------------------------------
# CCL warm-up as the public training loop counts it
# ------------------------------------------------------------------------------------------------

def public_factors(steps_per_epoch, epochs, warmup):
    """``loss *= (batch_idx + 1) / warmup`` while ``train_steps < warmup`` (batch_idx restarts
    every epoch)."""
    out, t = [], 0
    for _ in range(epochs):
        for b in range(steps_per_epoch):
            out.append((b + 1) / warmup if t < warmup else 1.0)
            t += 1
    return out


def run_optimizer(mode, grads_seq, steps_per_epoch, warmup, lr=0.5, momentum=0.8):
    from ccledu.optim import Optimizer, ParamGroup
    p = {"w": np.zeros(3)}
    opt = Optimizer([ParamGroup("forward", p, lr=lr, momentum=momentum)], warmup=warmup,
                    warmup_mode=mode)
    factors = []
    for t, g in enumerate(grads_seq):
        factors.append(float(opt.step({"w": g})["forward"]["warmup_factor"]))
        if (t + 1) % steps_per_epoch == 0:
            opt.end_epoch()
    return p["w"], factors


def test_public_warmup_matches_the_loop():
    rng = np.random.default_rng(0)
    S, E, Wu = 4, 3, 10                          # warm-up longer than an epoch
    grads = [rng.standard_normal(3) for _ in range(S * E)]
    w, factors = run_optimizer("epoch", grads, S, Wu)
    expected = public_factors(S, E, Wu)
    assert factors == pytest.approx(expected, abs=0)
    # the public loop's update: scaled loss -> SGD with momentum
    ref, buf = np.zeros(3), None
    for g, f in zip(grads, expected):
        g = g * f
        buf = g.copy() if buf is None else 0.8 * buf + g
        ref = ref - 0.5 * buf
    assert rel(w, ref) < TOL
    # the global count differs exactly when the warm-up is longer than an epoch
    _, glob = run_optimizer("global", grads, S, Wu)
    assert glob != expected
    assert run_optimizer("global", grads, S, 3)[1] == public_factors(S, E, 3)
    assert run_optimizer("epoch", grads, S, 3)[1] == public_factors(S, E, 3)


def test_public_warmup_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    S, E, Wu = 3, 3, 7
    target = rng.standard_normal((S * E, 3))
    w_t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w_t], lr=0.3, momentum=0.5)
    train_steps = 0
    grads = []
    for _ in range(E):
        for batch_idx in range(S):
            opt.zero_grad()
            loss = ((w_t - torch.tensor(target[train_steps])) ** 2).sum()
            grads.append(torch.autograd.grad(loss, w_t, retain_graph=True)[0].numpy().copy())
            if train_steps < Wu:
                loss = loss * (batch_idx + 1) / Wu
            loss.backward()
            opt.step()
            train_steps += 1
    # ccledu's optimiser, fed the unscaled gradients at the same points
    from ccledu.optim import Optimizer, ParamGroup
    p = {"w": np.zeros(3)}
    o = Optimizer([ParamGroup("forward", p, lr=0.3, momentum=0.5)], warmup=Wu, warmup_mode="epoch")
    for t in range(S * E):
        g = 2 * (p["w"] - target[t])
        assert rel(g, grads[t]) < TOL
        o.step({"w": g})
        if (t + 1) % S == 0:
            o.end_epoch()
    assert rel(p["w"], w_t.detach().numpy()) < TOL


def test_public_preset_trains_with_epoch_warmup():
    from ccledu.train import TrainConfig, build_optimizer, resolve
    cfg = resolve(TrainConfig(rule="ccl", model="mlp:784-16-10", preset="public"))
    assert cfg.warmup_mode == "epoch"
    model = build_model(cfg.model, activation=cfg.activation, seed=0)
    rule = get_rule("ccl").setup(model, seed=0)
    assert build_optimizer(cfg, model, rule).warmup_mode == "epoch"
    with pytest.raises(ValueError, match="warmup_mode"):
        from ccledu.optim import Optimizer, ParamGroup
        Optimizer([ParamGroup("f", {"w": np.zeros(1)}, lr=1.0)], warmup_mode="batch")


def _peer_cooldown(lr, epoch, epochs):
    """loeweX's get_linear_cooldown_lr, from its published form (epoch 0-based)."""
    return lr * 2 * (1 + epochs - epoch) / epochs if epoch > epochs // 2 else lr


@pytest.mark.parametrize("E", [1, 2, 7, 10])
def test_loewex_cooldown_matches_the_peer_schedule(E):
    """The learning rate of every step of every epoch equals the peer's, set at each epoch's
    start for both groups, and the parameters follow the SGD update with those rates exactly."""
    from ccledu.optim import Optimizer, ParamGroup
    from ccledu.train import TrainConfig, build_optimizer, resolve, validate
    rng = np.random.default_rng(3)
    p = {"w": rng.standard_normal(4), "h": rng.standard_normal(2)}
    w_ref, h_ref = p["w"].copy(), p["h"].copy()
    o = Optimizer([ParamGroup("forward", {"w": p["w"]}, lr=1e-3),
                   ParamGroup("feedback", {"h": p["h"]}, lr=1e-2)], cooldown="linear", epochs=E)
    for epoch in range(E):
        for _ in range(3):
            gw, gh = rng.standard_normal(4), rng.standard_normal(2)
            info = o.step({"w": gw, "h": gh})
            assert info["forward"]["lr"] == _peer_cooldown(1e-3, epoch, E)
            assert info["feedback"]["lr"] == _peer_cooldown(1e-2, epoch, E)
            w_ref -= _peer_cooldown(1e-3, epoch, E) * gw
            h_ref -= _peer_cooldown(1e-2, epoch, E) * gh
        o.end_epoch()
    assert rel(p["w"], w_ref) < 1e-15 and rel(p["h"], h_ref) < 1e-15
    # the preset turns it on, and the trainer hands the run's length to the optimiser
    cfg = resolve(validate(TrainConfig(rule="ff", model="mlp:784-16-16-10", preset="loewex",
                                       epochs=E)))
    assert cfg.cooldown == "linear" and cfg.cosine_tmax == 0
    model = build_model(cfg.model, activation=cfg.activation, seed=0)
    rule = get_rule("ff", **cfg.rule_options).setup(model, seed=0)
    built = build_optimizer(cfg, model, rule)
    assert (built.cooldown, built.epochs) == ("linear", E)
    for epoch in range(1, E):
        lrs = built.end_epoch()
        assert lrs["forward"] == _peer_cooldown(1e-3, epoch, E)


def test_loewex_inputs_are_pixels():
    """inputs='pixels' (the loewex preset) feeds x/255, as the peer's bare ToTensor does."""
    from ccledu import data as D
    from ccledu.train import TrainConfig, load_splits, resolve, validate
    cfg = resolve(validate(TrainConfig(rule="ff", model="mlp:784-16-16-10", preset="loewex")))
    assert cfg.inputs == "pixels"
    (xp, yp), _, (xt, _) = load_splits(cfg, (784,))             # the path run() takes
    ds = D.load_dataset("mnist")
    perm = np.random.default_rng(cfg.seed).permutation(len(ds.train_y))
    n_val = int(round(cfg.val_fraction * len(ds.train_y)))
    raw = ds.train_x[perm[n_val:]].reshape(-1, 784).astype(np.float32) / np.float32(255)
    assert np.array_equal(yp, ds.train_y[perm[n_val:]])
    assert np.abs(xp - raw).max() < 1e-6 and xp.min() >= -1e-7 and xp.max() <= 1 + 1e-6
    assert np.abs(xt - ds.test_x.reshape(-1, 784) / 255.0).max() < 1e-6
    with pytest.raises(ValueError, match="--inputs"):
        validate(TrainConfig(inputs="raw"))


def test_cooldown_bad_settings_are_clear_errors():
    from ccledu.optim import Optimizer, ParamGroup
    from ccledu.train import TrainConfig, validate
    g = [ParamGroup("f", {"w": np.zeros(1)}, lr=1.0)]
    with pytest.raises(ValueError, match="cooldown must be 'none' or 'linear'"):
        Optimizer(g, cooldown="cosine")
    with pytest.raises(ValueError, match="choose one"):
        Optimizer(g, cooldown="linear", cosine_tmax=10, epochs=10)
    with pytest.raises(ValueError, match="needs the run's length"):
        Optimizer(g, cooldown="linear")
    with pytest.raises(ValueError, match="--cooldown"):
        validate(TrainConfig(cooldown="step"))
    with pytest.raises(ValueError, match="--cosine-tmax 0 or --cooldown none"):
        validate(TrainConfig(cooldown="linear", cosine_tmax=5))


def test_loewex_cooldown_torch():
    """Against torch.optim.SGD (momentum, weight decay, two groups) driven by the peer's
    update_learning_rate loop."""
    torch = pytest.importorskip("torch")
    from ccledu.optim import Optimizer, ParamGroup
    E, S = 6, 4
    rng = np.random.default_rng(5)
    w0, h0 = rng.standard_normal(5), rng.standard_normal(3)
    grads = rng.standard_normal((E * S, 8))
    wt = torch.tensor(w0, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    opt = torch.optim.SGD([{"params": [wt], "lr": 1e-3, "weight_decay": 3e-4, "momentum": 0.9},
                           {"params": [ht], "lr": 1e-2, "weight_decay": 3e-3, "momentum": 0.9}])
    p = {"w": w0.copy(), "h": h0.copy()}
    o = Optimizer([ParamGroup("forward", {"w": p["w"]}, lr=1e-3, momentum=0.9, weight_decay=3e-4),
                   ParamGroup("feedback", {"h": p["h"]}, lr=1e-2, momentum=0.9,
                              weight_decay=3e-3)], cooldown="linear", epochs=E)
    t = 0
    for epoch in range(E):
        opt.param_groups[0]["lr"] = _peer_cooldown(1e-3, epoch, E)
        opt.param_groups[1]["lr"] = _peer_cooldown(1e-2, epoch, E)
        for _ in range(S):
            opt.zero_grad()
            wt.grad = torch.tensor(grads[t, :5].copy())
            ht.grad = torch.tensor(grads[t, 5:].copy())
            opt.step()
            o.step({"w": grads[t, :5], "h": grads[t, 5:]})
            t += 1
        o.end_epoch()
    assert rel(p["w"], wt.detach().numpy()) < TOL and rel(p["h"], ht.detach().numpy()) < TOL


# ------------------------------------------------------------------------------------------------
# The table, and traces of every preset
# ------------------------------------------------------------------------------------------------

def test_table_and_preset_flag():
    from ccledu.train import TrainConfig, resolve, sources
    assert peer_presets.names() == ["biotorch", "loewex", "mpezeshki", "public"]
    assert peer_presets.rules_of("biotorch") == ["dfa", "fa"]
    for (name, rule), e in peer_presets.PEERS.items():
        assert e["peer"] and e["reproduces"], (name, rule)
        get_rule(rule, **e["settings"].get("rule_options", {}))    # valid options
    given = TrainConfig(rule="ff", lr_forward=0.5, preset="loewex",
                        rule_options={"peer_norm": 0.0})
    cfg = resolve(given)
    assert cfg.model == "mlp:784-1000-1000-1000-10" and cfg.lr_forward == 0.5  # the caller's wins
    assert cfg.rule_options["peer_norm"] == 0.0 and cfg.rule_options["norm"] == "rms"
    assert cfg.val_fraction == pytest.approx(1 / 6) and cfg.weight_decay_forward == 3e-4
    assert sources(given)["weight_decay_forward"] == "preset loewex"
    assert sources(given)["lr_forward"] == "user"
    with pytest.raises(ValueError, match="has no preset 'loewex'"):
        resolve(TrainConfig(rule="ccl", preset="loewex"))
    with pytest.raises(ValueError, match="no peer preset"):
        peer_presets.lookup("nope", "ff")
    assert set(peer_presets.named_for("ff")) == {"loewex", "mpezeshki"}


@pytest.mark.parametrize("name, rule, spec", [
    ("loewex", "ff", "mlp:784-12-10-8-10"),
    ("mpezeshki", "ff", "mlp:784-12-10-10"),
    ("biotorch", "fa", "mlp:784-12-10"),
    ("biotorch", "dfa", "cnn:1x28x28-c3-c4-10"),
    ("public", "ccl", "mlp:784-12-10"),
])
def test_trace_records_and_verify_recomputes(tmp_path, name, rule, spec):
    s = peer_presets.settings(name, rule)
    opts = s.get("rule_options", {})
    path = tmp_path / f"{name}-{rule}.npz"
    meta = write_trace(path, rule, spec, 4, seed=0, dtype="float64",
                       activation=s.get("activation", "elu"), data="mnist", rule_options=opts,
                       bias=bool(s.get("bias", False)))
    for k, v in opts.items():                  # every option recorded as used
        assert meta["loss"][k] == v, k
    report = verify_trace(path)
    assert all(r.ok for r in report), [(r.tensor, r.max_rel) for r in report if not r.ok]
    names = {r.tensor for r in report}
    assert any(n.startswith("grad/") for n in names)
    if name == "loewex":
        assert "grad/head.weight" in names and "loss/peer/0" in names
    # a changed option is caught: the file's gradients no longer match
    if opts:
        data = dict(np.load(path, allow_pickle=False))
        import json
        m = json.loads(str(data["meta"]))
        flip = {"loewex": ("norm", "l2"), "mpezeshki": ("norm_eps", 1e-8),
                "biotorch": ("feedback_init", "uniform")}[name]
        if rule == "dfa":
            flip = ("conv_feedback", "dense")
        m["loss"][flip[0]] = flip[1]
        data["meta"] = np.array(json.dumps(m))
        bad = tmp_path / "bad.npz"
        np.savez(bad, **data)
        if flip[0] == "feedback_init":         # the draw is replaced by the file's matrices
            assert all(r.ok for r in verify_trace(bad))
        else:
            try:
                rows = verify_trace(bad)
                assert not all(r.ok for r in rows)
            except Exception as e:             # a kernel/dense shape clash is also a refusal
                assert "fixed.0.weight" in str(e) or "shape" in str(e), e


def test_command_line(tmp_path, capsys):
    from ccledu import cli
    out = tmp_path / "m.npz"
    assert cli.main(["trace", "--rule", "ff", "--preset", "mpezeshki", "--model", "mlp:784-8-8-10",
                     "--out", str(out), "--data", "mnist"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert all(r.ok for r in verify_trace(out))
    import json
    meta = json.loads(str(np.load(out)["meta"]))
    assert meta["loss"]["norm_eps"] == 1e-4 and meta["loss"]["label_max"] == "batch"
    assert cli.main(["trace", "--rule", "fa", "--preset", "mpezeshki", "--model", "mlp:8-4",
                     "--out", str(out)]) == 2
    assert "has no preset 'mpezeshki'" in capsys.readouterr().err
    run = tmp_path / "run"           # train: the preset's settings, the caller's flags on top
    assert cli.main(["train", "--rule", "ff", "--preset", "mpezeshki", "--model",
                     "mlp:784-16-16-10", "--epochs", "1", "--limit-train", "200",
                     "--limit-test", "100", "--batch-size", "100", "--out", str(run),
                     "--quiet"]) == 2          # its negatives need one batch of all 200 ...
    err = capsys.readouterr().err
    assert "negatives='permuted_once'" in err and "--batch-size 200" in err and "Traceback" not in err
    assert cli.main(["train", "--rule", "ff", "--preset", "mpezeshki", "--model",
                     "mlp:784-16-16-10", "--epochs", "1", "--limit-train", "200",
                     "--limit-test", "100", "--out", str(run), "--quiet"]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["config"]["preset"] == "mpezeshki" and saved["config"]["rule_options"]["norm_eps"] == 1e-4
    capsys.readouterr()
    assert peer_presets.main(["show", "loewex"]) == 0
    text = capsys.readouterr().out
    assert "src/ff_model.py" in text and "differs:" in text
    assert peer_presets.main(["show", "loewex", "--rule", "ccl"]) == 2
    assert "for rule(s) ff" in capsys.readouterr().err
