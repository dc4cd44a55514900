"""Convolutional autoencoders trained by counter-current learning (CCL) and by backprop (BP).

This is §4.3 of Kao & Hariharan (NeurIPS 2024): the target of an autoencoder is its input, so
CCL's feedback network, which always starts from the target, here starts from the *image*.
Structure, pairing, loss form and initial scales follow the public code's strided autoencoder
(``models/models_cnn_ae_legacy.py`` and ``AEModel_L4`` in ``models/models.py``, trained by
``main_class_convae.py``); what differs is listed at the end.

Layers (D = ``len(channels)``, c_0 = image channels, c_1..c_D = ``channels``)
-------------------------------------------------------------------------------
The forward net has 2D conv layers l = 1..2D, all 3×3 with padding 1:

* encoder, l = 1..D:      a_l = σ(W_l ∗₂ sg(a_{l-1}) + b_l)             c_{l-1} → c_l, stride 2
* decoder, l = D+1..2D:   a_l = σ(W_l ∗ up(sg(a_{l-1})) + b_l)          c_{2D-l+1} → c_{2D-l}
* the output layer l = 2D has no activation: x̂ = a_{2D} = W_{2D} ∗ up(sg(a_{2D-1})) + b_{2D}

with a_0 = x, ∗₂ a stride-2 convolution, up(·) a nearest-neighbour ×2 upsample and sg(·) the
stop-gradient. Layer l's output has c_{min(l, 2D-l)} channels at resolution H/2^{min(l, 2D-l)}
(H must be divisible by 2^D; the trainer pads the images when it is not).

The feedback net has one layer V_l per forward layer, mapping layer l's output space back to its
input space, and runs from the target t = x (the image itself) down to the input side:

    s_{2D} = t
    s_{l-1} = φ(V_l ∗₂ sg(s_l) + β_l)           l = D+1..2D  (undoes a decoder upsample-conv)
    s_{l-1} = φ(V_l ∗ up(sg(s_l)) + β_l)        l = 2..D     (undoes an encoder strided conv)
    s_0     = V_1 ∗ up(sg(s_1)) + β_1            (linear)

so s_l has exactly a_l's shape. Weights are in PyTorch layout: W_l is (out, in, 3, 3) of its own
layer, V_l is (in_l, out_l, 3, 3), i.e. a conv from layer l's output channels back to its input
channels. Biases start at zero; weights start at PyTorch's default U(±1/√fan_in), and the
*decoder's forward* weights (l > D) and the *encoder's feedback* weights (l ≤ D) are multiplied
by ``small_init`` = 0.001 (public code): the two nets start by passing almost nothing along the
half of the loop that the other net's targets have not yet shaped.

Loss (public ``C2Loss_ConvAutoEncoder_Legacy``)
-----------------------------------------------
Pair l compares a_l and s_l (both (N, C_l, H_l, W_l)); with mean(·) over all N·C_l·H_l·W_l
entries, s_C = ``scale_c`` (1) and s_D = ``scale_d`` (1):

    pair_l = s_C · H_l · mean((a_l − s_l)²)  +  s_D · H_l · mean((â_l − ŝ_l)²)     l = 1..2D−1
    pair_0 = s_C · H · mean((x − s_0)²)                                           (input end)
    pair_2D = s_C · H · mean((x̂ − x)²)                                            (output end)
    L = Σ_{l=0}^{2D} pair_l

where â is each feature map centred and scaled to unit length over its H_l×W_l positions:
â[n,c] = (a[n,c] − μ_{n,c}) / (‖a[n,c] − μ_{n,c}‖ + ε), ε = 1e-8. The factor H_l (the pair's
spatial height) is the public code's; it weights coarse layers less. pair_2D is the
reconstruction loss; pair_0 asks the feedback net to reconstruct its input from the bottleneck
the other way round.

Which weights each term reaches. Every layer input is detached, so a_l depends on W_l (and b_l)
only and s_l on V_{l+1} (and β_{l+1}) only: pair_l trains exactly W_l (none for l = 0, since
a_0 = x) and V_{l+1} (none for l = 2D, since s_{2D} = x). Each weight is in exactly one pair.

Gradients, written out (K = numel of the pair's tensors, c = s·H_l):

    ∂[c·mean((A − B)²)]/∂A = 2c (A − B)/K = −∂/∂B
    normalised maps, per (n, c): y = a − mean(a), r = ‖y‖, u = y/(r + ε), g = ∂L/∂u:
        ∂L/∂y = g/(r + ε) − y (y·g) / (r (r + ε)²),   ∂L/∂a = ∂L/∂y − mean(∂L/∂y)

then ∂L/∂a_l goes through σ' and layer l's conv (``Conv2d.backward(..., need_dx=False)``: the
input is detached, so no dx) to ∇W_l, ∇b_l, and ∂L/∂s_l through φ' and V_{l+1}'s conv to
∇V_{l+1}, ∇β_{l+1}.

BP autoencoder
--------------
The same forward net, trained on the reconstruction MSE L = mean((x̂ − x)²) (public BP branch,
no H factor) by exact backprop through all 2D layers (``need_dx=True`` everywhere but layer 1).

Names (trace-format style, 0-based from the input side): ``forward.<i>.weight|bias`` is W_{i+1},
b_{i+1}; ``feedback.<i>.weight|bias`` is V_{i+1}, β_{i+1} (the map from forward layer i's output
back to its input). Loss terms: ``pair/<l>`` (l = 0..2D) and, for interior pairs, ``pair/<l>/c``
and ``pair/<l>/d``; ``recon_mse`` = mean((x̂ − x)²) (the plain MSE, not part of L's scaling).

Differences from the public code and the paper
----------------------------------------------
* No batch normalisation. The released script builds every layer with BatchNorm (legacy model);
  ``AEModel_L4`` / the ``stl10_ccl.yaml`` settings turn it off (fw_bn = bw_bn = 0). ccledu's
  layers have no BatchNorm, so the second form is implemented.
* Init: PyTorch's default uniform init scaled as in ``AEModel_L4``; the legacy model also
  orthogonalises every kernel and zeroes the output layer's W and the lowest feedback V.
* Data: the paper uses STL-10 96×96 in [0, 1] with random crop and flip; here any dataset
  ccledu.data loads, no augmentation, pixels in [0, 1] by default. The public loop also stops
  each epoch after 101 batches; here an epoch is a full pass (use ``limit_train``).
* The public validation/test metric is mean((x̂ − x)²), which is what ``test_mse`` reports.
* Default sizes are scaled down for a CPU (``PRESETS['cpu']``); ``PRESETS['paper']`` has the
  paper's channels 128-256-1024-2048 and the legacy YAML's optimiser settings.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backend import asarray, get_array_module, rng as make_rng, resolve_dtype, to_numpy, use
from .layers import Activation, Conv2d, Upsample2d, check_activation

__all__ = [
    "ConvUnit", "ConvAutoencoder", "CCLAutoencoder", "BPAutoencoder", "AEStep",
    "PRESETS", "AEConfig", "build_autoencoder", "train_autoencoder", "save_reconstructions",
    "pair_mse", "normalize_maps", "normalize_maps_backward", "add_parser",
]

#: ε of the per-map normalisation (public code: 1e-8)
NORM_EPS = 1e-8
#: factor on the decoder's forward and the encoder's feedback initial weights (public code)
SMALL_INIT = 1e-3


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------

def normalize_maps(a, eps: float = NORM_EPS):
    """Centre and length-normalise every feature map over its spatial positions.

    a (N, C, H, W) -> (u, y, r): y = a − mean_{h,w}(a), r = ‖y‖ over (h, w) (shape (N, C, 1, 1)),
    u = y / (r + ε).
    """
    xp = get_array_module(a)
    y = a - a.mean(axis=(2, 3), keepdims=True)
    r = xp.sqrt((y * y).sum(axis=(2, 3), keepdims=True))
    return y / (r + eps), y, r


def normalize_maps_backward(g, y, r, eps: float = NORM_EPS):
    """∂L/∂a from g = ∂L/∂u for u = normalize_maps(a)[0].

    ∂L/∂y = g/(r + ε) − y (y·g)/(r (r + ε)²) (the second term is 0 where r = 0, since y = 0
    there), then the centring's backward subtracts the spatial mean.
    """
    xp = get_array_module(g, y)
    ### BEGIN SOLUTION  Task 7.2: backward of the per-map centring and normalisation (normalize_maps_backward)
    yg = (y * g).sum(axis=(2, 3), keepdims=True)
    safe_r = xp.where(r > 0, r, 1)
    dy = g / (r + eps) - y * (yg / (safe_r * (r + eps) ** 2))
    return dy - dy.mean(axis=(2, 3), keepdims=True)
    ### END SOLUTION


def pair_mse(A, B, scale: float):
    """scale · mean((A − B)²) and its gradients (dA, dB = −dA)."""
    d = A - B
    loss = scale * (d * d).mean()
    dA = (2.0 * scale / d.size) * d
    return loss, dA, -dA


def pair_loss(A, B, scale_c: float, scale_d: float, end: bool = False):
    """The loss of one pair (module docstring) and its gradients.

    Returns (total, {"c": loss_C, "d": loss_D}, dA, dB). ``end=True``: the C part only.
    Scales include the H_l factor: c = scale_c · H_l, d = scale_d · H_l.
    """
    H = A.shape[2]
    lc, dA, dB = pair_mse(A, B, scale_c * H)
    parts = {"c": lc}
    if end or scale_d == 0:
        return lc, parts, dA, dB
    ua, ya, ra = normalize_maps(A)
    ub, yb, rb = normalize_maps(B)
    ld, gua, gub = pair_mse(ua, ub, scale_d * H)
    parts["d"] = ld
    dA = dA + normalize_maps_backward(gua, ya, ra)
    dB = dB + normalize_maps_backward(gub, yb, rb)
    return lc + ld, parts, dA, dB


# --------------------------------------------------------------------------------------------
# Layers and nets
# --------------------------------------------------------------------------------------------

class ConvUnit:
    """One layer of either net: [nearest ×2 upsample] → 3×3 conv (stride 1 or 2, padding 1) → σ.

    Shapes: x (N, C_in, H, W) -> (N, C_out, H', W') with H' = 2H (upsample), H/2 (stride 2) or
    H. ``activation='identity'`` makes it linear. Forward: a = σ(W ∗ up(x) + b).
    Backward(da, need_dx): dz = da ⊙ σ'(z), conv backward (stores grads), then the upsample's
    backward when dx is wanted.
    """

    def __init__(self, cin: int, cout: int, *, stride: int = 1, upsample: bool = False,
                 activation: str = "elu", bias: bool = True, seed=0, dtype="float32",
                 init_scale: float = 1.0):
        self.up = Upsample2d(2) if upsample else None
        self.conv = Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias, seed=seed,
                           dtype=dtype, init_scale=init_scale)
        if bias:
            self.conv.params["bias"][...] = 0
        self.act = Activation(check_activation(activation))
        self.out = None

    @property
    def params(self):
        return self.conv.params

    @property
    def grads(self):
        return self.conv.grads

    def output_shape(self, in_shape):
        shape = tuple(in_shape)
        if self.up is not None:
            shape = self.up.output_shape(shape)
        return self.conv.output_shape(shape)

    def forward(self, x):
        h = self.up.forward(x) if self.up is not None else x
        self.out = self.act.forward(self.conv.forward(h))
        return self.out

    def backward(self, da, need_dx: bool = True):
        dz = self.act.backward(da)
        dh = self.conv.backward(dz, need_dx=need_dx)
        if dh is None or self.up is None:
            return dh
        return self.up.backward(dh)

    def spec(self):
        return {"kind": "conv2d", "in": self.conv.in_channels, "out": self.conv.out_channels,
                "kernel": 3, "stride": self.conv.stride, "padding": 1,
                "bias": self.conv.has_bias, "upsample": 2 if self.up is not None else 1,
                "activation": self.act.name}


def _check_shape(input_shape, depth: int):
    C, H, W = (int(v) for v in input_shape)
    f = 2 ** depth
    if H % f or W % f:
        raise ValueError(f"an autoencoder with {depth} stride-2 layers needs H and W divisible by "
                         f"{f}; got {H}×{W}. Pad the images (pad_to={math.ceil(max(H, W) / f) * f})"
                         f" or use fewer channels entries")
    return C, H, W


class ConvAutoencoder:
    """The forward net (module docstring): D strided conv layers down, D upsample-conv layers up.

    ``forward(x)`` -> x̂ (N, C, H, W) and sets ``acts`` = [a_0 = x, a_1, ..., a_2D = x̂].
    ``backward(dxhat)``: exact backprop through all layers (BP), grads in ``gradients()``.
    """

    def __init__(self, input_shape=(1, 28, 28), channels=(16, 32), activation: str = "elu",
                 bias: bool = True, seed=0, dtype="float32", small_init: float = SMALL_INIT):
        self.dtype = resolve_dtype(dtype)
        self.channels = tuple(int(c) for c in channels)
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints, got {channels}")
        self.depth = D = len(self.channels)
        self.input_shape = _check_shape(input_shape, D)
        self.activation = check_activation(activation)
        g = make_rng(seed)
        ch = (self.input_shape[0],) + self.channels
        self.layers = []
        for l in range(1, 2 * D + 1):
            if l <= D:
                unit = ConvUnit(ch[l - 1], ch[l], stride=2, activation=activation, bias=bias,
                                seed=g, dtype=self.dtype)
            else:
                k = 2 * D - l          # output level
                unit = ConvUnit(ch[k + 1], ch[k], upsample=True,
                                activation=activation if l < 2 * D else "identity", bias=bias,
                                seed=g, dtype=self.dtype, init_scale=small_init)
            self.layers.append(unit)
        self.acts = None

    def shapes(self):
        """Shape (without N) of a_0 .. a_2D."""
        out = [tuple(self.input_shape)]
        for unit in self.layers:
            out.append(unit.output_shape(out[-1]))
        return out

    def forward(self, x):
        acts = [x]
        for unit in self.layers:
            acts.append(unit.forward(acts[-1]))
        self.acts = acts
        return acts[-1]

    __call__ = forward

    def backward(self, dxhat):
        """Backprop dL/dx̂ through every layer; the first layer skips dx."""
        d = dxhat
        for i in range(len(self.layers) - 1, -1, -1):
            d = self.layers[i].backward(d, need_dx=i > 0)

    def parameters(self) -> dict:
        return {f"forward.{i}.{k}": v for i, u in enumerate(self.layers) for k, v in u.params.items()}

    def gradients(self) -> dict:
        return {f"forward.{i}.{k}": u.grads[k] for i, u in enumerate(self.layers)
                for k in u.params if k in u.grads}

    def spec(self) -> list:
        return [u.spec() for u in self.layers]


@dataclass
class AEStep:
    """What one training step produced: ``loss`` (0-d array, L), ``grads`` {name: array} for
    every trainable parameter, ``terms`` {name: 0-d array}, ``recon`` x̂."""
    loss: object
    grads: dict
    terms: dict
    recon: object


class CCLAutoencoder:
    """A CCL autoencoder: the forward net ``net`` plus its feedback net ``feedback`` (layers
    V_1..V_2D, module docstring).

    ``step(x, target=None, pairs=None)`` computes the loss and every gradient (forward and
    feedback) for a batch; ``target`` defaults to ``x`` (an autoencoder) and ``pairs`` restricts
    the loss to some pair indices (a gradient not reached is returned as zeros).
    """
    rule = "ccl"

    def __init__(self, input_shape=(1, 28, 28), channels=(16, 32), activation: str = "elu",
                 feedback_activation: str | None = None, bias: bool = True, seed=0,
                 dtype="float32", small_init: float = SMALL_INIT, scale_c: float = 1.0,
                 scale_d: float = 1.0):
        self.net = ConvAutoencoder(input_shape, channels, activation, bias, seed, dtype,
                                   small_init)
        self.dtype = self.net.dtype
        self.scale_c, self.scale_d = float(scale_c), float(scale_d)
        self.feedback_activation = check_activation(feedback_activation or activation)
        D = self.net.depth
        ch = (self.net.input_shape[0],) + self.net.channels
        g = make_rng([int(seed), 7])   # the feedback net's own stream
        self.feedback = []
        for l in range(1, 2 * D + 1):
            if l <= D:   # undo encoder layer l: upsample, conv c_l -> c_{l-1}
                unit = ConvUnit(ch[l], ch[l - 1], upsample=True,
                                activation=self.feedback_activation if l > 1 else "identity",
                                bias=bias, seed=g, dtype=self.dtype, init_scale=small_init)
            else:        # undo decoder layer l: strided conv c_k -> c_{k+1}
                k = 2 * D - l
                unit = ConvUnit(ch[k], ch[k + 1], stride=2, activation=self.feedback_activation,
                                bias=bias, seed=g, dtype=self.dtype)
            self.feedback.append(unit)
        self.signals = None

    # -- the two passes -------------------------------------------------------------------
    def forward(self, x):
        return self.net.forward(x)

    def reverse(self, target):
        """s_2D = target, s_{l-1} = V_l-layer(s_l); returns [s_0, ..., s_2D] (also ``signals``)."""
        L = len(self.feedback)
        sig = [None] * (L + 1)
        sig[L] = target
        for l in range(L, 0, -1):
            sig[l - 1] = self.feedback[l - 1].forward(sig[l])
        self.signals = sig
        return sig

    def reconstruct(self, x):
        return self.net.forward(x)

    # -- loss and gradients ---------------------------------------------------------------
    def step(self, x, target=None, pairs=None) -> AEStep:
        xp = get_array_module(x)
        target = x if target is None else target
        self.net.forward(x)
        acts = self.net.acts
        sigs = self.reverse(target)
        L = len(self.net.layers)
        wanted = range(L + 1) if pairs is None else sorted(set(int(p) for p in pairs))
        total = xp.zeros((), dtype=self.dtype)
        terms = {}
        grads = {}
        for l in wanted:
            if not 0 <= l <= L:
                raise ValueError(f"pair index {l} outside 0..{L}")
            end = l in (0, L)
            loss, parts, dA, dB = pair_loss(acts[l], sigs[l], self.scale_c, self.scale_d, end)
            total = total + loss
            terms[f"pair/{l}"] = loss
            if not end:
                for k, v in parts.items():
                    terms[f"pair/{l}/{k}"] = v
            if l >= 1:                       # W_l through a_l (input detached: no dx)
                unit = self.net.layers[l - 1]
                unit.backward(dA, need_dx=False)
                for k in unit.params:
                    grads[f"forward.{l - 1}.{k}"] = unit.grads[k]
            if l <= L - 1:                   # V_{l+1} through s_l
                unit = self.feedback[l]
                unit.backward(dB, need_dx=False)
                for k in unit.params:
                    grads[f"feedback.{l}.{k}"] = unit.grads[k]
        params = self.parameters()
        for name, p in params.items():
            if name not in grads:
                grads[name] = xp.zeros_like(p)
        d = acts[-1] - target
        terms["recon_mse"] = (d * d).mean()
        return AEStep(total, grads, terms, acts[-1])

    def eval_loss(self, x, target=None):
        """(L, terms) without computing gradients."""
        target = x if target is None else target
        self.net.forward(x)
        acts = self.net.acts
        sigs = self.reverse(target)
        L = len(self.net.layers)
        total, terms = 0.0, {}
        for l in range(L + 1):
            loss, _, _, _ = pair_loss(acts[l], sigs[l], self.scale_c, self.scale_d, l in (0, L))
            terms[f"pair/{l}"] = loss
            total = total + loss
        return total, terms

    # -- parameters -----------------------------------------------------------------------
    def parameters(self) -> dict:
        out = self.net.parameters()
        out.update({f"feedback.{i}.{k}": v for i, u in enumerate(self.feedback)
                    for k, v in u.params.items()})
        return out

    def param_groups(self) -> dict:
        fb = {f"feedback.{i}.{k}": v for i, u in enumerate(self.feedback)
              for k, v in u.params.items()}
        return {"forward": self.net.parameters(), "feedback": fb}

    def spec(self) -> dict:
        return {"rule": "ccl", "input_shape": list(self.net.input_shape),
                "channels": list(self.net.channels), "forward": self.net.spec(),
                "feedback": [u.spec() for u in self.feedback],
                "scale_c": self.scale_c, "scale_d": self.scale_d}


class BPAutoencoder:
    """The same forward net trained by backprop on L = mean((x̂ − x)²).

    dL/dx̂ = 2 (x̂ − x)/K (K = N·C·H·W), then ``ConvAutoencoder.backward``.
    """
    rule = "bp"

    def __init__(self, input_shape=(1, 28, 28), channels=(16, 32), activation: str = "elu",
                 bias: bool = True, seed=0, dtype="float32", small_init: float = 1.0, **_ignored):
        self.net = ConvAutoencoder(input_shape, channels, activation, bias, seed, dtype,
                                   small_init)
        self.dtype = self.net.dtype

    def forward(self, x):
        return self.net.forward(x)

    reconstruct = forward

    def step(self, x, target=None) -> AEStep:
        target = x if target is None else target
        xhat = self.net.forward(x)
        d = xhat - target
        loss = (d * d).mean()
        self.net.backward((2.0 / d.size) * d)
        grads = self.net.gradients()
        return AEStep(loss, grads, {"recon_mse": loss}, xhat)

    def eval_loss(self, x, target=None):
        target = x if target is None else target
        d = self.net.forward(x) - target
        loss = (d * d).mean()
        return loss, {"recon_mse": loss}

    def parameters(self) -> dict:
        return self.net.parameters()

    def param_groups(self) -> dict:
        return {"forward": self.net.parameters()}

    def spec(self) -> dict:
        return {"rule": "bp", "input_shape": list(self.net.input_shape),
                "channels": list(self.net.channels), "forward": self.net.spec()}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

#: Named settings; ``rule`` keys hold the per-rule optimiser settings.
#: cpu: a small net for MNIST-sized images on a laptop (tuned here, see docs/autoencoder.md).
#: paper: the public code's channel list and the legacy STL-10 YAML files' optimiser settings
#: (yaml/cnn_ae/stl10_ccl_legacy.yaml, stl10_bp_legacy.yaml); meant for a GPU.
PRESETS = {
    "cpu": {
        "channels": (16, 32), "activation": "elu", "epochs": 5, "batch_size": 64,
        "ccl": dict(lr_forward=0.02, lr_feedback=0.02, momentum=0.9, weight_decay=0.0,
                    clip_forward=1.0, clip_feedback=1.0, centralize=True, warmup=20,
                    cosine_tmax=0, small_init=SMALL_INIT),
        "bp": dict(lr_forward=0.05, momentum=0.9, weight_decay=0.0, clip_forward=1.0,
                   centralize=True, warmup=20, cosine_tmax=0, small_init=1.0),
    },
    "paper": {
        "channels": (128, 256, 1024, 2048), "activation": "relu", "epochs": 50, "batch_size": 32,
        "ccl": dict(lr_forward=0.01, lr_feedback=0.01, momentum=0.9, weight_decay=1e-4,
                    clip_forward=0.2, clip_feedback=0.2, centralize=True, warmup=100,
                    cosine_tmax=50, small_init=SMALL_INIT),
        "bp": dict(lr_forward=0.03, momentum=0.5, weight_decay=1e-5, clip_forward=0.2,
                   centralize=True, warmup=200, cosine_tmax=50, small_init=SMALL_INIT),
    },
}


@dataclass
class AEConfig:
    """Every setting of an autoencoder run (``None`` = take it from the preset)."""
    rule: str = "ccl"
    data: str = "mnist"
    preset: str = "cpu"
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    channels: tuple | None = None
    activation: str | None = None
    lr_forward: float | None = None
    lr_feedback: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    clip_forward: float | None = None
    clip_feedback: float | None = None
    centralize: bool | None = None
    warmup: int | None = None
    cosine_tmax: int | None = None
    eta_min: float = 1e-3
    small_init: float | None = None
    scale_c: float = 1.0
    scale_d: float = 1.0
    normalize: bool = False
    pad_to: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    data_root: str | None = None
    dtype: str = "float32"
    backend: str = "numpy"
    out: str | None = None

    def resolved(self) -> "AEConfig":
        _autoencoder(self.rule)
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        p = PRESETS[self.preset]
        merged = {k: v for k, v in p.items() if k not in AUTOENCODERS}
        merged.update(p[self.rule])
        merged.setdefault("lr_feedback", 0.0)
        merged.setdefault("clip_feedback", 0.0)
        values = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values[f.name] = merged.get(f.name) if v is None else v
        values["channels"] = tuple(int(c) for c in values["channels"])
        for name, rng in _ranges().items():
            if values.get(name) is not None:
                values[name] = rng.check(values[name], f"{name} (--{name.replace('_', '-')})")
        if not values["channels"] or any(c < 1 for c in values["channels"]):
            raise ValueError(f"channels (--channels) must be positive integers, got "
                             f"{values['channels']}")
        return AEConfig(**values)


def _ranges() -> dict:
    """Valid range of every numeric autoencoder setting (checked at parse time and by
    :meth:`AEConfig.resolved`)."""
    from .train import RANGES, Range

    out = {k: RANGES[k] for k in ("seed", "epochs", "batch_size", "lr_forward", "lr_feedback",
                                  "clip_forward", "clip_feedback", "warmup", "cosine_tmax",
                                  "eta_min", "limit_train", "limit_test", "val_fraction")}
    out.update(momentum=Range(float, 0, 1, hi_open=True), weight_decay=Range(float, 0),
               small_init=Range(float, 0, lo_open=True), scale_c=Range(float, 0),
               scale_d=Range(float, 0), pad_to=Range(int, 1))
    return out


#: rule name -> (autoencoder class, default small_init, options only that class takes)
AUTOENCODERS = {"ccl": (CCLAutoencoder, SMALL_INIT, ("scale_c", "scale_d")),
                "bp": (BPAutoencoder, 1.0, ())}


def _autoencoder(rule: str):
    if rule not in AUTOENCODERS:
        raise ValueError(f"rule must be one of {sorted(AUTOENCODERS)}, got {rule!r}")
    return AUTOENCODERS[rule]


def build_autoencoder(rule: str, input_shape, channels=(16, 32), activation="elu", seed=0,
                      dtype="float32", small_init: float | None = None, **kw):
    """A :class:`CCLAutoencoder` (rule 'ccl') or :class:`BPAutoencoder` (rule 'bp')."""
    cls, default_init, _ = _autoencoder(rule)
    return cls(input_shape, channels, activation, seed=seed, dtype=dtype,
               small_init=default_init if small_init is None else small_init, **kw)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

def _load(config: AEConfig, depth: int):
    """Host arrays (train, val, test) of images in model space, and (mean, std) per channel
    mapping model space back to [0, 1] pixels (x01 = x·std + mean)."""
    from . import data as D

    ds = D.load_dataset(config.data, root=config.data_root)
    C, H, W = ds.info.input_shape
    pad_to = config.pad_to
    f = 2 ** depth
    if pad_to is None and (H % f or W % f):
        pad_to = math.ceil(max(H, W) / f) * f
    splits = D.prepare(ds, val_fraction=config.val_fraction, seed=config.seed,
                       dtype=config.dtype, pad_to=pad_to)
    mean = np.asarray(ds.info.mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(ds.info.std, dtype=np.float64).reshape(1, -1, 1, 1)
    train, val, test = splits.train[0], splits.val[0], splits.test[0]
    if config.limit_train:
        n = int(config.limit_train)
        nv = max(1, int(round(n * config.val_fraction / (1 - config.val_fraction))))
        train, val = train[:n], val[:nv]
    if config.limit_test:
        test = test[:int(config.limit_test)]
    if not config.normalize:        # back to [0, 1] pixels, the public STL-10 set-up
        dt = resolve_dtype(config.dtype)
        train, val, test = ((x * std + mean).astype(dt) for x in (train, val, test))
        mean, std = np.zeros_like(mean), np.ones_like(std)
    return (train, val, test), (mean, std), pad_to


def _pixel_mse(model, x, mean, std, batch_size: int = 500) -> tuple[float, float]:
    """(MSE in model space, MSE in [0, 1] pixel space) of the reconstructions of host x."""
    tot_m = tot_p = 0.0
    n = 0
    var = std.reshape(-1) ** 2
    for i in range(0, len(x), batch_size):
        xb = asarray(x[i:i + batch_size], dtype=model.dtype)
        d = model.reconstruct(xb) - xb
        per_c = to_numpy((d * d).sum(axis=(0, 2, 3))).astype(np.float64)
        tot_m += per_c.sum()
        tot_p += (per_c * var).sum()
        n += d.size
    return tot_m / max(n, 1), tot_p / max(n, 1)


def save_reconstructions(model, x, path, mean=0.0, std=1.0, n: int = 8, title: str = ""):
    """Save a figure: the first ``n`` images of host x (top row) over their reconstructions."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x = x[:n]
    rec = to_numpy(model.reconstruct(asarray(x, dtype=model.dtype)))
    orig = np.clip(x * std + mean, 0, 1)
    rec = np.clip(rec * std + mean, 0, 1)
    n = len(x)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), squeeze=False)
    for row, imgs, label in ((0, orig, "original"), (1, rec, "reconstruction")):
        for j in range(n):
            ax = axes[row, j]
            img = imgs[j]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.transpose(img, (1, 2, 0)))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _snapshot(model):
    xp = get_array_module(*model.parameters().values())
    return {k: xp.array(v, copy=True) for k, v in model.parameters().items()}


def _restore(model, snap):
    for k, v in model.parameters().items():
        v[...] = snap[k]


def train_autoencoder(rule: str = "ccl", data: str = "mnist", epochs: int | None = None,
                      batch_size: int | None = None, seed: int = 0, *, out=None,
                      progress: bool = True, **settings) -> dict:
    """Train a CCL or BP convolutional autoencoder and return its metrics (see
    :func:`_train_autoencoder`).

    Output handling as ``ccledu train`` (docs/reliability.md): the settings are range-checked
    and ``out`` is checked and locked before any training; an earlier ``metrics.json`` is moved
    to ``metrics.previous.json``; ``metrics.json`` is written atomically and says ``status``
    "running", "finished", "diverged" or "interrupted".
    """
    from .train import DivergenceError, RunDir

    config = AEConfig(rule=rule, data=data, epochs=epochs, batch_size=batch_size, seed=seed,
                      out=None if out is None else str(out), **settings).resolved()
    rundir = RunDir(config.out) if config.out else None
    if rundir is None:
        return _train_autoencoder(rule, data, epochs, batch_size, seed, out=out,
                                  progress=progress, **settings)
    rundir.acquire()
    try:
        rundir.start(config, resuming=False)
        try:
            return _train_autoencoder(rule, data, epochs, batch_size, seed, out=out,
                                      progress=progress, **settings)
        except BaseException as e:
            status = ("interrupted" if isinstance(e, KeyboardInterrupt) else
                      "diverged" if isinstance(e, DivergenceError) else "failed")
            try:
                rundir.write_metrics({"status": status, "message": f"{type(e).__name__}: {e}",
                                      "config": dataclasses.asdict(config)})
            except OSError:
                pass
            raise
    finally:
        rundir.release()


def _train_autoencoder(rule: str = "ccl", data: str = "mnist", epochs: int | None = None,
                       batch_size: int | None = None, seed: int = 0, *, out=None,
                       progress: bool = True, **settings) -> dict:
    """Train a CCL or BP convolutional autoencoder and return its metrics.

    Any :class:`AEConfig` field may be passed (``preset``, ``channels``, ``lr_forward``,
    ``lr_feedback``, ``momentum``, ``weight_decay``, ``clip_forward``, ``clip_feedback``,
    ``centralize``, ``warmup``, ``cosine_tmax``, ``small_init``, ``scale_c``, ``scale_d``,
    ``normalize``, ``limit_train``, ``limit_test``, ``dtype``, ``backend``, ...).

    Data: images in [0, 1] (``normalize=False``, default) or normalised with the dataset's
    mean/std (``normalize=True``). ``test_mse`` is always mean((x̂ − x)²) in [0, 1] pixel units
    (the paper's metric), measured with the parameters of the epoch with the lowest validation
    MSE; ``test_mse_model_space`` is the same in the space the model was trained in.

    Returns {"test_mse", "test_mse_model_space", "best_epoch", "history": [per epoch:
    "train_loss" (mean L), "train_recon_mse", "val_mse" (pixel units), "train_seconds",
    "terms"], "config", "model", "total_seconds", ...}; with ``out`` also writes
    ``out/metrics.json`` and ``out/reconstructions.png``.
    """
    from . import __version__
    from .data import batches
    from .optim import Optimizer, build_groups
    from .train import DivergenceError, write_json

    config = AEConfig(rule=rule, data=data, epochs=epochs, batch_size=batch_size, seed=seed,
                      out=None if out is None else str(out), **settings).resolved()
    t_start = time.perf_counter()
    with use(config.backend):
        depth = len(config.channels)
        (train, val, test), (mean, std), pad_to = _load(config, depth)
        input_shape = train.shape[1:]
        model = build_autoencoder(config.rule, input_shape, config.channels, config.activation,
                                  seed=config.seed, dtype=config.dtype,
                                  small_init=config.small_init,
                                  **{k: getattr(config, k) for k in _autoencoder(config.rule)[2]})
        groups = build_groups(model.param_groups(), dict(
            lr_forward=config.lr_forward, lr_feedback=config.lr_feedback,
            momentum_forward=config.momentum, momentum_feedback=config.momentum,
            weight_decay_forward=config.weight_decay, weight_decay_feedback=config.weight_decay,
            clip_forward=config.clip_forward, clip_feedback=config.clip_feedback,
            centralize=config.centralize))
        opt = Optimizer(groups, warmup=config.warmup or 0, cosine_tmax=config.cosine_tmax or 0,
                        eta_min=config.eta_min)
        if progress:
            print(f"ccledu autoencoder: rule {config.rule}, {config.data} {tuple(input_shape)} "
                  f"({len(train)} train / {len(val)} val / {len(test)} test), channels "
                  f"{list(config.channels)}, backend {config.backend}, {config.dtype}", flush=True)
        gen = np.random.default_rng([config.seed, 1])
        history, best = [], (None, math.inf, None)
        xp = get_array_module(*model.parameters().values())
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            losses, recon, term_sums, steps = [], [], {}, 0
            dummy = np.zeros(len(train), dtype=np.int64)
            for xb, _ in batches(train, dummy, config.batch_size, shuffle=True, rng=gen):
                xb = asarray(xb, dtype=model.dtype)
                res = model.step(xb)
                opt.step(res.grads)
                losses.append(res.loss)
                recon.append(res.terms["recon_mse"])
                for k, v in res.terms.items():
                    term_sums[k] = term_sums[k] + v if k in term_sums else v
                steps += 1
                if steps % 20 == 0 and not np.isfinite(float(to_numpy(res.loss))):
                    break
            if xp is not np:
                xp.cuda.Stream.null.synchronize()
            train_seconds = time.perf_counter() - t0
            opt.end_epoch()
            train_loss = float(np.mean(to_numpy(xp.stack(losses))))
            if not math.isfinite(train_loss):
                raise DivergenceError(
                    f"autoencoder training diverged at epoch {epoch} (loss {train_loss}); try a "
                    f"smaller learning rate or clipping")
            _, val_mse = _pixel_mse(model, val, mean, std)
            entry = {"epoch": epoch, "train_loss": train_loss,
                     "train_recon_mse": float(np.mean(to_numpy(xp.stack(recon)))),
                     "val_mse": val_mse, "train_seconds": train_seconds,
                     "terms": {k: float(to_numpy(v)) / steps for k, v in term_sums.items()}}
            history.append(entry)
            if val_mse < best[1] or best[0] is None:
                best = (epoch, val_mse, _snapshot(model))
            if progress:
                print(f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f}  "
                      f"val mse {val_mse:.5f}  ({train_seconds:.1f} s)", flush=True)
        _restore(model, best[2])
        test_model, test_pixel = _pixel_mse(model, test, mean, std)
        metrics = {
            "status": "finished",
            "epochs_completed": len(history),
            "test_mse": test_pixel,
            "test_mse_model_space": test_model,
            "mse_space": "normalised" if config.normalize else "pixels [0, 1]",
            "best_epoch": best[0],
            "history": history,
            "config": {**dataclasses.asdict(config), "pad_to": pad_to},
            "model": model.spec(),
            "total_seconds": time.perf_counter() - t_start,
            "ccledu_version": __version__,
        }
        if progress:
            print(f"test mse (pixels in [0, 1], epoch {best[0]}): {test_pixel:.5f}", flush=True)
        if config.out:
            outdir = Path(config.out)
            outdir.mkdir(parents=True, exist_ok=True)
            save_reconstructions(model, test, outdir / "reconstructions.png", mean, std,
                                 title=f"{config.rule.upper()} autoencoder, {config.data}: "
                                       f"test MSE {test_pixel:.4f}")
            write_json(outdir / "metrics.json", metrics)         # atomic, strict JSON
            if progress:
                print(f"wrote {outdir / 'metrics.json'} and {outdir / 'reconstructions.png'}")
    metrics["_model"] = model
    return metrics



# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_FLAGS = [
    # flag, dest, type, help
    ("--epochs", "epochs", int, "number of epochs (cpu preset 5, paper 50)"),
    ("--batch-size", "batch_size", int, "mini-batch size (cpu 64, paper 32)"),
    ("--lr-forward", "lr_forward", float, "learning rate of the forward (encoder/decoder) weights"),
    ("--lr-feedback", "lr_feedback", float, "learning rate of the feedback weights (ccl)"),
    ("--momentum", "momentum", float, "SGD momentum of both groups"),
    ("--weight-decay", "weight_decay", float, "weight decay of both groups"),
    ("--clip-forward", "clip_forward", float, "global-norm clip of the forward gradient (0 = off)"),
    ("--clip-feedback", "clip_feedback", float, "global-norm clip of the feedback gradient"),
    ("--warmup", "warmup", int, "warm-up steps"),
    ("--cosine-tmax", "cosine_tmax", int, "cosine schedule period in epochs (0 = constant lr)"),
    ("--small-init", "small_init", float, "factor on the decoder's forward / encoder's feedback "
                                          "initial weights (ccl 0.001; bp cpu preset 1)"),
    ("--scale-c", "scale_c", float, "weight of the plain MSE part of each pair (default 1)"),
    ("--scale-d", "scale_d", float, "weight of the normalised-map MSE part (default 1; 0 = off)"),
    ("--activation", "activation", str, "activation of both nets (elu, relu, tanh, ...)"),
    ("--limit-train", "limit_train", int, "use only the first N (shuffled) training images"),
    ("--limit-test", "limit_test", int, "use only the first N test images"),
    ("--pad-to", "pad_to", int, "zero-pad images to this size (default: as needed)"),
    ("--data-root", "data_root", str, "directory holding <dataset>/ folders"),
]


def add_parser(sub):
    """Add the ``autoencoder`` sub-command to the ``ccledu`` command line."""
    p = sub.add_parser("autoencoder", help="train a CCL or BP convolutional autoencoder",
                       description="Train a convolutional autoencoder with counter-current "
                                   "learning or backprop; report the test reconstruction MSE "
                                   "(pixels in [0, 1]) and draw reconstructions.")
    p.add_argument("--rule", default="ccl", choices=sorted(AUTOENCODERS))
    p.add_argument("--data", default="mnist", help="any dataset ccledu.data loads (default mnist)")
    from .cliargs import ranged_type as _rt
    p.add_argument("--seed", type=_rt(_ranges()["seed"]), default=0)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: small net (default); paper: the public code's channels and settings")
    p.add_argument("--channels", default=None,
                   help="encoder channels, comma-separated (cpu 16,32; paper 128,256,1024,2048)")
    from .cliargs import ranged_type
    ranges = _ranges()
    for flag, dest, tp, helptext in _FLAGS:
        if dest in ranges:
            tp = ranged_type(ranges[dest])
            helptext = f"{helptext}; {ranges[dest].describe()}"
        p.add_argument(flag, dest=dest, type=tp, default=None, help=helptext)
    p.add_argument("--centralize", action="store_true", default=None,
                   help="gradient centralization (on in both presets)")
    p.add_argument("--no-centralize", dest="centralize", action="store_false")
    p.add_argument("--normalize", action="store_true",
                   help="train on mean/std-normalised images instead of [0, 1] pixels")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--out", default=None, help="directory for metrics.json and reconstructions.png")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_autoencoder)
    return p


def cmd_autoencoder(args) -> int:
    import sys

    from .train import DivergenceError

    settings = {dest: getattr(args, dest) for _, dest, _, _ in _FLAGS
                if getattr(args, dest) is not None}
    if args.channels:
        try:
            settings["channels"] = tuple(int(c) for c in str(args.channels).split(",") if c.strip())
        except ValueError:
            raise ValueError(f"--channels must be comma-separated positive integers, e.g. 16,32; "
                             f"got {args.channels!r}") from None
    if args.centralize is not None:
        settings["centralize"] = args.centralize
    try:
        m = train_autoencoder(rule=args.rule, data=args.data, seed=args.seed, out=args.out,
                              progress=not args.quiet, preset=args.preset,
                              normalize=bool(args.normalize), dtype=args.dtype,
                              backend=args.backend, **settings)
    except DivergenceError as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 3
    if args.quiet:
        print(f"test_mse {m['test_mse']:.6f}")
    return 0
