"""PyTorch implementations of the same training steps, used as the speed peer.

Each ``make_step(rule, kind, ...)`` returns a closure that runs one full training step (forward,
credit assignment, clipping, SGD update) on fixed tensors, mirroring what ccledu computes for
that rule. PyTorch's autograd does the differentiation; the peers exist only to be timed, so they
follow the same algorithm and FLOP count rather than ccledu's code. PyTorch is optional: this
module is imported only by the benchmark harness.
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


def make_step(rule, kind, x, y, sizes=None, channels=None, act="elu", seed=0):
    """A closure running one training step of ``rule`` ('bp', 'fa', 'dfa', 'ccl', 'ff')."""
    f = _act(act)
    C = int(y.max()) + 1 if kind == "mlp" and sizes is None else (sizes[-1] if sizes else 10)
    Ws = build(kind, sizes=sizes, in_shape=tuple(x.shape[1:]), channels=channels, classes=C, seed=seed)
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

    if rule == "bp":
        def step():
            h = x
            for l in range(L):
                h = block(l, h)
            F.cross_entropy(h, y).backward()
            _sgd(Ws)
        return step

    if rule == "fa":
        Bs = [torch.randn(W.shape, generator=g) / W[0].numel() ** 0.5 for W in Ws]

        def step():
            h = x
            for l in range(L):
                h = block(l, h, B=Bs[l] if l > 0 else None)
            F.cross_entropy(h, y).backward()
            _sgd(Ws)
        return step

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
        return step

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
        return step

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
        return step

    raise ValueError(rule)


def norm_in(t):
    flat = t.reshape(t.shape[0], -1)
    return (flat / (flat.norm(dim=1, keepdim=True) + 1e-8)).reshape(t.shape)
