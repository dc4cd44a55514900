"""Two rules for convolutional autoencoders: counter-current learning (``ccl-ae``) and backprop
(``bp-ae``).

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
(H must be divisible by 2^D; the model spec `autoencoder:...` pads the images when it is not).

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
  ccledu.data loads, pixels in [0, 1] (an autoencoder model asks the trainer for pixels), no
  augmentation. The public loop also stops each epoch after 101 batches; here an epoch is a full
  pass (use ``limit_train``).
* The public validation/test metric is mean((x̂ − x)²): the runs' ``val_loss`` / ``test_loss``.
* The default net (model ``autoencoder`` = ``autoencoder:16-32``) and settings are scaled down
  for a CPU (``ccledu/presets.py``, tuned here); the named preset ``paper`` has the paper's
  channels 128-256-1024-2048 and the legacy YAML's optimiser settings (meant for a GPU).

The model is :func:`ccledu.models.autoencoder` (blocks of ``models.ae_block``); both rules are
trained by ``ccledu.train`` like every other rule: ``ccledu train --rule ccl-ae --data mnist``.
"""
from __future__ import annotations

import numpy as np

from ..backend import asarray, get_array_module, rng as make_rng, to_numpy
from ..models import SMALL_INIT, ae_block
from ..ranges import Range
from .base import Rule, StepResult

__all__ = ["CCLAutoencoder", "BPAutoencoder", "pair_mse", "pair_loss", "normalize_maps",
           "normalize_maps_backward", "save_reconstructions"]

#: ε of the per-map normalisation (public code: 1e-8)
NORM_EPS = 1e-8


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
# The two rules
# --------------------------------------------------------------------------------------------

_SMALL_INIT_HELP = ("factor on the initial weights of the decoder's forward layers (and, for "
                    "ccl-ae, of the encoder's feedback layers); public code 0.001")


class _Reconstruction(Rule):
    """What both autoencoder rules share: the model kind, the metric (mean((x̂ − x)²) over a set,
    the public code's validation/test number) and the reconstructions figure."""
    MODEL_KINDS = ("autoencoder",)

    def __init__(self, small_init: float = SMALL_INIT):
        self.small_init = float(small_init)

    def model_options(self) -> dict:
        return {"small_init": self.small_init}

    def evaluate_set(self, model, x, y=None, batch_size: int = 500) -> dict:
        """{"loss": mean((x̂ − x)²)} over host images x (N, C, H, W); per-channel sums in float64."""
        total, n = 0.0, 0
        for i in range(0, len(x), batch_size):
            xb = asarray(x[i:i + batch_size], dtype=model.dtype)
            d = model.forward(xb) - xb
            total += to_numpy((d * d).sum(axis=(0, 2, 3))).astype(np.float64).sum()
            n += d.size
        return {"loss": float(total / max(n, 1))}

    def figures(self, model, x, outdir, scores) -> list:
        path = save_reconstructions(model, x, f"{outdir}/reconstructions.png",
                                    title=f"{self.name}: test MSE {scores['loss']:.4f}")
        return [path]

    def config(self) -> dict:
        return {"rule": self.name, **{k: getattr(self, k) for k in self.OPTIONS}}


class CCLAutoencoder(_Reconstruction):
    """CCL for an autoencoder (module docstring): the rule owns the feedback net V_1..V_2D
    (``feedback``, one ``models.ae_block`` per forward block) and pairs a_l with s_l.

    ``step(model, x, y, pairs=None)``: the target is ``x`` (``y`` is ignored); ``pairs``
    restricts the loss to some pair indices (a gradient not reached is returned as zeros).
    ``logits`` of the result is the reconstruction x̂.
    """
    name = "ccl-ae"
    OPTIONS = {
        "small_init": (float, SMALL_INIT, _SMALL_INIT_HELP, Range(float, 0, lo_open=True)),
        "scale_c": (float, 1.0, "weight s_C of the plain MSE part of every pair", Range(float, 0)),
        "scale_d": (float, 1.0, "weight s_D of the normalised-map MSE part (0 = off)",
                    Range(float, 0)),
        "feedback_activation": (str, None, "activation of the feedback net; None = the model's"),
    }

    def __init__(self, small_init: float = SMALL_INIT, scale_c: float = 1.0, scale_d: float = 1.0,
                 feedback_activation: str | None = None):
        super().__init__(small_init)
        self.scale_c, self.scale_d = float(scale_c), float(scale_d)
        self.feedback_activation = feedback_activation
        self.feedback, self.signals = [], None

    def setup(self, model, seed=0):
        """Draw V_1..V_2D from ``default_rng([seed, 7])``, l = 1 first; V_l of an encoder layer
        (l ≤ D) upsamples and is scaled by ``small_init``, V_l of a decoder layer is strided."""
        self.check_kind(model.kind)
        phi = self.feedback_activation or model.activation
        D = len(model.blocks) // 2
        ch = [model.input_shape[0]] + [s[0] for s in model.shapes]
        g = make_rng([int(seed), 7])
        bias = model.blocks[0].main.has_bias
        self.feedback = []
        for l in range(1, 2 * D + 1):        # V_l maps block l's output (ch[l]) to its input
            if l <= D:
                self.feedback.append(ae_block(ch[l], ch[l - 1], upsample=True,
                                              activation=phi if l > 1 else "identity", bias=bias,
                                              seed=g, dtype=model.dtype,
                                              init_scale=self.small_init))
            else:
                self.feedback.append(ae_block(ch[l], ch[l - 1], stride=2, activation=phi,
                                              bias=bias, seed=g, dtype=model.dtype))
        return self

    def parameters(self) -> dict:
        return {f"feedback.{i}.{k}": v for i, b in enumerate(self.feedback)
                for k, v in b.main.params.items()}

    def reverse(self, target):
        """s_2D = target, s_{l-1} = V_l-block(s_l); returns [s_0, ..., s_2D] (also ``signals``)."""
        L = len(self.feedback)
        sig = [None] * (L + 1)
        sig[L] = target
        for l in range(L, 0, -1):
            sig[l - 1] = self.feedback[l - 1].forward(sig[l])
        self.signals = sig
        return sig

    def step(self, model, x, y=None, pairs=None) -> StepResult:
        xp = get_array_module(x)
        model.forward(x)
        acts = [x] + model.activations
        sigs = self.reverse(x)
        L = len(model.blocks)
        wanted = range(L + 1) if pairs is None else sorted(set(int(p) for p in pairs))
        total, terms, grads = xp.zeros((), dtype=model.dtype), {}, {}
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
                block = model.blocks[l - 1]
                block.backward(dA, need_dx=False)
                grads.update({f"forward.{l - 1}.{k}": g for k, g in block.main.grads.items()})
            if l <= L - 1:                   # V_{l+1} through s_l
                block = self.feedback[l]
                block.backward(dB, need_dx=False)
                grads.update({f"feedback.{l}.{k}": g for k, g in block.main.grads.items()})
        for name, p in {**model.parameters(), **self.parameters()}.items():
            grads.setdefault(name, xp.zeros_like(p))
        d = acts[-1] - x
        terms["recon_mse"] = (d * d).mean()
        return StepResult(total, grads, terms, logits=acts[-1])


class BPAutoencoder(_Reconstruction):
    """Backprop on L = mean((x̂ − x)²): dL/dx̂ = 2 (x̂ − x)/K (K = N·C·H·W), then
    ``model.backward``. ``logits`` of the result is x̂."""
    name = "bp-ae"
    OPTIONS = {"small_init": (float, 1.0, _SMALL_INIT_HELP, Range(float, 0, lo_open=True))}

    def __init__(self, small_init: float = 1.0):
        super().__init__(small_init)

    def step(self, model, x, y=None) -> StepResult:
        xhat = model.forward(x)
        d = xhat - x
        loss = (d * d).mean()
        model.backward((2.0 / d.size) * d)
        return StepResult(loss, model.gradients(), {"recon_mse": loss}, logits=xhat)


def save_reconstructions(model, x, path, n: int = 8, title: str = ""):
    """Save a figure: the first ``n`` host images x in [0, 1] (top row) over their
    reconstructions."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from pathlib import Path

    x = x[:n]
    rec = to_numpy(model.forward(asarray(x, dtype=model.dtype)))
    fig, axes = plt.subplots(2, len(x), figsize=(1.2 * len(x), 2.8), squeeze=False)
    for row, imgs, label in ((0, x, "original"), (1, rec, "reconstruction")):
        for j, img in enumerate(np.clip(imgs, 0, 1)):
            ax = axes[row, j]
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
