"""The forward-forward algorithm (Hinton 2022), supervised variant, with explicit gradients.

Every hidden block is trained on its own, with a local objective; no error ever travels from
one block to another.

**Label overlay.** A label (or a distribution over labels) m ∈ R^C is written into the input.
The "on" value v_n is ``label_value`` when it is > 0, else (default) the sample's own largest
input value, max_j x[n, j] before the overlay: inputs are normalised ((x/255 − μ)/σ), so the
largest value is "a white pixel" whatever the dataset (2.82 for MNIST).

    MLP input x (N, D):   x[n, :C] ← v_n · m_n        (replaced; the other entries untouched)
    CNN input x (N, K, H, W), cnn_overlay="grating" (default):
        x[n, k] ← x[n, k] + ½ v_n Σ_c m_nc P_c       for every channel k
        P_c[i, j] = cos(2π (i cos φ_c + j sin φ_c) / λ_c),  φ_c = π c / C,  λ_c = 3 + (c mod 2)
    CNN input, cnn_overlay="row":  x[n, k, 0, :C] ← v_n · m_n   for every channel k

The row overlay copies the MLP one, but a 3×3 conv at row 0 never sees the digit, so no conv
block can relate the label to the image with it (measured: goodness equal for positive and
negative data); the grating reaches every receptive field.
Positive data: m = one-hot of the true label. Negative data: one-hot of a wrong label drawn
uniformly from the other C − 1 classes (host generator seeded in :meth:`FF.setup`, then moved
to the device, so NumPy and CuPy draw the same labels). Neutral data (for the softmax head):
m = (1/C, …, 1/C).

**One block.** Block l (l = 0 … L−2; the last block L−1 is the classifier) sees the previous
output, detached and length-normalised per sample over all its features (C×H×W for a conv
block):

    u_l = sg(a_{l-1}) / (‖sg(a_{l-1})‖ + ε),   a_{-1} = the overlaid input,   ε = 1e-8
    h_l = block_l(u_l)        (= a_l: σ(u W_lᵀ), or maxpool(σ(conv(u, W_l))) for a conv block)
    g_l = Σ_j h_lj²           (goodness="sum", default; for a conv block the sum runs over
                               channels and positions of the *pooled* output a_l)
    g_l = (1/D_l) Σ_j h_lj²   (goodness="mean": the mean of squares, D_l = size of a_l)

**Loss of block l** (θ = ``theta``; softplus(t) = log(1 + eᵗ) = −log σ(−t)):

    L_l = (1/N) Σ_n [ softplus(θ − g_l(x⁺_n)) + softplus(g_l(x⁻_n) − θ) ]

i.e. the logistic loss of p = σ(g − θ) being "positive". Its gradient, written out:

    ∂L_l/∂g⁺_n = −σ(θ − g⁺_n)/N,    ∂L_l/∂g⁻_n = σ(g⁻_n − θ)/N
    ∂L_l/∂h_n  = 2 h_n · ∂L_l/∂g_n          (divided by D_l for goodness="mean")

**Margin loss** (``loss="margin"``, α = ``alpha``; the default of the trainer's MNIST MLP, see
:meth:`FF.defaults`): each positive row n is paired with its own negative row n (same image,
wrong label) and the block is asked for a larger goodness on the positive one,

    L_l = (1/N) Σ_n softplus(−α (g_l(x⁺_n) − g_l(x⁻_n)))

    ∂L_l/∂g⁺_n = −α σ(−α (g⁺_n − g⁻_n))/N = −∂L_l/∂g⁻_n

(no θ: only the difference matters, which is exactly what the goodness prediction compares;
a symmetric, difference-based FF loss of this form was proposed as SymBa by Lee & Song, 2023).

then ``block.backward(dh, need_dx=False)`` through max-pool and σ' into ∇W_l. Positive and
negative samples go through the block as one batch of 2N rows, so ∇W_l is one matrix product.

**Softmax head** (always trained, it is cheap): the classifier block W_{L-1} reads the detached,
length-normalised output of the last hidden block for the *neutral* input and is trained with
the mean cross-entropy; its gradient reaches W_{L-1} only.

**Prediction** (``predict``):

* ``"goodness"`` (default): for every candidate label c, overlay c, run the hidden blocks, and
  score S[n, c] = Σ_{l ∈ counted} g_l. The counted layers (``ff_layers``): ``"all"`` hidden
  blocks (default, sensible for 2 hidden layers), or ``"skip_first"`` (all but block 0, as
  Hinton does for his 4-layer net). C forward passes per batch.
* ``"softmax"``: one pass with the neutral label; the scores are the head's logits.

**Loss reported by** :meth:`FF.evaluate` (the trainer keeps the epoch with the lowest
validation loss): the expected value of the training objective over the draw of the negative
label, computed exactly from the C candidate passes,

    ℓ_n = Σ_l [ softplus(θ − g_l(x_n, y_n)) + (1/(C−1)) Σ_{c≠y_n} softplus(g_l(x_n, c) − θ) ]
          + CE(head logits of the neutral input, y_n),

so it has no sampling noise (with ``loss="margin"`` the FF part is
Σ_l (1/(C−1)) Σ_{c≠y_n} softplus(−α (g_l(x_n, y_n) − g_l(x_n, c)))). The step's loss is the
same sum with the sampled negatives.
The number correct follows ``predict``.
"""
from __future__ import annotations

import numpy as np

from ..backend import asarray_like, get_array_module, rng as make_rng, to_numpy
from ..layers import activate
from ..losses import cross_entropy, log_softmax, one_hot
from ..ranges import Range
from .base import Rule, StepResult
from .ccl import normalize_rows

EPS = 1e-8

def softplus(t):
    """log(1 + eᵗ), evaluated as max(t, 0) + log1p(e^{−|t|}) so it never overflows."""
    xp = get_array_module(t)
    return xp.maximum(t, 0) + xp.log1p(xp.exp(-xp.abs(t)))


def sigmoid(t):
    """1/(1 + e^{−t}) (the layers' sigmoid, split by sign so the exponential never overflows)."""
    return activate("sigmoid", t)


def length_normalise(a, eps: float = EPS):
    """a / (‖a‖ + ε) per sample, the norm taken over all features (any shape (N, ...)): CCL's
    row normalisation (:func:`ccledu.rules.ccl.normalize_rows`) of the flattened samples."""
    return normalize_rows(a.reshape(a.shape[0], -1), eps)[0].reshape(a.shape)


def rms_normalise(a, eps: float = EPS):
    """a / (sqrt(mean_j a_j²) + ε) per sample, the mean taken over all D features (any shape
    (N, ...)): ``length_normalise`` times √D, up to where ε enters (loeweX/Forward-Forward's
    ``_layer_norm``)."""
    xp = get_array_module(a)
    rms = xp.sqrt((a.reshape(a.shape[0], -1) ** 2).mean(axis=1))
    return a / (rms + eps).reshape((-1,) + (1,) * (a.ndim - 1))




class FF(Rule):
    """Forward-forward, supervised, one local logistic goodness loss per hidden block.

    Options: ``loss`` ("threshold" | "margin"), ``theta`` θ (threshold loss), ``alpha`` α (margin
    loss), ``goodness`` ("sum" | "mean"), ``predict`` ("goodness" | "softmax"),
    ``ff_layers`` ("all" | "skip_first": hidden blocks whose goodness counts in the prediction),
    ``label_value`` (overlay "on" value; ≤ 0 → each sample's own maximum).
    """
    name = "ff"
    OPTIONS = {
        "theta": (float, 2.0, "goodness threshold θ in p = σ(g − θ)", Range(float)),
        "goodness": (str, "sum", "g = sum ('sum') or mean ('mean') of the squared activations"),
        "predict": (str, "goodness", "'goodness': argmax over labels of the summed goodness; "
                                     "'softmax': one pass, neutral label, the trained head"),
        "ff_layers": (str, "all", "hidden blocks whose goodness counts in the prediction: "
                                  "'all' or 'skip_first'"),
        "label_value": (float, 0.0, "value written for the label in the overlay; <= 0 means "
                                    "each sample's own maximum input value", Range(float)),
        "negatives": (str, "uniform", "wrong labels drawn 'uniform'ly at every step, 'hard': in "
                                      "proportion to the softmax head's probabilities, or "
                                      "'permuted_once': the training labels permuted once, "
                                      "y[perm], kept for the whole run (about 1/C of them the "
                                      "true label; mpezeshki); needs the whole training set as "
                                      "one batch"),
        "loss": (str, "threshold", "'threshold': softplus(θ − g⁺) + softplus(g⁻ − θ); 'margin': "
                                   "softplus(−α (g⁺ − g⁻)), the pair's goodness difference (the "
                                   "trainer's default for an MLP on MNIST: 'margin', α = 10)"),
        "alpha": (float, 10.0, "scale α of the goodness difference in loss='margin'",
                  Range(float, 0, lo_open=True)),
        "cnn_overlay": (str, "grating", "label on image inputs: 'grating' (a class-specific "
                                        "grating added over the whole image) or 'row' (first C "
                                        "pixels of row 0 of every channel replaced)"),
        # -- variants of the public implementations (docs/ff.md, "Presets of public code")
        "norm": (str, "l2", "layer-input normalisation: 'l2': a/(||a|| + eps); 'rms': "
                            "a/(sqrt(mean a^2) + eps) (loeweX)"),
        "norm_eps": (float, EPS, "eps added to the norm in the layer-input normalisation "
                                 "(mpezeshki: 1e-4)", Range(float, 0, lo_open=True)),
        "theta_mode": (str, "fixed", "'fixed': every block uses theta; 'width': block l uses "
                                     "theta_l = the number of features of a_l (loeweX)"),
        "loss_mean": (str, "pairs", "'pairs': L_l = sum over the 2N rows / N; 'rows': the mean "
                                    "over the 2N rows, sum / (2N) (loeweX's BCE, mpezeshki's mean)"),
        "peer_norm": (float, 0.0, "coefficient of loeweX's peer-normalisation loss (0 = off; "
                                  "loeweX: 0.03)", Range(float, 0)),
        "peer_momentum": (float, 0.9, "momentum of the running mean of each unit's positive-row "
                                      "activity in the peer-normalisation loss", Range(float, 0, 1)),
        "label_max": (str, "sample", "with label_value <= 0, the overlay's 'on' value: each "
                                     "'sample''s own maximum, or the 'batch''s maximum (mpezeshki)"),
        "head_input": (str, "last", "what the softmax head reads: the 'last' hidden block, or "
                                    "'skip_first': the hidden blocks 1.. concatenated (loeweX; the "
                                    "head is then the rule's own head.weight, zero-initialised, "
                                    "trained with the feedback group's lr/momentum/decay)"),
        "relu_grad": (str, "exact", "'exact': dh goes back through sigma'; 'identity': sigma' "
                                    "is replaced by 1 (loeweX's ReLU_full_grad)"),
        "init": (str, "model", "'model': keep the model's weights; 'normal_fan_out': redraw each "
                               "hidden W_l ~ N(0, 1/out_l), biases 0 (loeweX)"),
        "schedule": (str, "together", "'together': every hidden block trains at every step; "
                                      "'layerwise': block l trains alone during the l-th of H "
                                      "equal shares of the epochs, then is frozen (mpezeshki)"),
    }

    def __init__(self, theta: float = 2.0, goodness: str = "sum", predict: str = "goodness",
                 ff_layers: str = "all", label_value: float = 0.0, negatives: str = "uniform",
                 cnn_overlay: str = "grating", loss: str = "threshold", alpha: float = 10.0,
                 norm: str = "l2", norm_eps: float = EPS, theta_mode: str = "fixed",
                 loss_mean: str = "pairs", peer_norm: float = 0.0, peer_momentum: float = 0.9,
                 label_max: str = "sample", head_input: str = "last", relu_grad: str = "exact",
                 init: str = "model", schedule: str = "together"):
        choices = {"norm": (norm, ("l2", "rms")), "theta_mode": (theta_mode, ("fixed", "width")),
                   "loss_mean": (loss_mean, ("pairs", "rows")),
                   "label_max": (label_max, ("sample", "batch")),
                   "head_input": (head_input, ("last", "skip_first")),
                   "relu_grad": (relu_grad, ("exact", "identity")),
                   "init": (init, ("model", "normal_fan_out")),
                   "schedule": (schedule, ("together", "layerwise"))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        if not (float(norm_eps) >= 0 and np.isfinite(norm_eps)):
            raise ValueError(f"norm_eps must be a finite number >= 0, got {norm_eps!r}")
        if not (float(peer_norm) >= 0 and np.isfinite(peer_norm)):
            raise ValueError(f"peer_norm must be a finite number >= 0 (0 = off), got {peer_norm!r}")
        if not 0.0 <= float(peer_momentum) < 1.0:
            raise ValueError(f"peer_momentum must lie in [0, 1), got {peer_momentum!r}")
        self.norm, self.norm_eps, self.theta_mode, self.loss_mean = norm, float(norm_eps), theta_mode, loss_mean
        self.peer_norm, self.peer_momentum = float(peer_norm), float(peer_momentum)
        self.label_max, self.head_input, self.relu_grad, self.init = label_max, head_input, relu_grad, init
        self.schedule = schedule
        self.phase = 0                           # schedule="layerwise": the block now training
        self.head = {}                           # {"head.weight": (C, features)} with head_input="skip_first"
        self.peer_means = {}                     # {"state.<l>.peer_mean": (units,)} with peer_norm > 0
        if loss not in ("threshold", "margin"):
            raise ValueError(f"loss must be 'threshold' or 'margin', got {loss!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.loss = loss
        self.alpha = float(alpha)
        if goodness not in ("sum", "mean"):
            raise ValueError(f"goodness must be 'sum' or 'mean', got {goodness!r}")
        if predict not in ("goodness", "softmax"):
            raise ValueError(f"predict must be 'goodness' or 'softmax', got {predict!r}")
        if ff_layers not in ("all", "skip_first"):
            raise ValueError(f"ff_layers must be 'all' or 'skip_first', got {ff_layers!r}")
        if negatives not in ("uniform", "hard", "permuted_once"):
            raise ValueError(f"negatives must be 'uniform', 'hard' or 'permuted_once', got {negatives!r}")
        self.negatives = negatives
        self._once = None                        # negatives="permuted_once": (labels, their negatives)
        if cnn_overlay not in ("grating", "row"):
            raise ValueError(f"cnn_overlay must be 'grating' or 'row', got {cnn_overlay!r}")
        self.cnn_overlay = cnn_overlay
        self.grating_amplitude = 0.5
        self.theta = float(theta)
        self.goodness = goodness
        self.predict = predict
        self.ff_layers = ff_layers
        self.label_value = float(label_value)
        self._rng = None
        self._C = None
        self.seed = 0

    # -- configuration -----------------------------------------------------------------------
    def config(self) -> dict:
        return {
            "rule": self.name,
            "variant": "supervised, label overlay, one logistic loss per hidden block",
            "loss": ("L_l = mean_n[softplus(theta - g_l(x+)) + softplus(g_l(x-) - theta)]"
                     if self.loss == "threshold" else
                     f"L_l = mean_n softplus(-alpha (g_l(x+) - g_l(x-))), alpha = {self.alpha}"),
            "goodness": self.goodness,
            "theta": self.theta,
            "normalisation": (f"u_l = a_{{l-1}} / (||a_{{l-1}}|| + {self._eps_text()}) per sample, all features"
                              if self.norm == "l2" else
                              f"u_l = a_{{l-1}} / (sqrt(mean(a_{{l-1}}^2)) + {self._eps_text()}) per sample, all features"),
            "norm": self.norm, "norm_eps": self.norm_eps,
            "theta_mode": self.theta_mode, "loss_mean": self.loss_mean,
            "peer_norm": self.peer_norm, "peer_momentum": self.peer_momentum,
            "label_max": self.label_max, "head_input": self.head_input,
            "relu_grad": self.relu_grad, "init": self.init, "schedule": self.schedule,
            "conv_goodness": "over channels and positions of the pooled block output",
            "predict": self.predict,
            "ff_layers": self.ff_layers,
            "overlay": ("MLP: first C features replaced by the one-hot times v; CNN: "
                        + ("v/2 times the label's grating added to every channel"
                           if self.cnn_overlay == "grating" else
                           "first C pixels of row 0 of every channel replaced by the one-hot times v")
                        + "; v = " + (f"{self.label_value}" if self.label_value > 0
                                      else "the sample's max input value")),
            "cnn_overlay": self.cnn_overlay,
            "loss_form": self.loss,
            "alpha": self.alpha,
            "negatives": {"uniform": "uniform over the C-1 wrong labels, redrawn every step",
                          "hard": "hard: drawn in proportion to the head's softmax, true label excluded",
                          "permuted_once": "permuted_once: y[perm], one permutation of the batch's "
                                           "labels drawn at the first step and kept (the batch must "
                                           "be the same at every step)"}[self.negatives],
            "head": "last block: cross-entropy on the normalised last hidden output, neutral label",
            "eval_loss": "expected FF loss over negatives (summed over hidden blocks) + head CE",
        }

    def setup(self, model, seed=0):
        super().setup(model, seed)
        self.seed = seed
        self._rng = make_rng([int(seed), 0xFF]) if not isinstance(seed, np.random.Generator) \
            else seed
        self._C = model.num_classes
        self._once = None
        xp_like = model.blocks[0].main.params["weight"]
        hidden = self.hidden_blocks(model)
        self._hidden, self.phase = len(hidden), 0
        if self.init == "normal_fan_out":
            # loeweX: W_l ~ N(0, 1/out_l) (std 1/sqrt(out)), b_l = 0, for every hidden block
            g = make_rng([int(self.seed) if not isinstance(seed, np.random.Generator) else 0, 0xFF, 1])
            for block in hidden:
                W = block.main.params["weight"]
                W[...] = asarray_like(g.normal(0.0, 1.0 / np.sqrt(W.shape[0]), size=W.shape), W, W.dtype)
                if "bias" in block.main.params:
                    block.main.params["bias"][...] = 0
        self.head = {}
        if self.head_input == "skip_first":
            if len(hidden) < 2:
                raise ValueError("head_input='skip_first' reads the hidden blocks 1.., so the model "
                                 f"needs at least 2 hidden blocks; it has {len(hidden)}")
            width = sum(int(np.prod(s)) for s in model.shapes[1:len(hidden)])
            self.head = {"head.weight": asarray_like(np.zeros((self._C, width)), xp_like, model.dtype)}
        self.peer_means = {}
        if self.peer_norm > 0:
            for l in range(len(hidden)):
                shape = tuple(model.shapes[l])
                self.peer_means[f"state.{l}.peer_mean"] = asarray_like(np.full(shape, 0.5), xp_like,
                                                                     model.dtype)
        return self

    # -- what the rule owns (head_input="skip_first": the head; peer_norm: the running means) --
    def parameters(self) -> dict:
        """``{"head.weight": (C, Σ_{l≥1} |a_l|)}`` with head_input='skip_first', else {}."""
        return dict(self.head)

    def buffers(self) -> dict:
        """``{"state.<l>.peer_mean": μ_l}`` (shape of a_l) with peer_norm > 0, else {}: the running
        mean of each unit's activity on positive rows, updated by every step (not trained)."""
        return dict(self.peer_means)

    def param_groups(self, model) -> dict:
        """'forward': the model's weights; with head_input='skip_first' also 'head' (the rule's
        head.weight, trained with the *feedback* group's settings: lr_feedback, momentum_feedback,
        weight_decay_feedback, clip_feedback; loeweX's "downstream" optimiser group)."""
        groups = {"forward": model.parameters()}
        if self.head:
            groups["head"] = dict(self.head)
        return groups

    def _eps_text(self) -> str:
        return "1e-8" if self.norm_eps == EPS else f"{self.norm_eps:g}"

    def normalise(self, a):
        """The layer-input normalisation chosen by ``norm`` / ``norm_eps``."""
        if self.norm == "rms":
            return rms_normalise(a, self.norm_eps)
        return length_normalise(a, self.norm_eps)

    def theta_of(self, h) -> float:
        """θ_l of a block output h (N, ...): ``theta``, or (theta_mode='width') its feature count."""
        return float(np.prod(h.shape[1:])) if self.theta_mode == "width" else self.theta

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def hidden_blocks(model):
        """The blocks trained by goodness: all but the last (the classifier)."""
        return model.blocks[:-1]

    def counted_layers(self, model) -> list:
        """Indices of the hidden blocks whose goodness enters the prediction."""
        n = len(model.blocks) - 1
        if self.ff_layers == "skip_first" and n > 1:
            return list(range(1, n))
        return list(range(n))

    def shuffle_batches(self, batch_size: int, n_train: int) -> bool:
        """negatives="permuted_once" pairs every training image with one negative label for the
        whole run, so the trainer must hand over the same batch, in the same order, at every
        step: the whole training set, unshuffled."""
        if self.negatives != "permuted_once":
            return True
        if int(batch_size) < int(n_train):
            raise ValueError(
                f"negatives='permuted_once' keeps one negative label per training image for the "
                f"whole run (mpezeshki's y[randperm], drawn once), so the whole training set must "
                f"be one batch: batch_size is {batch_size} but there are {n_train} training "
                f"examples. Set --batch-size {n_train} (or more), or choose negatives='uniform'.")
        return False

    def permuted_once(self, yh):
        """y[perm] for one permutation drawn, at the first call, from a generator of its own
        (seeded by the run's seed: the same after ``--resume``); later calls must pass the same
        labels and get the same negatives."""
        if self._once is None:
            g = make_rng([int(self.seed) if not isinstance(self.seed, np.random.Generator) else 0,
                          0xFF, 2])
            self._once = (yh.copy(), yh[g.permutation(len(yh))])
        elif self._once[0].shape != yh.shape or not np.array_equal(self._once[0], yh):
            raise ValueError(
                "negatives='permuted_once' drew its negatives for another batch: it needs the "
                "same batch (the whole training set, in the same order) at every step; train "
                "with one full batch, or choose negatives='uniform'")
        return self._once[1]

    def draw_negatives(self, y, num_classes=None, probs=None):
        """Wrong labels from the rule's host generator, as an int64 array on y's device.

        Uniform (``probs`` None): y_neg = (y + k) mod C with k ~ U{1, …, C−1}.
        Hard (``probs`` (N, C) given, e.g. the head's softmax): P(y_neg = c) ∝ probs[n, c] for
        c ≠ y_n (uniform over the wrong labels when they all have probability 0).
        Permuted once (``negatives="permuted_once"``): y_neg = y[π], one permutation π for the
        whole run (:meth:`permuted_once`); y_neg = y for about 1/C of the rows."""
        if self._rng is None:
            self._rng = make_rng([0, 0xFF])
        C = int(num_classes or self._C)
        if C < 2:
            raise ValueError("negative labels need at least 2 classes")
        yh = to_numpy(y).astype(np.int64)
        if self.negatives == "permuted_once":
            return asarray_like(self.permuted_once(yh), y, dtype=np.int64)
        if probs is None:
            k = self._rng.integers(1, C, size=yh.shape)
            return asarray_like((yh + k) % C, y, dtype=np.int64)
        p = np.array(to_numpy(probs), dtype=np.float64).reshape(len(yh), C)
        p[np.arange(len(yh)), yh] = 0.0
        s = p.sum(axis=1, keepdims=True)
        flat = (s[:, 0] <= 0) | ~np.isfinite(s[:, 0])
        p[flat] = 1.0
        p[flat, yh[flat]] = 0.0
        cdf = np.cumsum(p, axis=1)
        u = self._rng.random(len(yh)) * cdf[:, -1]
        neg = np.minimum((cdf <= u[:, None]).sum(axis=1), C - 1)
        # u can round up to the total: fall back to the last class with non-zero probability
        bad = (neg == yh) | (p[np.arange(len(yh)), neg] <= 0)
        if np.any(bad):
            neg[bad] = C - 1 - np.argmax(p[bad][:, ::-1] > 0, axis=1)
        return asarray_like(neg, y, dtype=np.int64)

    def overlay(self, x, m):
        """x with the label matrix m (N, C) written in (see the module docstring)."""
        N = x.shape[0]
        C = m.shape[1]
        if self.label_value > 0:
            v = self.label_value
        elif self.label_max == "batch":
            v = x.max()                           # mpezeshki: one value, the batch's largest input
        else:
            v = x.reshape(N, -1).max(axis=1)[:, None]
        lab = (m * v).astype(x.dtype)
        out = x.copy()
        if x.ndim == 2:
            if x.shape[1] < C:
                raise ValueError(f"FF overlay needs at least {C} input features, got {x.shape[1]}")
            out[:, :C] = lab
        elif x.ndim == 4 and self.cnn_overlay == "grating":
            P = self.gratings(C, x.shape[2], x.shape[3], x)           # (C, H, W)
            add = (lab @ P.reshape(C, -1)).reshape(N, 1, x.shape[2], x.shape[3])
            out = out + self.grating_amplitude * add
        elif x.ndim == 4:
            if x.shape[3] < C:
                raise ValueError(f"FF overlay needs images at least {C} pixels wide, got {x.shape}")
            out[:, :, 0, :C] = lab[:, None, :]
        else:
            raise ValueError(f"FF expects inputs (N, D) or (N, C, H, W), got {tuple(x.shape)}")
        return out

    def gratings(self, C, H, W, like):
        """Label patterns for image inputs, (C, H, W): class c is the grating
        cos(2π (i cos φ_c + j sin φ_c) / λ_c), orientation φ_c = π c / C, period λ_c = 3 + (c mod 2)
        pixels, covering the whole image, so every receptive field sees the label."""
        key = (C, H, W, str(like.dtype), type(like).__module__)
        cache = getattr(self, "_grating_cache", None)
        if cache is None or cache[0] != key:
            i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
            P = np.stack([np.cos(2 * np.pi * (i * np.cos(np.pi * c / C) + j * np.sin(np.pi * c / C))
                                 / (3.0 + c % 2)) for c in range(C)])
            self._grating_cache = (key, asarray_like(P, like, dtype=like.dtype))
        return self._grating_cache[1]

    def one_hot(self, labels, C, like):
        """Y (N, C) of ``labels``, in ``like``'s dtype."""
        return one_hot(labels, C, like.dtype)

    def neutral(self, x, C):
        xp = get_array_module(x)
        return self.overlay(x, xp.full((x.shape[0], C), 1.0 / C, dtype=x.dtype))

    def goodness_of(self, h):
        """g (N,) of a block output h (N, ...): sum or mean of squares over all features."""
        g = (h.reshape(h.shape[0], -1) ** 2).sum(axis=1)
        if self.goodness == "mean":
            g = g / int(np.prod(h.shape[1:]))
        return g

    def run_hidden(self, model, x_overlaid):
        """Run the hidden blocks on normalised, detached inputs: returns [h_0, …, h_{L-2}]."""
        out, a = [], x_overlaid
        for block in self.hidden_blocks(model):
            a = block.forward(self.normalise(a))
            out.append(a)
        return out

    def head_features(self, hs):
        """What the head reads: the normalised last hidden output, or (head_input='skip_first')
        the normalised outputs of hidden blocks 1.., flattened and concatenated (N, Σ |a_l|)."""
        if self.head_input == "skip_first":
            xp = get_array_module(hs[0])
            return xp.concatenate([self.normalise(h).reshape(h.shape[0], -1) for h in hs[1:]], axis=1)
        return self.normalise(hs[-1])

    def head_logits(self, model, x):
        """Logits of the softmax head: neutral label, hidden output(s) normalised."""
        hs = self.run_hidden(model, self.neutral(x, model.num_classes))
        if self.head:
            return self.head_features(hs) @ self.head["head.weight"].T
        return model.blocks[-1].forward(self.head_features(hs))

    # -- the learning step -------------------------------------------------------------------
    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """schedule="layerwise": with H hidden blocks and E epochs, block l trains during the
        epochs e with floor((e − 1) H / E) = l (the l-th of H equal shares; 1-based e), i.e.
        for E = 2000, H = 2: block 0 in epochs 1–1000, block 1 in 1001–2000. (Extending a run
        with ``--resume --epochs`` moves the boundaries to the new E.)"""
        if self.schedule == "layerwise" and getattr(self, "_hidden", None):
            self.phase = min((int(epoch) - 1) * self._hidden // max(int(epochs), 1), self._hidden - 1)

    def step(self, model, x, y) -> StepResult:
        """One FF step: head, then negatives (uniform or hard), then every hidden block
        (schedule="layerwise": only block :attr:`phase`, see :meth:`layerwise_step`)."""
        if self.schedule == "layerwise":
            return self.layerwise_step(model, x, y)
        return self.local_step(model, x, y, None)

    def layerwise_step(self, model, x, y, y_neg=None) -> StepResult:
        """Greedy layer-after-layer training (mpezeshki's ``Net.train``): only hidden block
        l = :attr:`phase` and the head learn. The blocks before l only run forward; the blocks
        after l are not run for the FF losses (the head still reads the last hidden block); the
        gradients of every other hidden block are left out of the result, so the optimiser does
        not touch them at all (no momentum drift, and Adam's state of block l starts at its
        first step, as the peer's per-layer Adam does)."""
        L = len(model.blocks)
        res = self.local_step(model, x, y, y_neg, active={self.phase, L - 1}, last=self.phase)
        frozen = tuple(f"forward.{l}." for l in range(L - 1) if l != self.phase)
        res.grads = {k: v for k, v in res.grads.items() if not k.startswith(frozen)}
        return res

    def local_step(self, model, x, y, y_neg=None, active=None, last=None) -> StepResult:
        """Gradients of the local losses.

        ``y_neg``: the negative labels; None draws them (:meth:`draw_negatives`; with
        ``negatives="hard"`` from the head's softmax on this batch, computed first).
        ``active``: the block indices whose loss is switched on (default: all hidden blocks and
        the head, index L−1). A block that is not active still runs forward (its output feeds
        the next block) but receives dh = 0, so its gradient is exactly zero unless something
        leaks across blocks: that is what the tests check. ``last``: the hidden blocks after
        block ``last`` are not run on the [positive; negative] rows (their FF losses are left
        out of the step's loss; their gradients are whatever their previous backward left).
        """
        L = len(model.blocks)
        active = set(range(L)) if active is None else set(active)
        xp = get_array_module(x)
        N, C = x.shape[0], model.num_classes
        self._C = C
        terms = {}
        # 1. softmax head on the neutral input (its gradient reaches the last block only)
        head = model.blocks[-1]
        hs = self.run_hidden(model, self.neutral(x, C))
        feats = self.head_features(hs)
        logits = feats @ self.head["head.weight"].T if self.head else head.forward(feats)
        ce, dlogits = cross_entropy(logits, y)
        if L - 1 not in active:
            dlogits = xp.zeros_like(dlogits)
        if self.head:
            head_grad = dlogits.T @ feats        # ∇W_head = δᵀ features (C, Σ |a_l|)
            head.out = logits                    # the head stands in for the classifier block
        else:
            head.backward(dlogits, need_dx=False)
        # 2. negatives
        if y_neg is None:
            probs = None
            if self.negatives == "hard":
                probs = xp.exp(log_softmax(logits))
            y_neg = self.draw_negatives(y, C, probs)
        self.y_neg = y_neg                         # the step's negative labels (traces record them)
        # 3. every hidden block on [positive; negative] rows, each with its own loss
        xin = xp.concatenate([self.overlay(x, self.one_hot(y, C, x)),
                              self.overlay(x, self.one_hot(y_neg, C, x))], axis=0)
        sign = xp.concatenate([xp.ones(N, dtype=x.dtype), -xp.ones(N, dtype=x.dtype)])
        total = None
        a = xin
        for l, block in enumerate(self.hidden_blocks(model)):
            h = block.forward(self.normalise(a))
            g = self.goodness_of(h)
            loss, dg = self.pair_loss(g, sign, N, self.theta_of(h))
            terms[f"ff/{l}"] = loss
            total = loss if total is None else total + loss
            if l in active:
                scale = 2.0 if self.goodness == "sum" else 2.0 / int(np.prod(h.shape[1:]))
                dh = (scale * dg).reshape((-1,) + (1,) * (h.ndim - 1)) * h
            else:
                dh = xp.zeros_like(h)
            if self.peer_norm > 0:
                peer, dpeer = self.peer_step(l, h[:N])
                terms[f"peer/{l}"] = peer
                total = total + peer
                if l in active:
                    dh[:N] += dpeer
            self.block_backward(block, dh)
            a = h                                  # the next block sees sg(h)
            if last is not None and l >= last:
                break
        terms["head_ce"] = ce
        total = ce if total is None else total + ce
        grads = model.gradients()
        if self.head:                              # the model's own classifier is not used
            grads = {k: v for k, v in grads.items() if not k.startswith(f"forward.{L - 1}.")}
            grads["head.weight"] = head_grad
        return StepResult(loss=total, grads=grads, terms=terms, logits=logits)

    def block_backward(self, block, dh):
        """``block.backward(dh, need_dx=False)``; with relu_grad='identity' the activation's
        derivative is replaced by 1 (dh passes through σ unchanged, loeweX's ReLU_full_grad)."""
        if self.relu_grad == "exact":
            block.backward(dh, need_dx=False)
            return
        act = block.act
        for layer in reversed(block.layers):
            if layer is block.main:
                layer.backward(dh, need_dx=False)
                return
            if layer is not act:
                dh = layer.backward(dh)

    def peer_step(self, l, h_pos):
        """loeweX's peer normalisation of hidden block l, from its positive rows h_pos (N, ...).

            m_j = (1/N) Σ_n h⁺_nj,   μ_l ← β sg(μ_l) + (1 − β) m        (β = peer_momentum)
            P_l = c · mean_j (μ̄_l − μ_lj)²,   μ̄_l = mean_j μ_lj          (c = peer_norm)
            ∂P_l/∂h⁺_nj = c · (2/D)(μ_lj − μ̄_l) · (1 − β)/N          (the μ̄ term sums to 0)

        Updates the running mean in place; returns (P_l, ∂P_l/∂h⁺ of h_pos's shape)."""
        key = f"state.{l}.peer_mean"
        mu = self.peer_means[key]
        N = h_pos.shape[0]
        beta = self.peer_momentum
        mu[...] = beta * mu + (1.0 - beta) * h_pos.mean(axis=0)
        dev = mu - mu.mean()
        D = int(np.prod(mu.shape))
        loss = self.peer_norm * (dev ** 2).mean()
        grad = (self.peer_norm * 2.0 / D * (1.0 - beta) / N) * dev
        xp = get_array_module(h_pos)
        return loss, xp.broadcast_to(grad, h_pos.shape).astype(h_pos.dtype)

    # -- traces: the negative labels are an input; the overlays are checked ------------------
    TRACE_LABELS = ("input/negative_labels",)

    def trace_step(self, model, x, y, inputs=None):
        """Replays ``inputs['negative_labels']`` when given; records the labels drawn."""
        y_neg = None
        if inputs is not None and "negative_labels" in inputs:
            y_neg = asarray_like(inputs["negative_labels"], x, np.int64)
        res = self.local_step(model, x, y, y_neg)
        self._traced = (x, y)
        return res, {"negative_labels": self.y_neg}

    def trace_tensors(self, model) -> dict:
        """``overlay/positive|negative|neutral`` (inputs with the label written in), then
        ``act/<l>`` (hidden blocks: 2N rows, positives then negatives)."""
        (x, y), C = self._traced, model.num_classes
        out = {"overlay/positive": self.overlay(x, self.one_hot(y, C, x)),
               "overlay/negative": self.overlay(x, self.one_hot(self.y_neg, C, x)),
               "overlay/neutral": self.neutral(x, C)}
        out.update(super().trace_tensors(model))
        return out

    def trace_meta(self) -> dict:
        return {"negative_labels": "input/negative_labels"}

    def trace_shapes(self, model, n: int) -> dict:
        out = {"input/negative_labels": (n,)}
        for k in ("positive", "negative", "neutral"):
            out[f"overlay/{k}"] = (n,) + model.input_shape
        L = len(model.blocks)
        for l, s in enumerate(model.shapes):
            out[f"act/{l}"] = (2 * n if l < L - 1 else n,) + tuple(s)
        return out

    def grad_order(self, model, names) -> list:
        """The head first (its loss comes first), then the hidden blocks 0, 1, ..."""
        L = len(model.blocks)
        order = [n for l in [L - 1] + list(range(L - 1))
                 for n in (f"forward.{l}.weight", f"forward.{l}.bias") if n in names]
        return order + [n for n in names if n not in order]

    def pair_loss(self, g, sign, N, theta=None):
        """(L_l, ∂L_l/∂g) for the goodness g (2N,) of [positives; negatives] (sign ±1).

        threshold: t = sign·(θ − g), L = Σ softplus(t)/M, ∂L/∂g = −sign·σ(t)/M.
        margin:    d = g⁺ − g⁻, L = Σ softplus(−α d)/M, ∂L/∂g⁺ = −α σ(−α d)/M = −∂L/∂g⁻.
        M = N (loss_mean='pairs', default) or 2N ('rows': the mean over all 2N rows, as
        BCE-with-logits over [positives; negatives] averages). θ: ``theta`` (default
        ``self.theta``; theta_mode='width' passes the block's width)."""
        xp = get_array_module(g)
        M = N if self.loss_mean == "pairs" else 2 * N
        if self.loss == "margin":
            t = -self.alpha * (g[:N] - g[N:])
            s = self.alpha * sigmoid(t) / M
            return softplus(t).sum() / M, xp.concatenate([-s, s])
        theta = self.theta if theta is None else theta
        t = sign * (theta - g)                    # positive: θ − g⁺, negative: g⁻ − θ
        return softplus(t).sum() / M, -sign * sigmoid(t) / M

    def layer_losses(self, model, x, y, y_neg) -> list:
        """[L_0, …, L_{L-2}, CE_head] as 0-d arrays (forward only; for finite differences)."""
        xp = get_array_module(x)
        N, C = x.shape[0], model.num_classes
        xin = xp.concatenate([self.overlay(x, self.one_hot(y, C, x)),
                              self.overlay(x, self.one_hot(y_neg, C, x))], axis=0)
        sign = xp.concatenate([xp.ones(N, dtype=x.dtype), -xp.ones(N, dtype=x.dtype)])
        out = [self.pair_loss(self.goodness_of(h), sign, N, self.theta_of(h))[0]
               for h in self.run_hidden(model, xin)]
        out.append(cross_entropy(self.head_logits(model, x), y, grad=False))
        return out

    # -- evaluation --------------------------------------------------------------------------
    def candidate_goodness(self, model, x):
        """G (L−1, N, C): goodness of every hidden block for every candidate label."""
        xp = get_array_module(x)
        N, C = x.shape[0], model.num_classes
        G = xp.zeros((len(model.blocks) - 1, N, C), dtype=x.dtype)
        for c in range(C):
            m = xp.zeros((N, C), dtype=x.dtype)
            m[:, c] = 1
            for l, h in enumerate(self.run_hidden(model, self.overlay(x, m))):
                G[l, :, c] = self.goodness_of(h)
        return G

    def class_scores(self, model, x):
        """Scores (N, C): summed goodness over the counted blocks, or the head's logits."""
        if self.predict == "softmax":
            return self.head_logits(model, x)
        G = self.candidate_goodness(model, x)
        return G[self.counted_layers(model)].sum(axis=0)

    def _expected_ff_loss(self, G, y, thetas=None):
        """Per-sample expected FF loss (summed over blocks) from the candidate goodness G;
        ``thetas``: θ_l per block (theta_mode='width'), default ``theta`` for all. Halved with
        loss_mean='rows' (the step's loss is then the mean over 2N rows)."""
        xp = get_array_module(G)
        _, N, C = G.shape
        Y = (y[:, None] == xp.arange(C)[None, :])
        half = 0.5 if self.loss_mean == "rows" else 1.0
        if self.loss == "margin":
            gy = xp.take_along_axis(G, y.reshape(1, -1, 1).astype(xp.int64), axis=2)  # (L-1, N, 1)
            per = xp.where(Y[None], 0, softplus(-self.alpha * (gy - G)) / (C - 1))
            return half * per.sum(axis=(0, 2))
        th = self.theta if thetas is None else xp.asarray(thetas, dtype=G.dtype).reshape(-1, 1, 1)
        pos = softplus(th - G)                   # (L-1, N, C)
        neg = softplus(G - th)
        per = xp.where(Y[None], pos, neg / (C - 1))
        return half * per.sum(axis=(0, 2))

    def evaluate(self, model, x, y):
        """(Σ_n ℓ_n, number correct); ℓ_n is the expected training loss (module docstring)."""
        xp = get_array_module(x)
        G = self.candidate_goodness(model, x)
        logits = self.head_logits(model, x)
        ce = -xp.take_along_axis(log_softmax(logits), y.reshape(-1, 1).astype(xp.int64), axis=1)
        thetas = [float(np.prod(s)) if self.theta_mode == "width" else self.theta
                  for s in model.shapes[:len(model.blocks) - 1]]
        loss = self._expected_ff_loss(G, y, thetas).sum() + ce.sum()
        if self.predict == "softmax":
            scores = logits
        else:
            scores = G[self.counted_layers(model)].sum(axis=0)
        correct = xp.sum(scores.argmax(axis=1) == y)
        return loss, correct

    def diagnostics(self, model, x, y, chunk: int = 1000) -> dict:
        """Per hidden block l: mean goodness with the true label (``goodness_pos/<l>``), mean
        over the wrong labels (``goodness_neg/<l>``), and the accuracy of that block's goodness
        alone (``layer_accuracy/<l>``); plus ``accuracy_goodness`` and ``accuracy_softmax``."""
        xp = get_array_module(x)
        n_hidden = len(model.blocks) - 1
        C = model.num_classes
        pos = np.zeros(n_hidden)
        neg = np.zeros(n_hidden)
        acc = np.zeros(n_hidden)
        acc_g = acc_s = 0.0
        counted = self.counted_layers(model)
        N = x.shape[0]
        for s in range(0, N, chunk):
            xb, yb = x[s:s + chunk], y[s:s + chunk]
            G = self.candidate_goodness(model, xb)
            Y = (yb[:, None] == xp.arange(C)[None, :])
            for l in range(n_hidden):
                pos[l] += float(xp.where(Y, G[l], 0).sum())
                neg[l] += float(xp.where(Y, 0, G[l]).sum()) / (C - 1)
                acc[l] += float((G[l].argmax(axis=1) == yb).sum())
            acc_g += float((G[counted].sum(axis=0).argmax(axis=1) == yb).sum())
            acc_s += float((self.head_logits(model, xb).argmax(axis=1) == yb).sum())
        out = {}
        for l in range(n_hidden):
            out[f"goodness_pos/{l}"] = pos[l] / N
            out[f"goodness_neg/{l}"] = neg[l] / N
            out[f"layer_accuracy/{l}"] = acc[l] / N
        out["accuracy_goodness"] = acc_g / N
        out["accuracy_softmax"] = acc_s / N
        return out
