"""Checks for chapter 7 (counter-current learning as an autoencoder)."""
from __future__ import annotations


from . import Case, _rng, _run_cases, register

__all__ = ["ae_pair", "_ref_ae_pair"]


def _ref_ae_pair(A, B, scale_c, scale_d, eps=1e-8):
    from ..autoencoder import NORM_EPS, pair_loss
    if eps != NORM_EPS:
        raise ValueError(f"the reference uses ε = {NORM_EPS}")
    total, _, dA, dB = pair_loss(A, B, scale_c, scale_d)
    return total, dA, dB


@register
def ae_pair(fn, reference=None, seed=0, **options) -> int:
    """One interior pair of the CCL autoencoder loss and its gradients.

    Contract: ``fn(A, B, scale_c, scale_d) -> (loss, dA, dB)`` with A (forward activation) and B
    (feedback signal) of shape (N, C, H, W);
    loss = scale_c·H·mean((A − B)²) + scale_d·H·mean((Â − B̂)²), where Â centres every (n, c) map
    over its H×W positions and divides it by (its norm + 1e-8); dA = ∂loss/∂A, dB = ∂loss/∂B.
    """
    g = _rng(seed)
    cases = []
    for shape, sc, sd in [((1, 1, 2, 2), 1.0, 1.0), ((2, 3, 4, 4), 1.0, 1.0), ((3, 2, 7, 7), 0.5, 2.0),
                          ((2, 4, 8, 6), 1.0, 0.0), ((1, 2, 4, 4), 0.0, 1.0)]:
        A = g.standard_normal(shape)
        B = 0.3 * g.standard_normal(shape) + 0.5
        cases.append(Case(f"{shape}, s_C={sc}, s_D={sd}", (A, B, sc, sd)))
    return _run_cases("ae_pair", fn, reference or _ref_ae_pair, cases, outputs=("loss", "dA", "dB"),
                      **options)
