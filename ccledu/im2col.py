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

Memory layout. The tap loop fills a buffer indexed (C, kh, kw, N, OH, OW) (:func:`im2col_taps`)
and ``im2col`` returns its transpose: ``cols`` has the documented shape and values, but it is a
free transposed *view*, and ``cols.T`` (C*kh*kw, N*OH*OW) is contiguous. ``Conv2d`` multiplies
the contiguous form, ``W_mat @ cols.T``: one large matrix product whose rows are whole output
channels, so turning it into (N, F, OH, OW) needs no transposing copy. (A sample-major buffer
would need a full transposing copy of ``cols`` -- the largest array of the layer -- on every
forward pass.)

``Conv2d`` asks for the buffer *batch-last*: (C, kh, kw, OH, OW, N) in memory, read from a padded
copy of x stored (C, H+2p, W+2p, N). Indexing, values and the tap loop are unchanged (the arrays
are transposed views); what changes is what one tap copies. With the batch axis third from the
end, the tap (i, j) moves, for every (c, n, p), a run of OW neighbouring numbers (at stride 1;
single numbers at a larger stride); with the batch axis last, it moves, for every (c, p), a run
of OW*N numbers (the W and N axes lie together in both arrays; N at a larger stride). NumPy pays
a fixed cost per run, and OW is small in a CNN (14 for the second
layer of a 28x28 network), so the batch-last loop is about twice as fast
(benchmarks/tap_layout.py). Its contiguous form is ``cols.T`` with the rows of ``cols`` in the
order (p, q, n) instead of (n, p, q): the same product. :func:`im2col` itself keeps the
documented row order (and the channel-major buffer, for which that order is a free view).

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


def _buffer(xp, shape, dtype, batch_last: bool, zeros: bool = False):
    """An array of *logical* shape ``shape`` = (C, ..., N, H, W) (the batch third from the
    end), stored in memory either in that order or batch-last, (C, ..., H, W, N): the same
    indexing either way, only the strides differ."""
    alloc = xp.zeros if zeros else xp.empty
    if not batch_last:
        return alloc(shape, dtype=dtype)
    *lead, n, h, w = shape
    k = len(lead)
    return alloc((*lead, h, w, n), dtype=dtype).transpose(*range(k), k + 2, k, k + 1)


def im2col_taps(x, kh: int, kw: int, stride: int = 1, pad: int = 0, batch_last: bool = False):
    """The tap buffer of ``x``: every kernel tap's strided slice, stacked.

    Returns ``col`` of shape (C, kh, kw, N, OH, OW) with
    col[c, i, j, n, p, q] = xpad[n, c, p*stride + i, q*stride + j]; :func:`im2col` is its
    (C*kh*kw, N*OH*OW) reshape, transposed. ``batch_last`` only chooses how ``col`` (and the
    padded copy of x it is read from) lie in memory: (C, kh, kw, N, OH, OW) as indexed, or
    (C, kh, kw, OH, OW, N), in which one tap moves runs of OW*N neighbouring numbers instead of
    runs of OW (see the module docstring). The values, and the tap loop, are the same.
    """
    xp = get_array_module(x)
    if x.ndim != 4:
        raise ValueError(f"im2col expects x of shape (N, C, H, W), got {x.shape}")
    N, C, H, W = x.shape
    oh = conv_output_size(H, kh, stride, pad)
    ow = conv_output_size(W, kw, stride, pad)
    # one copy that pads and goes channel-major: (C, N, H+2p, W+2p), so that every tap below
    # reads, for each channel, from one block that lies together in memory
    xt = _buffer(xp, (C, N, H + 2 * pad, W + 2 * pad), x.dtype, batch_last, zeros=bool(pad))
    xt[:, :, pad:pad + H, pad:pad + W] = x.transpose(1, 0, 2, 3)
    col = _buffer(xp, (C, kh, kw, N, oh, ow), x.dtype, batch_last)

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
    return col


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
    col = im2col_taps(x, kh, kw, stride, pad)            # (C, kh, kw, N, OH, OW), contiguous
    C, N = x.shape[1], x.shape[0]
    # rows (c, i, j) x columns (n, p, q), returned transposed: a view, no copy
    return col.reshape(C * kh * kw, N * col.shape[4] * col.shape[5]).T


def col2im_taps(col, x_shape, kh: int, kw: int, stride: int = 1, pad: int = 0,
                batch_last: bool = False):
    """Adjoint of :func:`im2col_taps`: add every tap of ``col`` (C, kh, kw, N, OH, OW) back onto
    the image it was read from. Returns x (N, C, H, W), stored as (C, N, H, W), or as
    (C, H, W, N) with ``batch_last`` (same values; ``col`` may lie in memory either way)."""
    xp = get_array_module(col)
    N, C, H, W = x_shape
    oh = conv_output_size(H, kh, stride, pad)
    ow = conv_output_size(W, kw, stride, pad)
    if tuple(col.shape) != (C, kh, kw, N, oh, ow):
        raise ValueError(f"col2im: the tap buffer has shape {tuple(col.shape)}, but an image "
                         f"{tuple(x_shape)} with a {kh}x{kw} kernel, stride {stride}, pad {pad} "
                         f"needs {(C, kh, kw, N, oh, ow)}")
    # accumulate channel-major (C, N, H+2p, W+2p), like im2col reads
    imgt = _buffer(xp, (C, N, H + 2 * pad, W + 2 * pad), col.dtype, batch_last, zeros=True)

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
    if pad:                       # one copy that drops the padding and keeps the memory order
        imgt = imgt[:, :, pad:pad + H, pad:pad + W].copy(order="K")
    # returned as the (N, C, H, W) view: no copy; the layer below reads it in that layout
    return imgt.transpose(1, 0, 2, 3)


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
    N, C, H, W = x_shape
    oh = conv_output_size(H, kh, stride, pad)
    ow = conv_output_size(W, kw, stride, pad)
    if cols.shape != (N * oh * ow, C * kh * kw):
        raise ValueError(f"col2im: cols has shape {tuple(cols.shape)}, but an image {tuple(x_shape)} "
                         f"with a {kh}x{kw} kernel, stride {stride}, pad {pad} needs "
                         f"{(N * oh * ow, C * kh * kw)}")
    # (C, kh, kw, N, oh, ow): free when cols is the transposed view im2col produces
    return col2im_taps(cols.T.reshape(C, kh, kw, N, oh, ow), x_shape, kh, kw, stride, pad)
