"""Checks for chapter 7 (counter-current learning as an autoencoder, Task 7.1).

Oracle: the loss definition and finite differences of it; ccledu.rules.autoencoder is never called.
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_grad, register

__all__ = ["ae_pair"]


def _norm_maps(a, eps=1e-8):
    y = a - a.mean(axis=(2, 3), keepdims=True)
    return y / (np.sqrt((y * y).sum(axis=(2, 3), keepdims=True)) + eps)


def _ae_loss(A, B, scale_c, scale_d):
    H = A.shape[2]
    return (scale_c * H * np.mean((A - B) ** 2)
            + scale_d * H * np.mean((_norm_maps(A) - _norm_maps(B)) ** 2))


def _fd_ae_pair(A, B, scale_c, scale_d):
    return (_ae_loss(A, B, scale_c, scale_d), fd_grad(lambda a: _ae_loss(a, B, scale_c, scale_d), A),
            fd_grad(lambda b: _ae_loss(A, b, scale_c, scale_d), B))


@register
def ae_pair(fn, reference=None, seed=0, **options) -> None:
    """One interior pair of the CCL autoencoder loss and its gradients (Task 7.1).

    Contract: ``fn(A, B, scale_c, scale_d) -> (loss, dA, dB)`` with A (forward activation) and B
    (feedback signal) of shape (N, C, H, W);
    loss = scale_c·H·mean((A − B)²) + scale_d·H·mean((Â − B̂)²), where Â centres every (n, c) map
    over its H×W positions and divides it by (its norm + 1e-8); dA = ∂loss/∂A, dB = ∂loss/∂B.
    Compared with finite differences of the loss. Catches: the centring's backward forgotten
    (the gradient of a map must sum to zero), the factor H, dB = dA instead of the sign flip.
    """
    g = _rng(seed)
    cases = []
    for shape, sc, sd in [((1, 1, 2, 2), 1.0, 1.0), ((2, 3, 4, 4), 1.0, 1.0), ((2, 2, 5, 5), 0.5, 2.0),
                          ((2, 2, 4, 3), 1.0, 0.0), ((1, 2, 4, 4), 0.0, 1.0)]:
        A = g.standard_normal(shape)
        B = 0.3 * g.standard_normal(shape) + 0.5
        cases.append(Case(f"{shape}, s_C={sc}, s_D={sd}", (A, B, sc, sd)))
    _run_cases("ae_pair", fn, reference or _fd_ae_pair, cases, outputs=("loss", "dA", "dB"),
               task="7.1", forbid=("ccledu.rules.autoencoder", "ccledu.rules.autoencoder:pair_loss",
                               "ccledu.rules.autoencoder:normalize_maps_backward"),
               **dict(dict(rtol=1e-6, atol=1e-7), **options))
