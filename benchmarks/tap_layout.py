"""The tap loops of im2col, col2im and max-pooling in the two memory layouts, alone.

    python benchmarks/tap_layout.py            # conv2 of the speed report's CNN, pool1; best of 20

Until 7 Dec 2026 ccledu stored a conv block's activations channel-major, (C, N, H, W) in memory.
A kernel tap of im2col/col2im then moves, for every (c, n, output row), one run of OW numbers (14
for conv2 of the speed report's CNN): NumPy's inner loop is 14 elements long, and it is entered
C·N·OH times per tap. In a batch-last layout (C, H, W, N) the same tap moves, for every
(c, output row), one contiguous run of OW·N numbers (1792), because the columns of a row and the
samples lie together: the same copies with 128× fewer inner loops. The matrix product does not
care (the columns of ``colsᵀ`` are then ordered (p, q, n) instead of (n, p, q)), and
``MaxPool2d``, written on (N, C, H, W) views, runs unchanged on either (with its bookkeeping
array allocated ``zeros_like(y)``, in y's layout); the max-pool rows time the layer itself.

This script measured the saving before the layers changed (``ccledu.accel.conv_layout``: batch-last
is now the default; ``benchmarks/layout_ab.py`` times the whole step in both). Results in
benchmarks/README.md ("AMD EPYC, 7 Dec 2026"). ``check`` verifies that the two layouts compute
the same numbers (and the channel-major one equals ``ccledu.im2col``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ccledu.im2col import col2im as ccledu_col2im, im2col as ccledu_im2col  # noqa: E402
from ccledu.layers import MaxPool2d  # noqa: E402


def padded(x, p, batch_last):
    """x (N, C, H, W) -> a zero-padded copy, (C, N, Hp, Wp) or batch-last (C, Hp, Wp, N)."""
    N, C, H, W = x.shape
    if batch_last:
        out = np.zeros((C, H + 2 * p, W + 2 * p, N), x.dtype)
        out[:, p:p + H, p:p + W] = x.transpose(1, 2, 3, 0)
    else:
        out = np.zeros((C, N, H + 2 * p, W + 2 * p), x.dtype)
        out[:, :, p:p + H, p:p + W] = x.transpose(1, 0, 2, 3)
    return out


def taps_im2col(xt, col, k, oh, ow, batch_last):
    """Fill col (C, k, k, N, oh, ow) or batch-last (C, k, k, oh, ow, N), stride 1."""
    for i in range(k):
        for j in range(k):
            if batch_last:
                col[:, i, j] = xt[:, i:i + oh, j:j + ow]
            else:
                col[:, i, j] = xt[:, :, i:i + oh, j:j + ow]


def taps_col2im(img, col, k, oh, ow, batch_last):
    """img += the adjoint of :func:`taps_im2col` (img zeroed by the caller)."""
    for i in range(k):
        for j in range(k):
            if batch_last:
                img[:, i:i + oh, j:j + ow] += col[:, i, j]
            else:
                img[:, :, i:i + oh, j:j + ow] += col[:, i, j]


def maxpool(x):
    """ccledu's MaxPool2d(2) on x, whatever its memory layout: (layer, y)."""
    layer = MaxPool2d(2)
    return layer, layer.forward(x)


def layouts(x, batch_last):
    """x (N, C, H, W) as an (N, C, H, W) view of a (C, N, H, W) or (C, H, W, N) array."""
    order = (1, 2, 3, 0) if batch_last else (1, 0, 2, 3)
    back = (3, 0, 1, 2) if batch_last else (1, 0, 2, 3)
    return np.ascontiguousarray(x.transpose(order)).transpose(back)


def check(N=3, C=2, H=6, W=5, k=3, p=1, dtype="float64") -> float:
    """Largest difference between the two layouts' im2col buffers, col2im images and max-pool
    gradients (reordered to compare), and between the channel-major buffer and ccledu.im2col."""
    g = np.random.default_rng(0)
    x = g.standard_normal((N, C, H, W)).astype(dtype)
    oh, ow = H + 2 * p - k + 1, W + 2 * p - k + 1
    worst = 0.0
    cols = {}
    for bl in (False, True):
        col = np.empty((C, k, k, oh, ow, N) if bl else (C, k, k, N, oh, ow), dtype)
        taps_im2col(padded(x, p, bl), col, k, oh, ow, bl)
        cols[bl] = col
    ref = ccledu_im2col(x, k, k, 1, p).T.reshape(C, k, k, N, oh, ow)
    worst = max(worst, np.abs(cols[False] - ref).max(),
                np.abs(cols[True].transpose(0, 1, 2, 5, 3, 4) - ref).max())
    d = g.standard_normal(ref.shape).astype(dtype)
    ref_img = ccledu_col2im(d.reshape(C * k * k, -1).T, x.shape, k, k, 1, p)
    for bl in (False, True):
        dcol = np.ascontiguousarray(d.transpose(0, 1, 2, 4, 5, 3)) if bl else d
        img = padded(np.zeros_like(x), p, bl)
        taps_col2im(img, dcol, k, oh, ow, bl)
        img = img[:, p:p + H, p:p + W].transpose(3, 0, 1, 2) if bl else \
            img[:, :, p:p + H, p:p + W].transpose(1, 0, 2, 3)
        worst = max(worst, np.abs(img - ref_img).max())
    xq = np.round(g.standard_normal((N, C, 2 * H, 2 * W)), 1).astype(dtype)    # with ties
    dy0 = g.standard_normal((N, C, H, W)).astype(dtype)
    grads = []
    for bl in (False, True):
        layer, _ = maxpool(layouts(xq, bl))
        grads.append(np.array(layer.backward(layouts(dy0, bl))))
    return float(max(worst, np.abs(grads[0] - grads[1]).max()))


def best_ms(fn, reps):
    fn()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per piece")
    a = ap.parse_args(argv)
    g = np.random.default_rng(0)
    N, C, H, W, k, p, F = 128, 32, 14, 14, 3, 1, 64                # conv2 of the speed report's CNN
    x = g.standard_normal((N, C, H, W)).astype(np.float32)
    Wm = g.standard_normal((F, C * k * k)).astype(np.float32)
    xq = g.standard_normal((N, C, 28, 28)).astype(np.float32)       # pool1's input
    pieces = {}
    for bl in (False, True):
        xt = padded(x, p, bl)
        col = np.empty((C, k, k, H, W, N) if bl else (C, k, k, N, H, W), np.float32)
        img = np.zeros_like(xt)
        xl = layouts(xq, bl)
        pool, y = maxpool(xl)
        dy = layouts(np.ones(y.shape, np.float32), bl)
        name = "batch-last (C, H, W, N)" if bl else "channel-major (C, N, H, W)"
        pieces[name] = {
            "conv2 im2col taps": lambda xt=xt, col=col, bl=bl: taps_im2col(xt, col, k, H, W, bl),
            "conv2 col2im taps": lambda img=img, col=col, bl=bl: (img.fill(0), taps_col2im(img, col, k, H, W, bl)),
            "conv2 product W colsᵀ": lambda col=col: Wm @ col.reshape(C * k * k, -1),
            "pool1 forward": lambda pool=pool, xl=xl: pool.forward(xl),
            "pool1 backward (Task 2.5 loop)": lambda pool=pool, dy=dy: pool.backward(dy),
        }
    names = list(pieces)
    rows = {}
    for piece in pieces[names[0]]:
        for _ in range(a.rounds):                                    # alternate the layouts
            for name in names:
                t = best_ms(pieces[name][piece], a.reps)
                rows.setdefault(piece, {})[name] = min(t, rows.get(piece, {}).get(name, np.inf))
    print(f"| piece (ms, best of {a.reps} x {a.rounds}) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for piece, r in rows.items():
        print(f"| {piece} | " + " | ".join(f"{r[n]:.2f}" for n in names) + " |")
    total = {n: sum(r[n] for r in rows.values()) for n in names}
    print("| sum | " + " | ".join(f"{total[n]:.2f}" for n in names) + " |")
    print(f"check: largest difference between the layouts {check():.1e} (float64)")


if __name__ == "__main__":
    main()
