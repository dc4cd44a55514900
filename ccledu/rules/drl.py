"""Difference reconstruction loss (DRL, Meulemans et al. 2020): DTP with a feedback objective that
trains the *difference-corrected* path from layer l−1 to the output and back.

Forward pass, targets and forward updates are DTP's (see :mod:`ccledu.rules.dtp`). Feedback
objective for layer l (1..L−1), with ε ~ N(0, σ²) at layer l−1:

    q_{l−1} = a_{l−1} + ε,   q_j = f_j(q_{j−1}) for j = l..L−1            (up to the logits)
    q̂_{L−1} = q_{L−1},      q̂_{j−1} = g_j(q̂_j) + a_{j−1} − sg(g_j(a_j))  for j = L−1..l
    L^fb_l = (1/N) Σ_n ‖q̂_{l−1} − r‖²,   only Q_l moves (through g_l(q̂_l); the difference term
                                          is held fixed, as the code computes it under no_grad)

Paper and public code differ in the reconstruction target r:

* Meulemans et al. 2020 (eq. 10, the "difference reconstruction loss") reconstruct the *noisy*
  input, r = a_{l−1} + ε, and add a second noise term weighted by λ at the output; ccledu
  offers the first term as ``drl_target="noisy"`` (the λ term is not implemented).
* The code the CCL paper's protocol uses (Shibuya et al., models/tp_net.py, ``loss_type ==
  "DRL"``) compares with the *clean* activation, r = a_{l−1} (``drl_target="clean"``, the
  default, as ccledu defaults to the public code elsewhere). Because q̂_{l−1} − a_{l−1} =
  g_l(q̂_l) − g_l(a_l), that loss only makes g_l less sensitive (it is minimised by Q_l = 0): it
  acts as a decay of the feedback weights rather than as a reconstruction. docs/tp.md
  discusses it; tests/test_tp.py checks both gradients against finite differences.

Cost: each feedback update runs the noise up through every higher layer and back down, so it
grows with depth (the CCL paper's Table 2: 125.73 M FLOPs per sample against DTP's 48.69 M).
"""
from __future__ import annotations

from .dtp import DTP, batchnorm, batchnorm_backward


class DRL(DTP):
    """DTP with the difference reconstruction loss (module docstring)."""
    name = "drl"
    feedback_loss = "drl"
    OPTIONS = dict(DTP.OPTIONS)
    OPTIONS["drl_target"] = (str, "clean", "DRL reconstruction target: clean (public code) or noisy (Meulemans et al. 2020)")

    def __init__(self, drl_target: str = "clean", **options):
        if drl_target not in ("clean", "noisy"):
            raise ValueError(f"drl_target must be 'clean' (the public code) or 'noisy' "
                             f"(the paper), got {drl_target!r}")
        self.drl_target = drl_target
        super().__init__(**options)

    def feedback_loss_grad(self, model, l, x_in, acts, noise, const=None):
        """(L^fb_l, ∂L^fb_l/∂Q_l) for the DRL objective; noise['q'] (N, d_{l−1}). The gradient
        holds the difference term a_{l−1} − g_l(a_l) fixed (``const``: pass it to evaluate the
        loss with that term frozen, as the finite-difference test does)."""
        L = len(model.blocks)
        a_prev = acts[l - 1]
        N = a_prev.shape[0]
        q = a_prev + noise["q"]
        u = q
        for j in range(l, L):                                  # up to the logits
            u = self.f(model, j)(u)
        for j in range(L - 1, l, -1):                          # down to layer l (no gradient)
            gj = self.g(j)
            cj = acts[j - 1] - gj(acts[j])
            s = gj(u) + cj
            u = batchnorm(s)[0] if self.batchnorm else s
        if const is None:
            const = acts[l - 1] - self.g(l)(acts[l])           # held fixed (sg)
        gm = self.g(l)
        s = gm(u) + const
        if self.batchnorm:
            rec, cache = batchnorm(s)
        else:
            rec, cache = s, None
        target = a_prev if self.drl_target == "clean" else q
        diff = rec - target
        loss = (diff * diff).sum() / N
        d = 2 * diff / N
        if cache is not None:
            d = batchnorm_backward(d, cache)
        _, dQ, _ = gm.backward(d, need_dv=False)
        return loss, dQ

    def config(self) -> dict:
        c = super().config()
        c["drl_target"] = self.drl_target
        return c
