"""Tried, not adopted: a stride-1 convolution without im2col ("implicit GEMM" on the padded grid).

    python benchmarks/implicit_conv.py              # conv2 of the speed report's CNN, best of 24

The speed report's CNN loses most of its time to PyTorch in its second convolution (see
``layer_parts.py``): ccledu builds the 29 MB im2col matrix and multiplies it, oneDNN convolves
directly. This script measures the obvious NumPy way to avoid the column matrix, so that the
decision not to ship it rests on a number.

The idea. Pad x (N, C, H, W) once and store it channel-major and flat, ``buf[c, q]`` with
q = n·Hp·Wp + r·Wp + s over the padded (Hp, Wp) grid, L = N·Hp·Wp positions. For stride 1, the
tap (i, j) of output position q reads input position q + o with o = i·Wp + j, so for every tap

    Y[:, q] += W[:, :, i, j] @ buf[:, q + o]        (F, C) @ (C, L) -> (F, L)

and the shifted operand ``buf[:, o:o + L]`` is a *view* of one flat array: with
``as_strided`` it is a C-contiguous (C, L) matrix that starts o elements later (the last o
columns of a channel read the next channel's first entries, which only land on padding
positions of the output grid, dropped at the end). Nine products, each accumulated in place by
BLAS (``scipy.linalg.blas.sgemm`` with beta = 1), and no copy of the input at all. The output
lives on the padded grid; its top-left (OH, OW) corner is y. The backward pass is the same
trick: dW[:, :, i, j] = dY_grid @ buf[:, o:o + L]ᵀ, and dx_grid[:, q] += W[:, :, i, j]ᵀ @
dY_grid[:, q − o] (a view of dY on the grid with o zeros in front).

What it costs: every product runs over the padded grid (16×16 instead of 14×14 positions, 1.31×
the multiply-adds), the nine products have K = C (32) instead of 9C, and the dW products have a
long K = L and a small 64×32 output, a shape OpenBLAS runs slowly. Result in benchmarks/README.md
("Tried: a convolution without im2col"). float32 only (it calls sgemm); the check below runs the
same algebra in float64 with ``np.matmul`` against ``ccledu.layers.Conv2d``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import as_strided

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ccledu.layers import Conv2d  # noqa: E402


def _acc(a, b, c):
    """c += a @ b in place: a (F, C), b (C, L) C-contiguous (a view is fine), c (F, L)
    C-contiguous. float32 goes to BLAS with beta = 1 (in Fortran terms cᵀ += bᵀ aᵀ); other
    dtypes use a temporary."""
    if c.dtype == np.float32:
        from scipy.linalg import blas
        blas.sgemm(1.0, b.T, a.T, beta=1.0, c=c.T, overwrite_c=1)
    else:
        c += a @ b


def _dw_tap(d, xt):
    """d (F, L) @ xt (C, L)ᵀ -> (F, C). float32 goes to the same BLAS as :func:`_acc`: NumPy
    and SciPy each bring their own OpenBLAS with its own worker threads, and alternating the two
    libraries made the backward pass several times slower (the idle pool spins on the cores)."""
    if d.dtype == np.float32:
        from scipy.linalg import blas
        return blas.sgemm(1.0, xt.T, d.T, trans_a=1).T   # (xt dᵀ)ᵀ, Fortran terms
    return d @ xt.T


def _rows(buf, start: int, rows: int, L: int):
    """The (rows, L) C-contiguous view of the flat ``buf`` that begins at element ``start``."""
    return as_strided(buf[start:], shape=(rows, L), strides=(L * buf.itemsize, buf.itemsize))


def forward(x, w, p: int):
    """y (N, F, OH, OW) channel-major view, and the padded flat input kept for the backward."""
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    Hp, Wp = H + 2 * p, W + 2 * p
    L = N * Hp * Wp
    buf = np.zeros(C * L + (k - 1) * (Wp + 1), dtype=x.dtype)
    buf[:C * L].reshape(C, N, Hp, Wp)[:, :, p:p + H, p:p + W] = x.transpose(1, 0, 2, 3)
    Y = np.zeros((F, L), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            _acc(np.ascontiguousarray(w[:, :, i, j]), _rows(buf, i * Wp + j, C, L), Y)
    oh, ow = Hp - k + 1, Wp - k + 1
    return Y.reshape(F, N, Hp, Wp)[:, :, :oh, :ow].transpose(1, 0, 2, 3), buf


def backward(dy, buf, x_shape, w, p: int):
    """dW (F, C, k, k) and dx (N, C, H, W) channel-major, from dy (N, F, OH, OW)."""
    N, C, H, W = x_shape
    F, _, k, _ = w.shape
    Hp, Wp = H + 2 * p, W + 2 * p
    L = N * Hp * Wp
    oh, ow = Hp - k + 1, Wp - k + 1
    head = (k - 1) * (Wp + 1)                  # the largest shift o
    dbuf = np.zeros(head + F * L, dtype=dy.dtype)
    dbuf[head:].reshape(F, N, Hp, Wp)[:, :, :oh, :ow] = dy.transpose(1, 0, 2, 3)
    D = dbuf[head:].reshape(F, L)
    dW = np.empty((F, C, k, k), dtype=dy.dtype)
    dxg = np.zeros((C, L), dtype=dy.dtype)
    for i in range(k):
        for j in range(k):
            o = i * Wp + j
            dW[:, :, i, j] = _dw_tap(D, _rows(buf, o, C, L))
            _acc(np.ascontiguousarray(w[:, :, i, j].T), _rows(dbuf, head - o, F, L), dxg)
    dx = np.ascontiguousarray(dxg.reshape(C, N, Hp, Wp)[:, :, p:p + H, p:p + W])
    return dW, dx.transpose(1, 0, 2, 3)


def setup(N=128, C=32, H=14, W=14, F=64, k=3, p=1, dtype="float32", seed=0):
    """A Conv2d layer and channel-major x, dy of the given shape (the speed report's conv2 by
    default)."""
    g = np.random.default_rng(seed)
    conv = Conv2d(C, F, k, 1, p, seed=seed, dtype=dtype)
    oh, ow = H + 2 * p - k + 1, W + 2 * p - k + 1
    x = np.ascontiguousarray(g.standard_normal((C, N, H, W)).astype(dtype)).transpose(1, 0, 2, 3)
    dy = np.ascontiguousarray(g.standard_normal((F, N, oh, ow)).astype(dtype)).transpose(1, 0, 2, 3)
    return conv, x, dy


def check(**shape) -> float:
    """Largest relative difference of y, dW, dx between this method and ``Conv2d``."""
    conv, x, dy = setup(**shape)
    w, p = conv.params["weight"], conv.padding
    y0 = conv.forward(x)
    dx0 = conv.backward(dy)
    y1, buf = forward(x, w, p)
    dW1, dx1 = backward(dy, buf, x.shape, w, p)
    return max(float(np.abs(a - b).max() / np.abs(b).max())
               for a, b in ((y1, y0), (dW1, conv.grads["weight"]), (dx1, dx0)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    from speed import time_pair
    print(f"check: float64 max relative difference {check(dtype='float64'):.2e}, "
          f"float32 {check():.2e}")
    conv, x, dy = setup()
    w, p = conv.params["weight"], conv.padding
    conv.forward(x)
    _, buf = forward(x, w, p)
    rows = [("forward", lambda: conv.forward(x), lambda: forward(x, w, p)),
            ("backward (dW, dx)", lambda: conv.backward(dy),
             lambda: backward(dy, buf, x.shape, w, p))]
    print("| conv2 32→64 @14×14, batch 128, float32 | im2col (Conv2d) ms | padded-grid ms |")
    print("|---|---|---|")
    for name, fa, fb in rows:
        (a, _), (b, _) = time_pair(fa, fb, args.reps, rounds=args.rounds)
        print(f"| {name} | {1e3 * a:.2f} | {1e3 * b:.2f} |")


if __name__ == "__main__":
    main()
