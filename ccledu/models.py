"""Networks as a list of blocks, and builders for MLPs, CNNs and the paper's presets.

A **block** is what a learning rule sees as one layer l: an optional reshaping layer, one
parametric layer (``Linear`` or ``Conv2d``), an activation and, for a conv block, a max-pool:

    MLP block l:   z_l = a_{l-1} W_lᵀ,          a_l = σ(z_l)
    conv block l:  z_l = conv(a_{l-1}, W_l),    a_l = maxpool(σ(z_l))
    classifier:    logits = flatten(a_{L-1}) W_Lᵀ          (identity activation)

``a_l`` is the block's output; that is the tensor a rule pairs (CCL), injects an error into
(DFA) or normalises (FF).

Model specifications (``build_model``):

* a preset name: ``mlp-mnist`` (784-256×5-10, the public code's MNIST/Fashion-MNIST MLP),
  ``mlp-cifar10`` / ``mlp-cifar100`` (3072-1024×3-C), ``cnn-mnist`` / ``cnn-cifar10`` /
  ``cnn-cifar100`` (the paper's 5-block CNN, channels 128-128-256-256-512, 32×32 inputs);
* ``mlp`` or ``cnn``: the paper preset for the dataset;
* ``mlp:784-256-10``: widths from the input to the classes;
* ``cnn:1x28x28-c8-c16-10``: input C×H×W, conv blocks ``cK`` (3×3 conv, stride 1, padding 1,
  activation, max-pool 2, K channels), then the number of classes (flatten + linear);
* ``autoencoder`` (= ``autoencoder:16-32``) or ``autoencoder:128-256-1024-2048``: a convolutional
  autoencoder (:func:`autoencoder`) with those encoder channels, for the dataset's images
  (zero-padded to a multiple of 2^depth); the rules ``ccl-ae`` and ``bp-ae`` train it.
"""
from __future__ import annotations

import re

import numpy as np

from .backend import get_array_module, rng as make_rng
from .layers import Activation, Conv2d, Flatten, Linear, MaxPool2d, Upsample2d


class Block:
    """A sequence of layers around exactly one parametric layer (``self.main``).

    ``forward(x)`` runs them in order and keeps the output as ``self.out``.
    ``backward(da, weight=None, need_dx=True)`` runs them in reverse; ``weight`` replaces the
    parametric layer's weight in the error that crosses it (feedback alignment), and
    ``need_dx=False`` stops at the parametric layer (its dW is still computed).
    """

    def __init__(self, layers, kind: str, activation: str = "identity", pool: int = 0):
        self.layers = list(layers)
        mains = [layer for layer in self.layers if isinstance(layer, (Linear, Conv2d))]
        if len(mains) != 1:
            raise ValueError("a block holds exactly one Linear or Conv2d layer")
        self.main = mains[0]
        self._main_index = self.layers.index(self.main)
        self.kind, self.activation, self.pool = kind, activation, pool
        self.out = None

    @property
    def act(self):
        """The block's Activation layer, or None."""
        for layer in self.layers:
            if isinstance(layer, Activation):
                return layer
        return None

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        self.out = x
        return x

    def backward(self, da, weight=None, need_dx: bool = True):
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if layer is self.main:
                da = layer.backward(da, weight=weight, need_dx=need_dx)
                if not need_dx:
                    return None
            else:
                da = layer.backward(da)
        return da

    def output_shape(self, in_shape):
        shape = tuple(in_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape) if hasattr(layer, "output_shape") else shape
        return shape

    def spec(self) -> dict:
        """Trace-format description: the main layer's spec plus activation (and pool)."""
        d = dict(self.main.spec())
        d["activation"] = self.activation
        if self.kind == "conv":
            d["pool"] = self.pool
        ups = [layer.s for layer in self.layers if isinstance(layer, Upsample2d)]
        if ups:
            d["upsample"] = ups[0]
        return d


class Network:
    """A feed-forward stack of blocks mapping x (N, *input_shape) to logits (N, C), or, with
    ``num_classes=None`` (an autoencoder), to a reconstruction of x's shape.

    After ``forward(x)``, ``self.x`` is the input and ``block.out`` each block's output a_l.
    Parameters are named ``forward.<l>.weight`` / ``forward.<l>.bias`` (l = 0 from the input).
    ``pixels``: the model wants inputs in [0, 1] pixels rather than mean/std-normalised ones
    (an autoencoder reconstructs pixels); the trainer's data loading follows it.
    """

    def __init__(self, blocks, input_shape, num_classes: int | None, kind: str, activation: str,
                 dtype="float32", pixels: bool = False):
        self.blocks = list(blocks)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.pixels = bool(pixels)
        self.kind = kind
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self.x = None
        # shapes of every block output (without the batch axis)
        self.shapes = []
        shape = self.input_shape
        for b in self.blocks:
            shape = b.output_shape(shape)
            self.shapes.append(shape)
        wanted = self.input_shape if num_classes is None else (self.num_classes,)
        if self.shapes[-1] != wanted:
            raise ValueError(f"the last block outputs {self.shapes[-1]}, expected {wanted}")

    def __len__(self):
        return len(self.blocks)

    def forward(self, x):
        """x (N, *input_shape) -> logits (N, C); caches every block's output."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"model expects inputs of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        self.x = x
        for b in self.blocks:
            x = b.forward(x)
        return x

    __call__ = forward

    def backward(self, dlogits, weights=None):
        """Send dL/dlogits down through every block, storing each block's parameter gradients.

        ``weights[l]`` (optional) replaces W_l in the error that crosses block l (feedback
        alignment); by default the forward weights are used (backprop).
        """
        d = dlogits
        for l in range(len(self.blocks) - 1, -1, -1):
            w = None if weights is None else weights[l]
            d = self.blocks[l].backward(d, weight=w, need_dx=l > 0)
        return d

    @property
    def activations(self):
        """[a_1, ..., a_L] from the last forward pass (a_L = logits)."""
        return [b.out for b in self.blocks]

    def parameters(self) -> dict:
        """Ordered dict ``forward.<l>.<weight|bias>`` -> array (the live arrays, PyTorch layout)."""
        return {f"forward.{l}.{k}": v for l, b in enumerate(self.blocks) for k, v in b.main.params.items()}

    def gradients(self) -> dict:
        """The gradients the last backward pass stored, named like :meth:`parameters`."""
        return {f"forward.{l}.{k}": v for l, b in enumerate(self.blocks) for k, v in b.main.grads.items()}

    def load_parameters(self, params: dict, strict: bool = True):
        """Copy arrays into the live parameters (shapes must match)."""
        own = self.parameters()
        for name, value in params.items():
            if name not in own:
                if strict:
                    raise KeyError(f"unknown parameter {name!r}; the model has {list(own)}")
                continue
            if tuple(own[name].shape) != tuple(value.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match the model's "
                                 f"{tuple(own[name].shape)}")
            xp = get_array_module(own[name])
            own[name][...] = xp.asarray(value, dtype=own[name].dtype)
        if strict and set(own) - set(params):
            raise KeyError(f"missing parameters: {sorted(set(own) - set(params))}")

    def spec(self) -> list:
        return [b.spec() for b in self.blocks]

    def describe(self) -> str:
        out = f"{self.num_classes} classes" if self.num_classes else f"{self.input_shape}"
        lines = [f"{self.kind.upper()} input {self.input_shape} -> {out}"]
        for l, (b, s) in enumerate(zip(self.blocks, self.shapes)):
            n = sum(int(np.prod(p.shape)) for p in b.main.params.values())
            lines.append(f"  block {l}: {b.spec()} -> {s}  ({n} parameters)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------

def mlp(sizes, activation: str = "elu", bias: bool = False, seed=0, dtype="float32") -> Network:
    """MLP with widths ``sizes = [in, h_1, ..., h_{L-1}, C]``; σ after every hidden layer,
    identity on the logits. Weights drawn from one seeded host generator in layer order."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError("an MLP needs at least an input width and a number of classes")
    if min(sizes) < 1:
        raise ValueError(f"an MLP's widths must all be at least 1 (a layer of width 0 has no "
                         f"units), got {'-'.join(str(v) for v in sizes)}")
    g = make_rng(seed)
    blocks = []
    for l in range(len(sizes) - 1):
        last = l == len(sizes) - 2
        act = "identity" if last else activation
        layers = [Linear(sizes[l], sizes[l + 1], bias=bias, seed=g, dtype=dtype)]
        if not last:
            layers.append(Activation(act))
        blocks.append(Block(layers, "linear", act))
    return Network(blocks, (sizes[0],), sizes[-1], "mlp", activation, dtype)


def conv_block(conv: Conv2d, activation: str, pool: int = 0) -> Block:
    """A conv block: conv, σ, then k×k max-pooling (``pool`` > 1), as the paper's CNN has it.

    The layers run in the order conv -> max-pool -> σ. Every activation here is nondecreasing,
    so max-pooling commutes with it exactly, pool(σ(z)) = σ(pool(z)), also in floating point:
    the block's output is bit-identical to conv -> σ -> pool, and σ and σ' are evaluated on
    1/k² as many numbers (ELU's expm1 was the largest cost of a small CNN's step). The backward
    pass can differ in one corner only: when two values of a window differ in z but round to
    the same σ(z) (saturation, or adjacent floats), conv -> σ -> pool sends the window's
    gradient to the first of them and this order to the larger z.
    """
    layers = [conv]
    if pool and pool > 1:
        layers.append(MaxPool2d(pool))
    layers.append(Activation(activation))
    return Block(layers, "conv", activation, pool if pool and pool > 1 else 0)


def cnn(input_shape, channels, num_classes: int, activation: str = "elu", bias: bool = False,
        kernel: int = 3, pool: int = 2, seed=0, dtype="float32") -> Network:
    """CNN: ``len(channels)`` blocks of [conv k×k stride 1 pad k//2, σ, max-pool], then
    flatten + linear to ``num_classes`` (see :func:`conv_block` for the order inside a block)."""
    g = make_rng(seed)
    blocks = []
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ValueError(f"a CNN input shape is (C, H, W), got {shape}")
    if min(shape) < 1 or any(int(c) < 1 for c in channels) or int(num_classes) < 1:
        raise ValueError(f"a CNN's input sizes, channels and number of classes must be at least "
                         f"1, got input {shape}, channels {tuple(channels)}, {num_classes} classes")
    given = shape
    for i, ch in enumerate(channels):
        if pool > 1 and min(shape[1:]) < pool:
            raise ValueError(f"a CNN with input {given} and "
                             f"{len(channels)} conv block(s): each block's {pool}x{pool} max-pool "
                             f"divides the image's height and width by {pool}, and block {i} would "
                             f"get {shape[1]}x{shape[2]}, "
                             f"too small to pool. Use at most {i} conv blocks for this input, or "
                             f"a larger input")
        conv = Conv2d(shape[0], int(ch), kernel, 1, kernel // 2, bias=bias, seed=g, dtype=dtype)
        b = conv_block(conv, activation, pool)
        shape = b.output_shape(shape)
        blocks.append(b)
    feat = int(np.prod(shape))
    blocks.append(Block([Flatten(), Linear(feat, num_classes, bias=bias, seed=g, dtype=dtype)],
                        "linear", "identity"))
    return Network(blocks, input_shape, num_classes, "cnn", activation, dtype)


def ae_block(cin: int, cout: int, *, stride: int = 1, upsample: bool = False,
             activation: str = "elu", bias: bool = True, seed=0, dtype="float32",
             init_scale: float = 1.0) -> Block:
    """An autoencoder block: [nearest ×2 upsample] → 3×3 conv (stride 1 or 2, padding 1) → σ.

    Shapes: x (N, C_in, H, W) -> (N, C_out, H', W'), H' = 2H (upsample), H/2 (stride 2) or H.
    Weights U(±init_scale/√fan_in) (PyTorch's default times ``init_scale``), biases zero; no
    activation layer for ``'identity'``.
    """
    conv = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias, seed=seed, dtype=dtype,
                  init_scale=init_scale)
    if bias:
        conv.params["bias"][...] = 0
    layers = ([Upsample2d(2)] if upsample else []) + [conv]
    if activation != "identity":
        layers.append(Activation(activation))
    return Block(layers, "conv", activation)


#: factor on the decoder's initial forward weights (and CCL's encoder feedback; public code)
SMALL_INIT = 1e-3
#: encoder channels of the model spec ``autoencoder``
AE_CHANNELS = (16, 32)


def autoencoder(input_shape=(1, 28, 28), channels=AE_CHANNELS, activation: str = "elu",
                bias: bool = True, seed=0, dtype="float32", small_init: float = SMALL_INIT
                ) -> Network:
    """The convolutional autoencoder of the paper's §4.3 (``ccledu/rules/autoencoder.py``):
    D = len(channels) stride-2 conv blocks c_{l-1} → c_l down, then D blocks [upsample ×2,
    conv] back up, the last one linear; x (N, C, H, W) -> x̂ of the same shape (H, W divisible
    by 2^D). The decoder's weights are scaled by ``small_init``; one seeded host generator
    draws all weights in block order.
    """
    chans = tuple(int(c) for c in channels)
    if not chans or min(chans) < 1:
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
    D = len(chans)
    C, H, W = (int(v) for v in input_shape)
    if H % 2 ** D or W % 2 ** D:
        raise ValueError(f"an autoencoder with {D} stride-2 layers needs H and W divisible by "
                         f"{2 ** D}; got {H}×{W}. Pad the images or use fewer channels")
    g = make_rng(seed)
    ch = (C,) + chans
    blocks = [ae_block(ch[l - 1], ch[l], stride=2, activation=activation, bias=bias, seed=g,
                       dtype=dtype) for l in range(1, D + 1)]
    for k in range(D - 1, -1, -1):            # decoder block back to level k
        blocks.append(ae_block(ch[k + 1], ch[k], upsample=True,
                               activation=activation if k > 0 else "identity", bias=bias,
                               seed=g, dtype=dtype, init_scale=small_init))
    return Network(blocks, (C, H, W), None, "autoencoder", activation, dtype, pixels=True)


PAPER_CNN_CHANNELS = (128, 128, 256, 256, 512)

#: preset name -> (kind, description used by build_model)
PRESETS = {
    "mlp-mnist": ("mlp", [784, 256, 256, 256, 256, 256, 10]),
    "mlp-fashion-mnist": ("mlp", [784, 256, 256, 256, 256, 256, 10]),
    "mlp-cifar10": ("mlp", [3072, 1024, 1024, 1024, 10]),
    "mlp-cifar100": ("mlp", [3072, 1024, 1024, 1024, 100]),
    "cnn-mnist": ("cnn", ((1, 32, 32), PAPER_CNN_CHANNELS, 10)),
    "cnn-fashion-mnist": ("cnn", ((1, 32, 32), PAPER_CNN_CHANNELS, 10)),
    "cnn-cifar10": ("cnn", ((3, 32, 32), PAPER_CNN_CHANNELS, 10)),
    "cnn-cifar100": ("cnn", ((3, 32, 32), PAPER_CNN_CHANNELS, 100)),
}

_MLP_RE = re.compile(r"^mlp:(\d+(?:-\d+)+)$")
_CNN_RE = re.compile(r"^cnn:(\d+)x(\d+)x(\d+)((?:-c\d+)*)-(\d+)$")
_AE_RE = re.compile(r"^autoencoder(?::(\d+(?:-\d+)*))?$")
#: specifications that name only a kind (the rule or the dataset chooses the rest)
PLAIN = ("mlp", "cnn", "autoencoder")


def _ae_input(data, depth: int):
    """The dataset's image shape, zero-padded to a square multiple of 2^depth when needed."""
    from .data import lookup

    C, H, W = lookup(data).input_shape
    f = 2 ** depth
    if H % f or W % f:
        H = W = -(-max(H, W) // f) * f
    return (C, H, W)


def parse_spec(spec: str, data: str | None = None):
    """Turn a model specification into ``(kind, args)``; see the module docstring."""
    s = spec.strip().lower()
    if s in ("mlp", "cnn"):
        if data is None:
            raise ValueError(f"model {spec!r} needs a dataset to pick the paper preset; "
                             f"pass data=... or an explicit spec such as 'mlp:784-256-10'")
        s = f"{s}-{data}"
    if s in PRESETS:
        return PRESETS[s]
    m = _MLP_RE.match(s)
    if m:
        return "mlp", [int(v) for v in m.group(1).split("-")]
    m = _CNN_RE.match(s)
    if m:
        shape = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        chans = [int(c) for c in re.findall(r"c(\d+)", m.group(4))]
        return "cnn", (shape, tuple(chans), int(m.group(5)))
    m = _AE_RE.match(s)
    if m:
        chans = tuple(int(c) for c in m.group(1).split("-")) if m.group(1) else AE_CHANNELS
        if data is None:
            raise ValueError(f"model {spec!r} needs a dataset for its input shape; pass data=...")
        return "autoencoder", (_ae_input(data, len(chans)), chans)
    raise ValueError(f"cannot read model specification {spec!r}. Use a preset "
                     f"({', '.join(sorted(PRESETS))}), 'mlp'/'cnn' with a dataset, "
                     f"'mlp:784-256-10' (widths), 'cnn:1x28x28-c8-c16-10' "
                     f"(input CxHxW, conv blocks cK, classes) or 'autoencoder:16-32' "
                     f"(encoder channels)")


def build_model(spec: str, data: str | None = None, activation: str = "elu", bias: bool = False,
                seed=0, dtype="float32", **options) -> Network:
    """Build a network from a specification string (preset or explicit). ``options`` go to
    the builder (a rule's :meth:`~ccledu.rules.base.Rule.model_options`, e.g. the
    autoencoder's ``small_init``)."""
    kind, args = parse_spec(spec, data)
    if kind == "mlp":
        return mlp(args, activation=activation, bias=bias, seed=seed, dtype=dtype, **options)
    if kind == "autoencoder":
        return autoencoder(*args, activation=activation, bias=bias, seed=seed, dtype=dtype,
                           **options)
    shape, chans, classes = args
    return cnn(shape, chans, classes, activation=activation, bias=bias, seed=seed, dtype=dtype,
               **options)


def build_from_layers(layers: list, input_shape, num_classes: int, seed=0, dtype="float64") -> Network:
    """Rebuild a network from trace-format layer descriptions (see ``trace.py``)."""
    g = make_rng(seed)
    blocks = []
    shape = tuple(input_shape)
    for i, d in enumerate(layers):
        kind = d.get("kind")
        act = d.get("activation", "identity")
        if kind == "linear":
            pre = [Flatten()] if len(shape) > 1 else []
            main = Linear(int(d["in"]), int(d["out"]), bias=bool(d.get("bias", False)), seed=g, dtype=dtype)
            post = [] if act == "identity" else [Activation(act)]
            b = Block(pre + [main] + post, "linear", act)
        elif kind == "conv2d":
            main = Conv2d(int(d["in"]), int(d["out"]), int(d.get("kernel", 3)), int(d.get("stride", 1)),
                          int(d.get("padding", 0)), bias=bool(d.get("bias", False)), seed=g, dtype=dtype)
            b = conv_block(main, act, int(d.get("pool", 0) or 0))
        else:
            raise ValueError(f"layer {i}: unknown kind {kind!r} (expected 'linear' or 'conv2d')")
        try:
            shape = b.output_shape(shape)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"layer {i} ({d}) does not fit input shape {shape}: {e}") from None
        blocks.append(b)
    kinds = {b.kind for b in blocks}
    activation = next((b.activation for b in blocks if b.activation != "identity"), "identity")
    return Network(blocks, input_shape, num_classes, "cnn" if "conv" in kinds else "mlp", activation, dtype)
