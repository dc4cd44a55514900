"""Grading tests for chapter 7's package exercise (Task 7.2: ``normalize_maps_backward`` in
``ccledu/rules/autoencoder.py``), marker ``ch07``.

Oracles: central finite differences of the per-map centring and normalisation written out here,
and of one autoencoder pair loss.
"""
import numpy as np
import pytest

from ccledu import check
from ccledu.testing import grad_rel_error, numerical_gradient, numerical_vjp

FD = dict(rtol=1e-5, atol=1e-7, verbose=False, poison=False)
EPS = 1e-8


def _normalize(a):
    y = a - a.mean(axis=(2, 3), keepdims=True)
    return y / (np.sqrt((y * y).sum(axis=(2, 3), keepdims=True)) + EPS)


@pytest.mark.ch07
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 4, 4), (3, 2, 7, 5), (1, 4, 1, 6)])
def test_normalize_maps_backward_matches_finite_differences(rng, shape):
    from ccledu.rules.autoencoder import normalize_maps, normalize_maps_backward
    a = rng.standard_normal(shape) * 3 + 1
    g = rng.standard_normal(shape)
    u, y, r = normalize_maps(a)
    np.testing.assert_allclose(u, _normalize(a), rtol=1e-12, atol=1e-14)
    da = normalize_maps_backward(g, y, r)
    assert grad_rel_error(da, numerical_vjp(lambda: _normalize(a), a, g)) < 1e-6


@pytest.mark.ch07
def test_normalize_maps_backward_constant_map(rng):
    """A constant map centres to zero: the gradient is g/ε with its spatial mean removed."""
    from ccledu.rules.autoencoder import normalize_maps, normalize_maps_backward
    a = np.full((1, 2, 3, 3), 4.0)
    a[0, 1] = rng.standard_normal((3, 3))
    g = rng.standard_normal(a.shape)
    u, y, r = normalize_maps(a)
    da = normalize_maps_backward(g, y, r)
    expect = g[0, 0] / EPS - (g[0, 0] / EPS).mean()
    np.testing.assert_allclose(da[0, 0], expect, rtol=1e-9)
    assert np.all(np.isfinite(da))


def fd_ae_pair(A, B, scale_c, scale_d, eps=EPS):
    H = A.shape[2]
    f = lambda: (scale_c * H * np.mean((A - B) ** 2)  # noqa: E731
                 + scale_d * H * np.mean((_normalize(A) - _normalize(B)) ** 2))
    return f(), numerical_gradient(f, A), numerical_gradient(f, B)


@pytest.mark.ch07
def test_autoencoder_pair_loss_matches_finite_differences():
    def package(A, B, scale_c, scale_d, eps=EPS):
        from ccledu.rules.autoencoder import pair_loss
        total, _, dA, dB = pair_loss(A, B, scale_c, scale_d)
        return total, dA, dB
    check.ae_pair(package, reference=fd_ae_pair, **FD)
