"""PyTorch implementations of the same training steps, used as the speed peer.

Each ``make_step(rule, kind, ...)`` returns a closure that runs one full training step (forward,
credit assignment, clipping, SGD update) on fixed tensors, mirroring what ccledu computes for
that rule. PyTorch's autograd does the differentiation; the peers follow the same algorithm and
FLOP count rather than ccledu's code. The peers of the rules added after ff (drtp, sign, kp and
the target-propagation family) also accept ccledu's weights and random draws, and
tests/test_torch_peers.py checks in float64 that one step of each gives ccledu's parameters to
~1e-8 (the first five are checked only as timing peers). PyTorch is optional: this module is
imported only by the benchmark harness and that test.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _act(name):
    return {"elu": F.elu, "relu": F.relu, "tanh": torch.tanh}[name]


def _uniform(shape, fan_in, g):
    b = 1.0 / fan_in ** 0.5
    return ((torch.rand(shape, generator=g) * 2 - 1) * b).requires_grad_(True)


class _FAFunc(torch.autograd.Function):
    """Linear map whose input gradient uses a fixed matrix B instead of W."""

    @staticmethod
    def forward(ctx, x, W, B):
        ctx.save_for_backward(x, B)
        return x @ W.T

    @staticmethod
    def backward(ctx, dy):
        x, B = ctx.saved_tensors
        return dy @ B, dy.T @ x, None


class _FAConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, B):
        ctx.save_for_backward(x, B)
        return F.conv2d(x, W, padding=W.shape[-1] // 2)

    @staticmethod
    def backward(ctx, dy):
        x, B = ctx.saved_tensors
        pad = B.shape[-1] // 2
        dx = torch.nn.grad.conv2d_input(x.shape, B, dy, padding=pad)
        dW = torch.nn.grad.conv2d_weight(x, B.shape, dy, padding=pad)
        return dx, dW, None


def build(kind, sizes=None, in_shape=None, channels=None, classes=10, seed=0):
    """Forward weights for an MLP (``sizes``) or a CNN (``in_shape``, ``channels``)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        return [_uniform((o, i), i, g) for i, o in zip(sizes[:-1], sizes[1:])]
    Ws, c = [], in_shape[0]
    for ch in channels:
        Ws.append(_uniform((ch, c, 3, 3), c * 9, g))
        c = ch
    side = in_shape[1] // 2 ** len(channels)
    Ws.append(_uniform((classes, c * side * side), c * side * side, g))
    return Ws


def _sgd(params, lr=0.01, clip=1.0):
    torch.nn.utils.clip_grad_norm_(params, clip)
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None


def make_step(rule, kind, x, y, sizes=None, channels=None, act="elu", seed=0, classes=None,
              weights=None, draws=None, options=None):
    """A closure running one training step of ``rule`` (every mlp/cnn rule of ccledu: 'bp', 'fa',
    'dfa', 'ccl', 'ff', 'drtp', 'sign', 'kp', and for MLPs 'dtp', 'drl', 'ldrl', 'fwdtp').

    ``classes``: C for a CNN (default 10; an MLP's C is ``sizes[-1]``). For the peers of the rules
    after ff (tests/test_torch_peers.py compares them with ccledu step for step):
    ``weights``, {ccledu name: tensor} (``forward.<l>.weight``, ``feedback.<l>.weight``,
    ``fixed.<l>.weight``), starts from those tensors (copied, in x's dtype) instead of drawing;
    ``draws``, a list of the step's random tensors in ccledu's order (a trace's ``input/``
    entries: brSF magnitudes, TP noise), is consumed instead of the peer's generator;
    ``options``, the rule's options under ccledu's names (ccledu's defaults otherwise).
    The closure's ``params`` attribute holds the peer's tensors under ccledu's names.
    """
    f = _act(act)
    C = int(y.max()) + 1 if kind == "mlp" and sizes is None else (sizes[-1] if sizes else classes or 10)
    Ws = build(kind, sizes=sizes, in_shape=tuple(x.shape[1:]), channels=channels, classes=C, seed=seed)
    given = dict(weights or {})
    Ws = [_leaf(given.get(f"forward.{l}.weight", W), x.dtype) for l, W in enumerate(Ws)]
    g = torch.Generator().manual_seed(seed + 1)
    L = len(Ws)

    def block(l, h, W=None, B=None):
        W = Ws[l] if W is None else W
        if kind == "mlp" or l == L - 1:
            h = h.reshape(h.shape[0], -1)
            z = _FAFunc.apply(h, W, B) if B is not None else h @ W.T
            return z if l == L - 1 else f(z)
        z = _FAConv.apply(h, W, B) if B is not None else F.conv2d(h, W, padding=1)
        return F.max_pool2d(f(z), 2)

    if rule in _NEW_PEERS:
        peer = _NEW_PEERS[rule](_Setting(rule, kind, x, y, C, Ws, block, f, g, given, draws,
                                         dict(options or {})))
        peer.step.params = peer.params
        return peer.step

    if rule == "bp":
        def step():
            h = x
            for l in range(L):
                h = block(l, h)
            F.cross_entropy(h, y).backward()
            _sgd(Ws)
        return _with_params(step, Ws)

    if rule == "fa":
        Bs = [torch.randn(W.shape, generator=g) / W[0].numel() ** 0.5 for W in Ws]

        def step():
            h = x
            for l in range(L):
                h = block(l, h, B=Bs[l] if l > 0 else None)
            F.cross_entropy(h, y).backward()
            _sgd(Ws)
        return _with_params(step, Ws)

    if rule == "dfa":
        hs = []
        h = x
        with torch.no_grad():
            for l in range(L - 1):
                h = block(l, h)
                hs.append(h.shape[1:])
        Ds = [torch.randn((int(torch.tensor(s).prod()), C), generator=g) / C ** 0.5 for s in hs]

        def step():
            outs, h = [], x
            for l in range(L):
                h = block(l, h.detach())
                outs.append(h)
            logits = outs[-1]
            with torch.no_grad():
                e = (F.softmax(logits, 1) - F.one_hot(y, C)) / len(y)
            total = (logits * e).sum()
            for l in range(L - 1):
                total = total + (outs[l].reshape(len(y), -1) * (e @ Ds[l].T)).sum()
            total.backward()
            _sgd(Ws)
        return _with_params(step, Ws)

    if rule == "ccl":
        if kind == "mlp":
            Vs = [_uniform((i, o), o, g) for i, o in zip(sizes[:-1], sizes[1:])]
        else:
            Vs = []
            c_in = x.shape[1]
            for ch in channels:
                Vs.append(_uniform((c_in, ch, 3, 3), ch * 9, g))
                c_in = ch
            Vs.append(_uniform((Ws[-1].shape[1], C), C, g))
        eye = torch.eye(C)
        Y = F.one_hot(y, C).float()

        def norm(t):
            t = t.reshape(t.shape[0], -1)
            return t / (t.norm(dim=1, keepdim=True) + 1e-8)

        def step():
            acts, h = [x], x
            for l in range(L):
                h = block(l, h.detach())
                acts.append(h)
            if kind == "mlp":
                sig = [eye]
                s = eye
                for l in range(L - 1, -1, -1):
                    s = s.detach() @ Vs[l].T
                    s = f(s) if l > 0 else s
                    sig.insert(0, s)
                loss = F.cross_entropy(acts[-1], y)
                for l in range(L):
                    A, S = acts[l].reshape(len(y), -1), sig[l]
                    loss = loss + F.mse_loss(A @ S.T, Y) / A.shape[1] * 0.5 * 256
            else:
                nb = len(channels)
                side = x.shape[2] // 2 ** nb
                s = f(eye @ Vs[-1].T).reshape(C, channels[-1], side, side)
                sig = [None] * (nb + 1)
                sig[nb] = s
                for l in range(nb - 1, -1, -1):
                    s = F.conv2d(F.interpolate(s.detach(), scale_factor=2, mode="nearest"), Vs[l], padding=1)
                    s = f(s) if l > 0 else s
                    sig[l] = s
                loss = F.cross_entropy(acts[-1], y)
                for l in range(nb + 1):
                    A, S = norm(acts[l]), norm(sig[l])
                    loss = loss + F.mse_loss(A @ S.T, Y) + 0.5 * F.mse_loss(A @ A.T, torch.eye(len(y))) \
                        + 0.5 * F.mse_loss(S @ S.T, eye)
            loss.backward()
            _sgd(Ws)
            _sgd(Vs)
        return _with_params(step, Ws)

    if rule == "ff":
        # the computation of ccledu's FF() step: the softmax head on the neutral input (label
        # entries v/C; only the head learns from it), then every hidden block on the stacked
        # [positive; negative] rows with its own threshold loss on the sum goodness, θ = 2.
        # Simplified: the label goes into the first C inputs with the batch maximum as "on"
        # value (ccledu: each sample's maximum, and a grating over the whole image for a CNN,
        # a few more element-wise passes on ccledu's side)
        theta = 2.0

        def overlay(xx, labels=None):
            xx = xx.clone().reshape(len(xx), -1)
            v = xx.max()
            xx[:, :C] = v / C if labels is None else F.one_hot(labels, C).float() * v
            return xx.reshape(x.shape)

        def step():
            with torch.no_grad():
                hz = overlay(x)
                for l in range(L - 1):
                    hz = block(l, norm_in(hz))
            loss = F.cross_entropy(block(L - 1, norm_in(hz)), y)
            neg = (y + torch.randint(1, C, y.shape, generator=g)) % C
            h = torch.cat([overlay(x, y), overlay(x, neg)])
            n = len(y)
            for l in range(L - 1):
                h = block(l, norm_in(h.detach()))
                good = h.reshape(2 * n, -1).pow(2).sum(1)
                loss = loss + F.softplus(theta - good[:n]).mean() + F.softplus(good[n:] - theta).mean()
            loss.backward()
            _sgd(Ws)
        return _with_params(step, Ws)

    raise ValueError(rule)


def norm_in(t):
    flat = t.reshape(t.shape[0], -1)
    return (flat / (flat.norm(dim=1, keepdim=True) + 1e-8)).reshape(t.shape)


# --------------------------------------------------------------------------------------------
# Peers of the rules added after ff. Each takes a _Setting and returns (step, params): the
# closure and {ccledu name: live tensor}. They follow ccledu's rule at its defaults operation
# for operation (the same matrix products, the same number of feedback iterations), so that
# tests/test_torch_peers.py can check them against ccledu to rounding error.
# --------------------------------------------------------------------------------------------

def _with_params(step, Ws):
    step.params = {f"forward.{l}.weight": W for l, W in enumerate(Ws)}
    return step


def _leaf(t, dtype):
    """A fresh trainable copy of ``t`` in ``dtype``."""
    return t.detach().to(dtype).clone().requires_grad_(True)


class _Setting:
    """What every new peer needs: the batch, the forward weights, the block function, and the
    sources of its other tensors (``own``: a given tensor or a fresh draw; ``draw``: a replayed
    random tensor or a fresh one)."""

    def __init__(self, rule, kind, x, y, C, Ws, block, f, g, given, draws, options):
        self.rule, self.kind, self.x, self.y, self.C = rule, kind, x, y, C
        self.Ws, self.block, self.f, self.g, self.L, self.N = Ws, block, f, g, len(Ws), len(y)
        self.given, self.options = given, options
        self.replay = None if draws is None else list(draws)
        self.Y = F.one_hot(y, C).to(x.dtype)

    def own(self, name, make):
        t = self.given.get(name)
        return (make() if t is None else t).detach().to(self.x.dtype).clone()

    def uniform(self, shape, bound):
        return (torch.rand(shape, generator=self.g, dtype=self.x.dtype) * 2 - 1) * bound

    def draw(self, make):
        return make() if self.replay is None else self.replay.pop(0).to(self.x.dtype)

    def option(self, name, default):
        return self.options.get(name, default)

    def forward_params(self):
        return {f"forward.{l}.weight": W for l, W in enumerate(self.Ws)}


class _Peer:
    def __init__(self, step, params):
        self.step, self.params = step, params


def _drtp_peer(s):
    """DRTP: the classifier learns from cross-entropy, hidden block l from the fixed projection
    of the one-hot target, Y D_lᵀ / N (computed every step, as ccledu does); inputs detached."""
    with torch.no_grad():
        h, sizes = s.x, []
        for l in range(s.L - 1):
            h = s.block(l, h)
            sizes.append(h[0].numel())
    Ds = [s.own(f"fixed.{l}.weight", lambda d=d: s.uniform((d, s.C), (6.0 / d) ** 0.5))
          for l, d in enumerate(sizes)]

    def step():
        outs, h = [], s.x
        for l in range(s.L):
            h = s.block(l, h.detach())
            outs.append(h)
        total = F.cross_entropy(outs[-1], s.y)
        for l in range(s.L - 1):
            total = total + (outs[l].reshape(s.N, -1) * (s.Y @ Ds[l].T / s.N)).sum()
        total.backward()
        _sgd(s.Ws)
    params = s.forward_params()
    params.update({f"fixed.{l}.weight": D for l, D in enumerate(Ds)})
    return _Peer(step, params)


def _sign_peer(s):
    """Sign symmetry: FA whose B_l is rebuilt from sign(W_l) at every step: uSF s_l·sign(W_l),
    s_l = 1/√(3·fan_in); brSF |M_l| ⊙ sign(W_l), |M_l| drawn afresh from U(±1/√fan_in) each
    step; frSF the same with |M_l| drawn once."""
    variant = s.option("variant", "usf")
    fan = [W[0].numel() for W in s.Ws]

    def magnitude(l):
        return s.uniform(s.Ws[l].shape, fan[l] ** -0.5).abs()
    Ms = {l: s.own(f"fixed.{l}.weight", lambda l=l: magnitude(l))
          for l in range(1, s.L)} if variant == "frsf" else {}

    def feedback(l):
        sign = torch.sign(s.Ws[l].detach())
        if variant == "usf":
            return sign / (3 * fan[l]) ** 0.5
        if variant == "brsf":
            return s.draw(lambda: magnitude(l)) * sign
        return Ms[l] * sign

    def step():
        h = s.x
        for l in range(s.L):
            h = s.block(l, h, B=feedback(l) if l > 0 else None)
        F.cross_entropy(h, s.y).backward()
        _sgd(s.Ws)
    params = s.forward_params()
    params.update({f"fixed.{l}.weight": M for l, M in Ms.items()})
    return _Peer(step, params)


def _kp_peer(s):
    """Kolen–Pollack: FA with trainable B_l (U(±1/√fan_in) at the start) whose gradient is
    W_l's own; two SGD groups (forward, feedback), each clipped on its own."""
    Bs = {l: _leaf(s.own(f"feedback.{l}.weight",
                         lambda l=l: s.uniform(s.Ws[l].shape, s.Ws[l][0].numel() ** -0.5)), s.x.dtype)
          for l in range(1, s.L)}

    def step():
        h = s.x
        for l in range(s.L):
            h = s.block(l, h, B=Bs[l].detach() if l > 0 else None)
        F.cross_entropy(h, s.y).backward()
        for l, B in Bs.items():
            B.grad = s.Ws[l].grad.clone()
        _sgd(s.Ws)
        _sgd(list(Bs.values()))
    params = s.forward_params()
    params.update({f"feedback.{l}.weight": B for l, B in Bs.items()})
    return _Peer(step, params)


def _tp_peer(s):
    """The target-propagation family (MLP), as ccledu's TargetPropagation.step at its defaults:
    forward pass; ``feedback_iters`` rounds of plain SGD on every Q_l (top layer first; none for
    fwdtp) on the rule's noisy feedback loss; the forward pass again (ccledu recomputes it);
    the output target z − β(softmax(z) − Y) and the difference targets
    t_{l−1} = [BN](g_l(t_l) + a_{l−1} − g_l(a_l)); the local losses (1/N) Σ ‖a_l − sg(t_l)‖²
    on detached inputs; SGD on the forward weights. f_l(v) = [BN](σ(v W_lᵀ)) (no σ on the
    logits), g_l(v) = [BN](tanh(v Q_lᵀ)); BN standardises over the batch with the unbiased std."""
    rule, L, N = s.rule, s.L, s.N
    if s.kind != "mlp":
        raise ValueError(f"rule {rule!r} trains MLPs only (ccledu's MODEL_KINDS); got a {s.kind}")
    fixed = rule == "fwdtp"
    beta = s.option("stepsize", 0.01)
    lr_b = s.option("lr_backward", 1e-3)
    std = s.option("noise_std", 0.01)
    iters = 0 if fixed else s.option("feedback_iters", 5)
    bn_on = s.option("batchnorm", fixed)
    init = s.option("feedback_init", 1e-3 if fixed else 1e-2)
    clean = s.option("drl_target", "clean") == "clean"
    Qs = [None] + [s.own(f"feedback.{l}.weight", lambda l=l: s.uniform(s.Ws[l].T.shape, init))
                   for l in range(1, L)]

    def bn(v):
        return (v - v.mean(0, keepdim=True)) / (v.std(0, keepdim=True) + 1e-12) if bn_on else v

    def fm(l, v):
        z = v @ s.Ws[l].T
        return bn(s.f(z) if l < L - 1 else z)

    def gm(l, v, Q=None):
        return bn(torch.tanh(v @ (Qs[l] if Q is None else Q).T))

    def noise(like):
        return s.draw(lambda: torch.randn(like.shape, generator=s.g, dtype=like.dtype) * std)

    def feedback_loss(l, a, Q):
        """Layer l's feedback loss (a: the activations, no graph); only Q carries a gradient."""
        if rule == "dtp":
            q = a[l - 1] + noise(a[l - 1])
            with torch.no_grad():
                fq = fm(l, q)
            return ((gm(l, fq, Q) - q) ** 2).sum() / N
        if rule == "drl":
            q = a[l - 1] + noise(a[l - 1])
            with torch.no_grad():
                u = q
                for j in range(l, L):                   # noise up to the logits ...
                    u = fm(j, u)
                for j in range(L - 1, l, -1):           # ... and back down to layer l
                    u = bn(gm(j, u) + a[j - 1] - gm(j, a[j]))
                const = a[l - 1] - gm(l, a[l])
            rec = bn(gm(l, u, Q) + const)
            return ((rec - (a[l - 1] if clean else q)) ** 2).sum() / N
        eps, eta = noise(a[l - 1]), noise(a[l])        # ldrl
        with torch.no_grad():
            const = a[l - 1] - gm(l, a[l])
            fq = fm(l, a[l - 1] + eps)
        q_rec = bn(gm(l, fq, Q) + const)
        r_rec = bn(gm(l, a[l] + eta, Q) + const)
        return (-(eps * (q_rec - a[l - 1])).sum() + 0.5 * ((r_rec - a[l - 1]) ** 2).sum()) / N

    def step():
        with torch.no_grad():
            acts, a = [], s.x
            for l in range(L):
                a = fm(l, a)
                acts.append(a)
        for _ in range(iters):
            for l in range(L - 1, 0, -1):
                Q = Qs[l].detach().requires_grad_(True)
                (dQ,) = torch.autograd.grad(feedback_loss(l, acts, Q), Q)
                with torch.no_grad():
                    Qs[l] -= lr_b * dQ
        acts, a = [], s.x
        for l in range(L):
            a = fm(l, a.detach())
            acts.append(a)
        with torch.no_grad():
            z = acts[-1]
            ts = [None] * L
            ts[-1] = z - beta * (F.softmax(z, 1) - s.Y)
            for l in range(L - 1, 0, -1):
                ts[l - 1] = bn(gm(l, ts[l]) + acts[l - 1] - gm(l, acts[l]))
        sum(((a - t) ** 2).sum() for a, t in zip(acts, ts)).div(N).backward()
        _sgd(s.Ws)
        with torch.no_grad():
            F.cross_entropy(z, s.y)                     # the loss ccledu reports
    params = s.forward_params()
    params.update({f"feedback.{l}.weight": Qs[l] for l in range(1, L)})
    return _Peer(step, params)


_NEW_PEERS = {"drtp": _drtp_peer, "sign": _sign_peer, "kp": _kp_peer,
              "dtp": _tp_peer, "drl": _tp_peer, "ldrl": _tp_peer, "fwdtp": _tp_peer}
