"""im2col / col2im: turning a convolution into one matrix product.

A 2-D cross-correlation of ``x`` (N, C, H, W) with a kernel ``W`` (F, C, kh, kw) is

    y[n, f, p, q] = sum_{c,i,j} W[f, c, i, j] * xpad[n, c, p*s + i, q*s + j]

If every receptive field is laid out as one row of a matrix ``cols`` of shape
(N*OH*OW, C*kh*kw), with the columns ordered (c, i, j) like ``W.reshape(F, -1)``, then

    y = cols @ W.reshape(F, -1).T          # (N*OH*OW, F), reshaped to (N, F, OH, OW)

``im2col`` builds ``cols`` with a loop over the kh*kw kernel taps: tap (i, j) reads one
strided slice of the padded input for every output position at once. ``col2im`` is the same
loop with ``+=`` (the adjoint map: overlapping receptive fields add up), which is exactly what
the backward pass needs. Only slicing and reshapes are used, so the code runs unchanged on
CuPy (no ``np.add.at`` scatter).

Memory layout. The tap loop fills a buffer ordered (C, kh, kw, N, OH, OW), channel-major, and
``im2col`` returns its transpose: ``cols`` has the documented shape and values, but it is a
free transposed *view*, and ``cols.T`` (C*kh*kw, N*OH*OW) is contiguous. ``Conv2d`` multiplies
that contiguous form, ``W_mat @ cols.T`` (F, N*OH*OW): one large matrix product whose rows are
whole output channels, so turning it into (N, F, OH, OW) moves blocks of OH*OW numbers instead
of transposing element by element. (A sample-major buffer would need a full transposing copy of
``cols`` -- the largest array of the layer -- on every forward pass.)

Output size: OH = (H + 2*pad - kh) // stride + 1, likewise OW.
"""
from __future__ import annotations

from .accel import run_tiles
from .backend import get_array_module


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Spatial output size of a convolution/pooling window along one axis."""
    out = (size + 2 * pad - kernel) // stride + 1
    if out <= 0:
        raise ValueError(f"window of size {kernel} (stride {stride}, padding {pad}) does not fit "
                         f"an input of size {size}")
    return out


def im2col(x, kh: int, kw: int, stride: int = 1, pad: int = 0):
    """Receptive fields of ``x`` as rows.

    Parameters
    ----------
    x : array (N, C, H, W)
    kh, kw : kernel height and width
    stride, pad : stride and zero padding (same on both axes)

    Returns
    -------
    cols : array (N*OH*OW, C*kh*kw); row n*OH*OW + p*OW + q holds the field of output (p, q)
        of sample n, column c*kh*kw + i*kw + j holds xpad[n, c, p*stride + i, q*stride + j].
        It is the transposed view of a contiguous (C*kh*kw, N*OH*OW) buffer (see the module
        docstring): use ``cols.T`` for the contiguous form, ``xp.ascontiguousarray(cols)`` for
        a row-major copy.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"im2col expects x of shape (N, C, H, W), got {x.shape}")
    N, C, H, W = x.shape
    oh = conv_output_size(H, kh, stride, pad)
    ow = conv_output_size(W, kw, stride, pad)
    # one copy that pads and goes channel-major: (C, N, H+2p, W+2p), so that every tap below
    # reads, for each channel, from one (N, H+2p, W+2p) block that lies together in memory
    xt = (xp.zeros if pad else xp.empty)((C, N, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xt[:, :, pad:pad + H, pad:pad + W] = x.transpose(1, 0, 2, 3)
    col = xp.empty((C, kh, kw, N, oh, ow), dtype=x.dtype)

    def taps(xt, col):                                   # fills col in place
        ### BEGIN SOLUTION  Task 2.3: im2col tap loop
        for i in range(kh):
            i_end = i + stride * oh
            for j in range(kw):
                j_end = j + stride * ow
                col[:, i, j] = xt[:, :, i:i_end:stride, j:j_end:stride]
        ### END SOLUTION
    # taps() runs on the whole arrays, or on channel slices of them (cache-sized blocks, or one
    # slice per core at once): same values; chosen by measurement, see ccledu.accel.run_tiles
    run_tiles("im2col", taps, xt, col, axes=(0,))
    # rows (c, i, j) x columns (n, p, q), returned transposed: a view, no copy
    return col.reshape(C * kh * kw, N * oh * ow).T


def col2im(cols, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0):
    """Adjoint of :func:`im2col`: scatter-add rows back onto an image.

    Parameters
    ----------
    cols : array (N*OH*OW, C*kh*kw), laid out as :func:`im2col` returns
    x_shape : (N, C, H, W) of the image that ``im2col`` was applied to

    Returns
    -------
    x : array (N, C, H, W) with x[n, c, h, w] = sum of every entry of ``cols`` that
        ``im2col`` copied from position (h, w) (zero-padding entries are dropped); stored
        channel-major (the transposed view of a contiguous (C, N, H, W) array).

    It satisfies <im2col(x), cols> = <x, col2im(cols)> for all x, cols.
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    oh = conv_output_size(H, kh, stride, pad)
    ow = conv_output_size(W, kw, stride, pad)
    if cols.shape != (N * oh * ow, C * kh * kw):
        raise ValueError(f"col2im: cols has shape {tuple(cols.shape)}, but an image {tuple(x_shape)} "
                         f"with a {kh}x{kw} kernel, stride {stride}, pad {pad} needs "
                         f"{(N * oh * ow, C * kh * kw)}")
    # (C, kh, kw, N, oh, ow): free when cols is the transposed view im2col and Conv2d produce
    col = cols.T.reshape(C, kh, kw, N, oh, ow)
    # accumulate channel-major (C, N, H+2p, W+2p), like im2col reads; with padding, one copy
    # at the end drops it
    imgt = xp.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=cols.dtype)

    def taps(imgt, col):                                 # adds into imgt in place
        ### BEGIN SOLUTION  Task 2.4: col2im tap loop
        for i in range(kh):
            i_end = i + stride * oh
            for j in range(kw):
                j_end = j + stride * ow
                imgt[:, :, i:i_end:stride, j:j_end:stride] += col[:, i, j]
        ### END SOLUTION
    # taps() runs on the whole arrays, or on channel slices of them (same values; chosen by
    # measurement, see ccledu.accel.run_tiles)
    run_tiles("col2im", taps, imgt, col, axes=(0,))
    # returned channel-major: the (N, C, H, W) view of a contiguous (C, N, H, W) array (no copy
    # without padding); the layer below reads it in that layout (``ccledu.layers``)
    if pad:
        imgt = xp.ascontiguousarray(imgt[:, :, pad:pad + H, pad:pad + W])
    return imgt.transpose(1, 0, 2, 3)
