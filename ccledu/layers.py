"""Layers with an explicit forward and backward pass.

The contract (the same for every layer):

* ``y = layer.forward(x)`` computes the output and caches what the backward pass needs;
* ``dx = layer.backward(dy)`` takes dL/dy, stores dL/dW, dL/db in ``layer.grads`` (parametric
  layers) and returns dL/dx.

A layer does not know which learning rule trains it. The only hook a rule gets is the
``weight=`` argument of :meth:`Linear.backward` / :meth:`Conv2d.backward`: the matrix the
error crosses on its way down (default: the layer's own weight, i.e. backprop; feedback
alignment passes its fixed random matrix), and ``need_dx=False`` to skip dL/dx when nothing
below needs it.

Parameters use PyTorch's layout: a linear weight is (out, in), a conv weight is
(out, in, kh, kw), a bias is (out,). Initialisation also follows PyTorch's default:
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn on the host.

Memory layout (speed only: no value depends on it beyond float rounding). Image tensors
always have the documented shape (N, C, H, W), but inside a CNN they are mostly stored
*batch-last*, i.e. as the (N, C, H, W) transposed view of a contiguous (C, H, W, N) array: that
is the layout a conv's matrix product produces (``Conv2d``) and its tap loops read
(``ccledu.im2col.im2col_taps``), so keeping it saves a transposing copy of every conv output, of
every gradient reaching a conv, and of every conv input; and in it a kernel tap of im2col,
col2im or max-pooling moves runs of W·N neighbouring numbers instead of runs of W, which NumPy
does much faster (``ccledu.accel.conv_layout``; ``CCLEDU_CONV_LAYOUT=channel_major`` keeps the
(C, N, H, W) layout of earlier versions). Layers allocate their outputs in their input's layout
(``empty_like``, ``zeros_like``, ``copy(order="K")``; element-wise NumPy operations do this by
themselves). Use ``xp.ascontiguousarray(y)`` where a C-ordered array is needed.
"""
from __future__ import annotations

import math

import numpy as np

from .accel import conv_layout, expm1_nonpositive, expm1_nonpositive_f32, run_tiles, weight_grad, zero  # noqa: F401  (public name)
from .backend import asarray, get_array_module, rng as make_rng
from .im2col import col2im, col2im_taps, conv_output_size, im2col, im2col_taps  # noqa: F401


def uniform_init(shape, fan_in: int, generator: np.random.Generator, dtype, scale: float = 1.0):
    """Host-drawn U(-b, b) with b = scale/sqrt(fan_in), moved to the current back-end."""
    bound = scale / math.sqrt(fan_in)
    return asarray(generator.uniform(-bound, bound, size=shape), dtype=dtype)


class Layer:
    """Base class: ``params`` and ``grads`` are dicts of arrays keyed 'weight' / 'bias'."""

    def __init__(self):
        self.params: dict = {}
        self.grads: dict = {}

    def forward(self, x):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, dy):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def spec(self) -> dict:
        """A JSON-able description (used by the trace format)."""
        return {"kind": type(self).__name__.lower()}

    def clear_cache(self):
        for k in [k for k in vars(self) if k.startswith("_c_")]:
            setattr(self, k, None)


# --------------------------------------------------------------------------------------------
# Parametric layers
# --------------------------------------------------------------------------------------------

class Linear(Layer):
    """Affine map ``y = x Wᵀ + b``.

    Shapes: x (N, in), W (out, in), b (out,), y (N, out).

    Backward, for upstream gradient dy = dL/dy (N, out):
        dW = dyᵀ x            (out, in)
        db = Σ_n dy[n]        (out,)
        dx = dy M             (N, in), with M = W for backprop or the ``weight`` passed in.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 seed=0, dtype="float32", init_scale: float = 1.0):
        super().__init__()
        g = make_rng(seed)
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.params["weight"] = uniform_init((out_features, in_features), in_features, g, dtype,
                                             init_scale)
        if bias:
            self.params["bias"] = uniform_init((out_features,), in_features, g, dtype, init_scale)
        self._c_x = None

    def output_shape(self, in_shape):
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(f"Linear({self.in_features}->{self.out_features}) cannot take "
                             f"inputs of shape {tuple(in_shape)}")
        return (self.out_features,)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}->{self.out_features}) expects input "
                             f"(N, {self.in_features}), got {tuple(x.shape)}")
        self._c_x = x
        y = x @ self.params["weight"].T
        if self.has_bias:
            y = y + self.params["bias"]
        return y

    def backward(self, dy, weight=None, need_dx: bool = True):
        x = self._c_x
        if x is None:
            raise RuntimeError("Linear.backward called before forward")
        ### BEGIN SOLUTION  Task 1.3: Linear.backward (dW, db, dx)
        self.grads["weight"] = dy.T @ x
        if self.has_bias:
            self.grads["bias"] = dy.sum(axis=0)
        if not need_dx:
            return None
        M = self.params["weight"] if weight is None else weight
        return dy @ M
        ### END SOLUTION

    def spec(self):
        return {"kind": "linear", "in": self.in_features, "out": self.out_features,
                "bias": self.has_bias}


class Conv2d(Layer):
    """2-D cross-correlation computed as one matrix product over im2col columns.

    Shapes: x (N, C, H, W), W (F, C, kh, kw), b (F,), y (N, F, OH, OW),
    OH = (H + 2p - kh)//s + 1.

    Forward:  cols = im2col(x) (N·OH·OW, C·kh·kw);  Y = cols W_matᵀ (+ b), W_mat = W.reshape(F, -1).
    Backward, with dY (N·OH·OW, F) the upstream gradient in row layout:
        dW_mat = dYᵀ cols,   db = Σ_rows dY,   dx = col2im(dY M_mat)
    where M = W for backprop or the ``weight`` passed in (a fixed kernel for feedback alignment):
    the last line is the "transposed convolution" of the backward pass.

    The code computes the transposes of these products, Yᵀ = W_mat colsᵀ (F, OH·OW·N) and
    dcolsᵀ = M_matᵀ dYᵀ, on im2col's tap buffer (``ccledu.im2col.im2col_taps``) stored
    batch-last, (C, k, k, OH, OW, N): its contiguous form is colsᵀ with the rows of cols taken
    in the order (p, q, n) instead of (n, p, q), and a product does not care in which order its
    rows come (the sums over positions in dW_mat and db run in that order). Memory layout: y is
    returned as the (N, F, OH, OW) *view* of the batch-last (F, OH, OW, N) product, without a
    copy; the layers after it keep the layout (see ``ccledu.layers`` "Memory layout"), so dy
    usually arrives batch-last too and dYᵀ is a free reshape. Values never depend on the layout
    beyond float rounding (``CCLEDU_CONV_LAYOUT=channel_major``: the (n, p, q) order).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 0, bias: bool = False, *, seed=0,
                 dtype="float32", init_scale: float = 1.0):
        super().__init__()
        g = make_rng(seed)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.has_bias = kernel_size, stride, padding, bias
        fan_in = in_channels * kernel_size * kernel_size
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.params["weight"] = uniform_init(shape, fan_in, g, dtype, init_scale)
        if bias:
            self.params["bias"] = uniform_init((out_channels,), fan_in, g, dtype, init_scale)
        self._c_cols = None
        self._c_xshape = None

    def output_shape(self, in_shape):
        """(C, H, W) -> (F, OH, OW)."""
        _, H, W = in_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        return (self.out_channels, conv_output_size(H, k, s, p), conv_output_size(W, k, s, p))

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}->{self.out_channels}) expects input "
                             f"(N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        xp = get_array_module(x)
        N = x.shape[0]
        F, k, s, p = self.out_channels, self.kernel_size, self.stride, self.padding
        _, oh, ow = self.output_shape(x.shape[1:])
        last = conv_layout() == "batch_last"
        col = im2col_taps(x, k, k, s, p, batch_last=last)    # (C, k, k, N, OH, OW)
        # colsᵀ (C·k·k, OH·OW·N) or (C·k·k, N·OH·OW): the buffer's memory order, a free reshape
        cols_t = (col.transpose(0, 1, 2, 4, 5, 3) if last else col).reshape(col.shape[0] * k * k, -1)
        self._c_cols, self._c_xshape, self._c_last = cols_t, x.shape, last
        y_t = self.params["weight"].reshape(F, -1) @ cols_t   # Yᵀ: (F, OH·OW·N)
        if self.has_bias:
            y_t += self.params["bias"][:, None]
        if last:                                             # batch-last view, no copy
            return y_t.reshape(F, oh, ow, N).transpose(3, 0, 1, 2)
        return y_t.reshape(F, N, oh, ow).transpose(1, 0, 2, 3)

    def backward(self, dy, weight=None, need_dx: bool = True):
        cols_t = self._c_cols
        if cols_t is None:
            raise RuntimeError("Conv2d.backward called before forward")
        F, last = self.out_channels, self._c_last
        # dYᵀ: (F, OH·OW·N), a free reshape when dy is batch-last (channel-major: (F, N·OH·OW))
        dY_t = dy.transpose(1, 2, 3, 0) if last else dy.transpose(1, 0, 2, 3)
        dY_t = dY_t.reshape(F, -1)
        # dW_mat = dYᵀ cols, i.e. dY_t @ cols_t.T (float32 NumPy: in slices of the positions
        # where this CPU computes that faster, see ccledu.accel.weight_grad)
        self.grads["weight"] = weight_grad(dY_t, cols_t).reshape(self.params["weight"].shape)
        if self.has_bias:
            self.grads["bias"] = dY_t.sum(axis=1)
        if not need_dx:
            return None
        M = self.params["weight"] if weight is None else weight
        dcols_t = M.reshape(F, -1).T @ dY_t                  # dcolsᵀ: (C·k·k, OH·OW·N)
        N, C, H, W = self._c_xshape
        k = self.kernel_size
        oh, ow = self.output_shape((C, H, W))[1:]
        col = (dcols_t.reshape(C, k, k, oh, ow, N).transpose(0, 1, 2, 5, 3, 4) if last
               else dcols_t.reshape(C, k, k, N, oh, ow))     # the tap buffer (C, k, k, N, OH, OW)
        return col2im_taps(col, self._c_xshape, k, k, self.stride, self.padding, batch_last=last)

    def spec(self):
        return {"kind": "conv2d", "in": self.in_channels, "out": self.out_channels,
                "kernel": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "bias": self.has_bias}


# --------------------------------------------------------------------------------------------
# Shape layers
# --------------------------------------------------------------------------------------------

class MaxPool2d(Layer):
    """Max pooling over non-overlapping k×k windows (stride = k; a remainder row/column is dropped,
    as PyTorch's floor mode does).

    Shapes: x (N, C, H, W) -> y (N, C, H//k, W//k).
    Forward: the window's taps are strided slices, like im2col's: tap t = (i, j) (row-major,
    t = i·k + j) is x[:, :, i::k, j::k], and y is their maximum. It is taken in two passes, over
    the k column taps of every row (x[:, :, :, j::k]), then over the k row taps of that result:
    2k strided passes instead of k², the second over contiguous rows (same values).
    Backward: each window's gradient goes to the one position that holds the maximum — the first
    tap (row-major) whose value equals y, so a tie goes to the first position — zeros elsewhere.
    The forward pass caches x and y, not the position of the maximum: forward-only passes (e.g.
    evaluation, and forward-forward's C candidate passes) do not pay for it.
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.k = kernel_size
        self._c_x = self._c_y = None

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C, H // self.k, W // self.k)

    def forward(self, x):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        k = self.k
        oh, ow = H // k, W // k
        if oh == 0 or ow == 0:
            raise ValueError(f"MaxPool2d({k}) cannot pool an input of spatial size {H}x{W}")
        y = xp.empty_like(x[:, :, 0:oh * k:k, 0:ow * k:k])        # in x's memory layout

        def taps(x, y):                                            # fills y in place
            # the window maximum is separable: first over the k column taps of every row
            # (strided reads), then over the k row taps of that result (contiguous rows)
            rows = x[:, :, 0:oh * k]
            m = rows[:, :, :, 0:ow * k:k]                          # (N, C, oh·k, ow)
            if k > 1:
                m = xp.maximum(m, rows[:, :, :, 1:ow * k:k])       # a new array, x's layout
            for j in range(2, k):
                xp.maximum(m, rows[:, :, :, j:ow * k:k], out=m)
            y[...] = m[:, :, 0::k]
            for i in range(1, k):
                xp.maximum(y, m[:, :, i::k], out=y)
        # the tap loop runs on the whole arrays, or on batch/channel slices of them (cache-sized
        # blocks, or one slice per core at once): same values; chosen by measurement, see
        # ccledu.accel.run_tiles
        run_tiles("maxpool_forward", taps, x, y)
        self._c_x, self._c_y = x, y
        return y

    def backward(self, dy):
        xp = get_array_module(dy)
        x, y = self._c_x, self._c_y
        if x is None:
            raise RuntimeError("MaxPool2d.backward called before forward")
        N, C, H, W = x.shape
        k = self.k
        oh, ow = H // k, W // k
        # every pooled position is written below; only a dropped remainder row/column needs zeros
        exact = oh * k == H and ow * k == W
        dx = (xp.empty_like if exact else xp.zeros_like)(x, dtype=dy.dtype)   # x's layout

        def taps(x, y, dy, dx):                         # writes the gradient into dx in place
            ### BEGIN SOLUTION  Task 2.5: MaxPool2d.backward
            found = xp.zeros_like(y, dtype=bool)        # windows whose maximum is already routed
            for t in range(k * k):
                i, j = divmod(t, k)
                hit = x[:, :, i:oh * k:k, j:ow * k:k] == y
                hit &= ~found
                found |= hit
                xp.multiply(dy, hit, out=dx[:, :, i:oh * k:k, j:ow * k:k])
            ### END SOLUTION
        # taps() runs on the whole arrays, or on batch/channel slices holding whole windows
        # (same values; chosen by measurement, see ccledu.accel.run_tiles)
        run_tiles("maxpool_backward", taps, x, y, dy, dx)
        return dx

    def spec(self):
        return {"kind": "maxpool2d", "kernel": self.k}


class Upsample2d(Layer):
    """Nearest-neighbour upsampling by an integer factor s.

    Shapes: x (N, C, H, W) -> y (N, C, s·H, s·W), y[n, c, h, w] = x[n, c, h//s, w//s].
    Backward: dx[n, c, i, j] = Σ of dy over the s×s block that copied x[n, c, i, j].
    """

    def __init__(self, scale: int = 2):
        super().__init__()
        self.s = scale

    def output_shape(self, in_shape):
        C, H, W = in_shape
        return (C, H * self.s, W * self.s)

    def forward(self, x):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        s = self.s
        # built in the layout of the conv that reads it (see "Memory layout"): batch-last
        # (C, s·H, s·W, N), or channel-major (C, N, s·H, s·W)
        if conv_layout() == "batch_last":
            y = xp.broadcast_to(x.transpose(1, 2, 3, 0)[:, :, None, :, None, :], (C, H, s, W, s, N))
            return y.reshape(C, H * s, W * s, N).transpose(3, 0, 1, 2)
        y = xp.broadcast_to(x.transpose(1, 0, 2, 3)[:, :, :, None, :, None], (C, N, H, s, W, s))
        return y.reshape(C, N, H * s, W * s).transpose(1, 0, 2, 3)

    def backward(self, dy):
        N, C, Hs, Ws = dy.shape
        s = self.s
        if conv_layout() == "batch_last":   # the block sums in that order: a free reshape
            d = dy.transpose(1, 2, 3, 0).reshape(C, Hs // s, s, Ws // s, s, N)
            return d.sum(axis=(2, 4)).transpose(3, 0, 1, 2)
        return dy.reshape(N, C, Hs // s, s, Ws // s, s).sum(axis=(3, 5))

    def spec(self):
        return {"kind": "upsample2d", "scale": self.s}


class Flatten(Layer):
    """(N, C, H, W) -> (N, C·H·W); backward reshapes back."""

    def __init__(self):
        super().__init__()
        self._c_shape = None

    def output_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x):
        self._c_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._c_shape)


class Reshape(Layer):
    """(N, *in_shape) -> (N, *shape); backward reshapes back."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)
        self._c_shape = None

    def output_shape(self, in_shape):
        return self.shape

    def forward(self, x):
        self._c_shape = x.shape
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy):
        return dy.reshape(self._c_shape)

    def spec(self):
        return {"kind": "reshape", "shape": list(self.shape)}


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

# Speed note: the activations compare with zero(z), which is the scalar 0 or an array of zeros,
# whichever this CPU runs faster (NumPy's scalar-operand loop is SIMD on some CPUs and a slow
# broadcast loop on others; see ccledu.accel.zero). Same values either way.

def _relu(xp, z):
    return xp.maximum(z, zero(z))


def _relu_grad(xp, z, a):
    return (z > 0).astype(z.dtype)


def _elu(xp, z):
    # α = 1. ELU(z) = max(z, expm1(min(z, 0))): for z > 0 the second term is 0, and for z ≤ 0
    # it is eᶻ − 1 ≥ z (also after rounding); expm1 never sees a large positive z (no
    # overflow). One temporary array, three passes. (Until 7 Dec 2026: expm1(min(z, 0)) +
    # max(z, 0), the same bits, ELU(−0) = +0 included, with a second temporary and a fourth pass.)
    a = xp.minimum(z, zero(z))
    a = expm1_nonpositive(a)     # = xp.expm1(a); float32 NumPy: the kernel measured fastest here
    xp.maximum(z, a, out=a)      # z first: for z = −0 NumPy on x86 returns a = +0, as the sum did
    return a


def _elu_grad(xp, z, a):
    ### BEGIN SOLUTION  Task 1.4: ELU derivative
    # σ'(z) = 1 for z > 0 and e^z = a + 1 otherwise; since a > 0 exactly when z > 0,
    # both cases read min(a, 0) + 1.
    d = xp.minimum(a, zero(a))       # zero(a): 0, as a scalar or an array (ccledu.accel)
    d += 1
    return d
    ### END SOLUTION


def _tanh(xp, z):
    return xp.tanh(z)


def _tanh_grad(xp, z, a):
    return 1 - a * a


LEAKY_SLOPE = 0.01


def _leaky(xp, z):
    return xp.where(z > 0, z, LEAKY_SLOPE * z)


def _leaky_grad(xp, z, a):
    return xp.where(z > 0, 1, LEAKY_SLOPE).astype(z.dtype)


def _sigmoid(xp, z):
    # split by sign so exp never overflows
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _sigmoid_grad(xp, z, a):
    return a * (1 - a)


def _identity(xp, z):
    return z


def _identity_grad(xp, z, a):
    return xp.ones_like(z)


#: name -> (σ(z), σ'(z) given z and a = σ(z)). ELU uses α = 1, leaky ReLU slope 0.01 (PyTorch's defaults).
ACTIVATIONS = {
    "relu": (_relu, _relu_grad),
    "elu": (_elu, _elu_grad),
    "tanh": (_tanh, _tanh_grad),
    "leaky_relu": (_leaky, _leaky_grad),
    "sigmoid": (_sigmoid, _sigmoid_grad),
    "identity": (_identity, _identity_grad),
}


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return name


def activate(name: str, z):
    """σ(z) for the activation called ``name``."""
    return ACTIVATIONS[check_activation(name)][0](get_array_module(z), z)


def activation_grad(name: str, z, a):
    """σ'(z), given z and a = σ(z) (the cheaper of the two is used)."""
    return ACTIVATIONS[check_activation(name)][1](get_array_module(z), z, a)


class Activation(Layer):
    """Element-wise a = σ(z). Backward: dz = da ⊙ σ'(z). Any shape."""

    def __init__(self, name: str = "elu"):
        super().__init__()
        self.name = check_activation(name)
        self._c_z = self._c_a = None

    def output_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, z):
        a = activate(self.name, z)
        self._c_z, self._c_a = z, a
        return a

    def backward(self, da):
        if self.name == "identity":
            return da
        g = activation_grad(self.name, self._c_z, self._c_a)   # a fresh array: reuse it
        if g.dtype != da.dtype or g.shape != da.shape:
            return da * g
        g *= da
        return g

    def spec(self):
        return {"kind": "activation", "name": self.name}
