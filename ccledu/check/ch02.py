"""Checks for chapter 2 (convolutions): im2col (Task 2.1), col2im (Task 2.2), a convolution's
forward and backward pass built on them (Task 2.6), and max-pool backward.

The oracles are the definitions evaluated one index at a time (im2col, col2im, the
cross-correlation) and finite differences (the backward passes); none calls ``ccledu.im2col`` or
the layers, so they keep working in a student copy where those are stubs (Tasks 2.3–2.5).
"""
from __future__ import annotations

import numpy as np

from . import Case, _rng, _run_cases, fd_vjp, register

__all__ = ["im2col", "col2im", "conv_forward", "conv_backward", "maxpool_backward",
           "CONV_GEOMETRIES"]

#: (x shape, kh, kw, stride, pad) of the convolution cases
CONV_GEOMETRIES = [
    ((1, 1, 4, 4), 3, 3, 1, 0),
    ((2, 3, 5, 5), 3, 3, 1, 1),
    ((2, 2, 7, 6), 3, 3, 2, 1),
    ((1, 2, 8, 8), 2, 2, 2, 0),
    ((2, 1, 6, 7), 3, 2, 1, 2),
    ((1, 3, 9, 9), 5, 5, 2, 2),
    ((3, 2, 4, 5), 1, 1, 1, 0),
]

EXACT = dict(rtol=1e-12, atol=1e-12)
FD_TOL = dict(rtol=1e-6, atol=1e-7)


def _out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def _geom_label(shape, kh, kw, s, p):
    return f"x {shape}, kernel {kh}x{kw}, stride {s}, pad {p}"


def _loop_im2col(x, kh, kw, stride, pad):
    """cols[n·OH·OW + P·OW + Q, c·kh·kw + i·kw + j] = xpad[n, c, P·s + i, Q·s + j]."""
    N, C, H, W = x.shape
    oh, ow = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    cols = np.zeros((N * oh * ow, C * kh * kw))
    for n in range(N):
        for P in range(oh):
            for Q in range(ow):
                for c in range(C):
                    for i in range(kh):
                        for j in range(kw):
                            r, q = P * stride + i - pad, Q * stride + j - pad
                            if 0 <= r < H and 0 <= q < W:
                                cols[n * oh * ow + P * ow + Q, c * kh * kw + i * kw + j] = x[n, c, r, q]
    return cols


@register
def im2col(fn, reference=None, seed=0, **options) -> None:
    """Receptive fields as rows (Task 2.1).

    Contract: ``fn(x, kh, kw, stride, pad) -> cols`` with x (N, C, H, W) and cols
    (N·OH·OW, C·kh·kw): row n·OH·OW + P·OW + Q, column c·kh·kw + i·kw + j holds
    xpad[n, c, P·stride + i, Q·stride + j]. Compared with that definition, entry by entry.
    Catches: a stride ignored in the slice, an off-by-one slice end, rows or columns in another
    order, padding dropped.
    """
    g = _rng(seed)
    cases = [Case(_geom_label(*geo), (g.standard_normal(geo[0]),) + geo[1:]) for geo in CONV_GEOMETRIES]
    _run_cases("im2col", fn, reference or _loop_im2col, cases, task="2.1",
               forbid=("ccledu.im2col", "ccledu.im2col:im2col", "ccledu.im2col:col2im"), **dict(EXACT, **options))


def _loop_col2im(cols, x_shape, kh, kw, stride, pad):
    """x[n, c, r, q] = Σ of every cols entry that im2col copied from xpad[n, c, r + p, q + p]."""
    N, C, H, W = x_shape
    oh, ow = _out_size(H, kh, stride, pad), _out_size(W, kw, stride, pad)
    x = np.zeros(x_shape)
    for n in range(N):
        for P in range(oh):
            for Q in range(ow):
                for c in range(C):
                    for i in range(kh):
                        for j in range(kw):
                            r, q = P * stride + i - pad, Q * stride + j - pad
                            if 0 <= r < H and 0 <= q < W:
                                x[n, c, r, q] += cols[n * oh * ow + P * ow + Q, c * kh * kw + i * kw + j]
    return x


@register
def col2im(fn, reference=None, seed=0, **options) -> None:
    """The adjoint of im2col: add every row entry back onto the pixel it was copied from
    (Task 2.2).

    Contract: ``fn(cols, x_shape, kh, kw, stride, pad) -> x`` with cols (N·OH·OW, C·kh·kw) in
    im2col's layout and x of shape ``x_shape`` = (N, C, H, W); padding positions are dropped.
    Catches: assigning instead of adding (overlapping fields: stride 1, kernel 3), the padding
    border kept or cut at the wrong side.
    """
    g = _rng(seed)
    cases = []
    for shape, kh, kw, s, p in CONV_GEOMETRIES:
        N, C, H, W = shape
        rows = N * _out_size(H, kh, s, p) * _out_size(W, kw, s, p)
        cases.append(Case(_geom_label(shape, kh, kw, s, p),
                          (g.standard_normal((rows, C * kh * kw)), shape, kh, kw, s, p)))
    _run_cases("col2im", fn, reference or _loop_col2im, cases, task="2.2",
               forbid=("ccledu.im2col", "ccledu.im2col:im2col", "ccledu.im2col:col2im"), **dict(EXACT, **options))


def _loop_conv(x, W, b, stride, pad):
    """y[n, f, P, Q] = Σ_{c,i,j} W[f, c, i, j] xpad[n, c, P·s + i, Q·s + j] (+ b[f])."""
    N, C, H, Wd = x.shape
    F, _, k, _ = W.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = _out_size(H, k, stride, pad), _out_size(Wd, k, stride, pad)
    y = np.zeros((N, F, oh, ow))
    for P in range(oh):
        for Q in range(ow):
            patch = xpad[:, :, P * stride:P * stride + k, Q * stride:Q * stride + k]
            y[:, :, P, Q] = np.tensordot(patch, W, axes=([1, 2, 3], [1, 2, 3]))
    return y if b is None else y + b[None, :, None, None]


def _conv_cases(g, with_bias):
    cases = []
    for (shape, kh, kw, s, p), F in zip([geo for geo in CONV_GEOMETRIES if geo[1] == geo[2]],
                                        [2, 4, 3, 1, 2, 3]):
        N, C = shape[:2]
        x = g.standard_normal(shape)
        W = g.standard_normal((F, C, kh, kw))
        b = g.standard_normal(F) if with_bias and F % 2 else None
        cases.append((f"{_geom_label(shape, kh, kw, s, p)}, F={F}{', bias' if b is not None else ''}",
                      x, W, b, s, p))
    return cases


_CONV_FORBID = ("ccledu.im2col", "ccledu.im2col:im2col", "ccledu.im2col:col2im", "ccledu.layers:Conv2d")


@register
def conv_forward(fn, reference=None, seed=0, **options) -> None:
    """2-D cross-correlation (what deep learning calls a convolution), Task 2.6.

    Contract: ``fn(x, W, b, stride, pad) -> y`` with x (N, C, H, W), W (F, C, k, k), b (F,) or
    None, y (N, F, OH, OW), OH = (H + 2·pad − k)//stride + 1. Compared with the definition.
    Catches: the (N·OH·OW, F) product reshaped without the transpose to (N, F, OH, OW).
    """
    g = _rng(seed)
    cases = [Case(lab, (x, W, b, s, p)) for lab, x, W, b, s, p in _conv_cases(g, True)]
    _run_cases("conv_forward", fn, reference or _loop_conv, cases, task="2.6",
               forbid=_CONV_FORBID, **dict(dict(rtol=1e-10, atol=1e-12), **options))


def _fd_conv_backward(x, W, dy, stride, pad):
    return (fd_vjp(lambda w: _loop_conv(x, w, None, stride, pad), W, dy),
            fd_vjp(lambda v: _loop_conv(v, W, None, stride, pad), x, dy))


@register
def conv_backward(fn, reference=None, seed=0, **options) -> None:
    """Backward pass of a convolution without bias (Task 2.6).

    Contract: ``fn(x, W, dy, stride, pad) -> (dW, dx)`` with x (N, C, H, W), W (F, C, k, k),
    dy = ∂L/∂y (N, F, OH, OW); dW (F, C, k, k), dx (N, C, H, W). Compared with finite
    differences of ⟨conv(x, W), dy⟩. Catches: dy flattened in (N, F, OH, OW) order instead of
    im2col's row order, dx built with im2col instead of col2im, W not flattened like the columns.
    """
    g = _rng(seed)
    cases = []
    for lab, x, W, _, s, p in _conv_cases(g, False)[:4]:
        N, _, H, Wd = x.shape
        k = W.shape[2]
        dy = g.standard_normal((N, W.shape[0], _out_size(H, k, s, p), _out_size(Wd, k, s, p)))
        cases.append(Case(lab, (x, W, dy, s, p)))
    _run_cases("conv_backward", fn, reference or _fd_conv_backward, cases, outputs=("dW", "dx"),
               task="2.6", forbid=_CONV_FORBID, **dict(FD_TOL, **options))


def _fd_maxpool_backward(x, dy, k):
    N, C, H, W = x.shape
    oh, ow = H // k, W // k

    def forward(v):
        return v[:, :, :oh * k, :ow * k].reshape(N, C, oh, k, ow, k).max(axis=(3, 5))
    return fd_vjp(forward, x, dy)


@register
def maxpool_backward(fn, reference=None, seed=0, **options) -> None:
    """Backward pass of k×k max pooling with stride k (floor mode: a remainder is dropped).

    Contract: ``fn(x, dy, k) -> dx`` with x (N, C, H, W), dy (N, C, H//k, W//k), dx the shape of
    x: each window's gradient goes to the position of its maximum, zeros elsewhere. Inputs have
    distinct values, so ties never occur. Compared with finite differences.
    """
    g = _rng(seed)
    cases = []
    for shape, k in [((1, 1, 4, 4), 2), ((2, 3, 6, 8), 2), ((2, 2, 5, 7), 2), ((1, 2, 9, 9), 3)]:
        x = g.permutation(int(np.prod(shape))).reshape(shape).astype(np.float64) / 7.0
        dy = g.standard_normal(shape[:2] + (shape[2] // k, shape[3] // k))
        cases.append(Case(f"x {shape}, k={k}", (x, dy, k)))
    _run_cases("maxpool_backward", fn, reference or _fd_maxpool_backward, cases, task="2.5",
               forbid=("ccledu.layers:MaxPool2d",), **dict(FD_TOL, **options))
