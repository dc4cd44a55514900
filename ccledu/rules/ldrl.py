"""Local difference reconstruction loss (L-DRL, Ernoult et al. 2022): DTP whose feedback g_l is
trained so that its Jacobian approaches the *transpose* of f_l's, which makes the propagated
targets approach backprop's.

Forward pass, targets and forward updates are DTP's (:mod:`ccledu.rules.dtp`). For layer l
(1..L−1), with ε ~ N(0, σ²) at layer l−1 and η ~ N(0, σ²) at layer l, and the difference map
D_l(v) = v + a_{l−1} − sg(g_l(a_l))  (the code holds g_l(a_l) fixed: no_grad) (standardised over the batch with ``batchnorm``):

    q_rec = D_l(g_l(f_l(a_{l−1} + ε))),       r_rec = D_l(g_l(a_l + η))
    L^fb_l = (1/N) [ −Σ_n ε_n · (q_rec − a_{l−1})_n  +  ½ Σ_n ‖r_rec − a_{l−1}‖²_n ]

Without BN, q_rec − a_{l−1} = g_l(f_l(a+ε)) − g_l(f_l(a)) ≈ J_g J_f ε and r_rec − a_{l−1} ≈ J_g η,
so E[L^fb_l] ≈ σ² (−tr(J_g J_f) + ½ ‖J_g‖²_F), minimised at J_g = J_fᵀ (tests/test_tp.py checks
that a linear layer's Q converges to Wᵀ). Ernoult et al. (2022, eq. 9) divide by σ²; the
public code used by the CCL paper's protocol (Shibuya et al., models/tp_net.py) does not, and its
learning rate absorbs the factor; ccledu follows the code, so ``lr_backward`` matches theirs.
"""
from __future__ import annotations

from .dtp import DTP, batchnorm, batchnorm_backward


class LDRL(DTP):
    """DTP with the local difference reconstruction loss (module docstring)."""
    name = "ldrl"
    feedback_loss = "ldrl"

    @classmethod
    def defaults(cls, kind: str, data: str | None = None) -> dict:
        return DTP.defaults(kind, data)

    def draw_noise(self, acts, l):
        return {"q": self._noise(acts[l - 1]), "r": self._noise(acts[l])}

    def _through_d(self, gm, v_in, const):
        s = gm(v_in) + const
        if self.batchnorm:
            out, cache = batchnorm(s)
            return out, cache
        return s, None

    def feedback_loss_grad(self, model, l, x_in, acts, noise, const=None):
        """(L^fb_l, ∂L^fb_l/∂Q_l); noise['q'] (N, d_{l−1}), noise['r'] (N, d_l). The gradient
        holds the difference term a_{l−1} − g_l(a_l) fixed (the code computes it under no_grad);
        ``const`` freezes it when the loss is evaluated (finite-difference tests)."""
        a_prev, a = acts[l - 1], acts[l]
        N = a_prev.shape[0]
        eps, eta = noise["q"], noise["r"]
        if const is None:
            const = a_prev - self.g(l)(a)
        g1, g2 = self.g(l), self.g(l)
        q_rec, c1 = self._through_d(g1, self.f(model, l)(a_prev + eps), const)
        r_rec, c2 = self._through_d(g2, a + eta, const)
        dr = r_rec - a_prev
        loss = (-(eps * (q_rec - a_prev)).sum() + 0.5 * (dr * dr).sum()) / N
        d1, d2 = -eps / N, dr / N
        if c1 is not None:
            d1, d2 = batchnorm_backward(d1, c1), batchnorm_backward(d2, c2)
        _, dQ1, _ = g1.backward(d1, need_dv=False)
        _, dQ2, _ = g2.backward(d2, need_dv=False)
        return loss, dQ1 + dQ2
