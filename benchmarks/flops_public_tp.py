"""The public TP code's step structure, re-expressed in PyTorch, counted by torch's FlopCounterMode.

This is *not* ccledu's algorithm and not the authors' code: it is a minimal PyTorch step written
for this benchmark that performs the same tensor operations, in the same autograd structure, as
one mini-batch of TatsukichiShibuya/Fixed-Weight-Difference-Target-Propagation
(``code/models/tp_net.py``: ``train_back_weights`` × epochs_backward, ``compute_target``,
``update_weights``), so that ``torch.utils.flop_counter.FlopCounterMode`` (matrix products at
2·m·k·n, forward *and* the backward passes autograd runs) can say what that structure costs. The
operations that make it dearer than ccledu's step (docs/tp.md, *Cost*):

* every feedback iteration re-runs the forward pass of x with the weights requiring gradients,
  and its ``backward`` also computes ∇W_l and the gradient of g's input (both discarded);
* ``compute_target`` back-propagates the summed cross-entropy through the whole network to read
  ∂ℓ/∂z at the output;
* every difference function recomputes f_l(a_{l−1}) and g_l(f_l(a_{l−1}));
* ``update_weights`` back-propagates each layer's local loss through every layer below it (the
  stored activations are not detached).

Used by ``benchmarks/flops.py``; needs torch (an optional extra, never a dependency of ccledu).
"""
from __future__ import annotations


def public_tp_step_flops(method: str, sizes, batch: int = 32, feedback_iters: int = 5,
                         seed: int = 0) -> float:
    """Matmul FLOPs per sample of one mini-batch of the public code's structure.

    ``method``: 'dtp' | 'drl' | 'ldrl' | 'fwdtp' (FW-DTP: no feedback training); ``sizes`` the
    widths [in, h, ..., C].
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(seed)
    L = len(sizes) - 1
    W = [(torch.randn(sizes[l + 1], sizes[l], generator=g) * 0.1).requires_grad_() for l in range(L)]
    Q = [None] + [(torch.randn(sizes[l], sizes[l + 1], generator=g) * 0.01).requires_grad_()
                  for l in range(1, L)]
    x = torch.randn(batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (batch,), generator=g)

    def f(l, h):
        z = h @ W[l].T
        return z if l == L - 1 else torch.tanh(z)

    def gfb(l, s):
        return torch.tanh(s @ Q[l].T)

    def diff(l, v, a_lower):                  # the difference function (its own no_grad pass)
        with torch.no_grad():
            rec = gfb(l, f(l, a_lower))
        return v + (a_lower - rec)

    def forward():
        outs, h = [], x
        for l in range(L):
            h = f(l, h)
            outs.append(h)
        return outs

    def zero():
        for p in W + Q[1:]:
            p.grad = None

    with FlopCounterMode(display=False) as counter:
        if method != "fwdtp":
            for _ in range(feedback_iters):
                outs = forward()
                for d in range(L - 1, 0, -1):
                    zero()
                    a = outs[d - 1].detach()
                    if method == "dtp":
                        q = a + 0.01 * torch.randn(a.shape, generator=g)
                        loss = ((gfb(d, f(d, q)) - q) ** 2).sum()
                    elif method == "drl":
                        q = a + 0.01 * torch.randn(a.shape, generator=g)
                        h = a
                        for j in range(d, L):
                            q = f(j, q)
                        hs = [h]
                        for j in range(d, L):
                            h = f(j, h)
                            hs.append(h)
                        for j in range(L - 1, d - 1, -1):
                            q = diff(j, gfb(j, q), hs[j - d])
                        loss = ((a - q) ** 2).sum()
                    else:  # ldrl
                        q = a + 0.01 * torch.randn(a.shape, generator=g)
                        q_rec = diff(d, gfb(d, f(d, q)), a)
                        r = f(d, a) + 0.01 * torch.randn(outs[d].shape, generator=g)
                        r_rec = diff(d, gfb(d, r), a)
                        loss = -((q - a) * (q_rec - a)).sum() + ((r_rec - a) ** 2).sum() / 2
                    loss.backward(retain_graph=True)
                    with torch.no_grad():
                        Q[d] -= 1e-3 / batch * Q[d].grad
        # compute_target
        outs = forward()
        for o in outs:
            o.retain_grad()
        zero()
        torch.nn.functional.cross_entropy(outs[-1], y, reduction="sum").backward(retain_graph=True)
        with torch.no_grad():
            t = [None] * L
            t[-1] = outs[-1] - 0.01 * outs[-1].grad
            for d in range(L - 2, -1, -1):
                t[d] = diff(d + 1, gfb(d + 1, t[d + 1]), outs[d])
        # update_weights: one forward, each local loss back through the layers below it
        outs = forward()
        for d in range(L):
            zero()
            ((t[d] - outs[d]) ** 2).sum().backward(retain_graph=True)
    return counter.get_total_flops() / batch
