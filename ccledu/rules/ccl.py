"""Counter-current learning (CCL; Kao & Hariharan, NeurIPS 2024).

Two networks run in opposite directions and meet layer by layer.

Forward net (the model, blocks l = 1..L, every input detached):
    a_0 = x,   a_l = σ(W_l sg(a_{l-1})) (conv block: conv, σ, max-pool),   logits = W_L sg(a_{L-1})

Feedback net (owned by the rule, trainable; it starts from the C class one-hots):
    s_L = I_C                                   (C, C): one row per class, not the batch labels
    s_{l-1} = φ(V_l sg(s_l))   for l ≥ 2         (φ = the model's activation unless told otherwise)
    s_0     = V_1 sg(s_1)                        (the lowest map is linear)

so every s_l is a C×|a_l| matrix of class "prototypes", shaped like a_l. V_l is the map from
block l's output back to its input: for a linear block a Linear(out_l → in_l) with weight
(in_l, out_l) (W_lᵀ's shape); for a conv block a nearest ×p upsample (p = the block's pool)
followed by a k×k conv (stride 1, padding k//2, no bias) from the block's output channels back
to its input channels, weight (in_ch, out_ch, k, k); for a linear block whose input is an image
(the classifier of a CNN) the Linear is followed by a reshape to (channels, H, W).

Loss. With A_l = a_l and S_l = s_l flattened to rows (N×d_l and C×d_l), Y the N×C one-hot
labels, and m the flooding mask (below; m = 1 when flooding is off), A_l ← diag(m) A_l:

    L = CE(logits, y) + Σ_{l=0}^{L-1} pair_l

* form "mlp" (public ``C2Loss_Classification``):
      pair_l = λ · mean((A_l S_lᵀ − Y)²) · 256 / d_l                  λ = ``scale`` (0.5)
* form "cnn" (public ``C2Loss_Classification_CNN_Test``), with row-normalised
  Â = A / (‖A_row‖ + ε), Ŝ = S / (‖S_row‖ + ε), ε = 1e-8:
      pair_l = s_C · mean((Â Ŝᵀ − Y)²)                    "cross"     s_C = ``scale`` (1.0)
             + s_ssl · mean((Â Âᵀ − I_N)²)                 "ssl_a"     s_ssl = ``ssl_scale`` (0.5)
             + s_ssl · mean((Ŝ Ŝᵀ − I_C)²)                 "ssl_s"

Every pair l = 0..L−1 is used, the input pair (x, s_0) and the top pair (a_{L-1}, s_{L-1})
included. Because each layer input is detached, pair_l reaches exactly two weights: W_l through
a_l (none for l = 0: a_0 = x) and V_{l+1} through s_l; W_L is trained by the cross-entropy alone.

Flooding (``flood``, off by default; the public CIFAR-10 CNN configuration turns it on with the
threshold hard-coded to 0.1): m_n = 0 when |softmax(z_n)[y_n] − 1| < flood, computed from the
current batch's logits and treated as a constant. The rows of A are zeroed before the
normalisation (a zero row stays zero), in every pair, x included.

Gradients, written out (see the helper functions below for each one):

    cross / mlp term   G = 2c/(N·C) · (A Sᵀ − Y):      ∂/∂A = G S,   ∂/∂S = Gᵀ A
    self-similarity    M = X Xᵀ − I_n:                 ∂[c·mean(M²)]/∂X = 4c/n² · M X
    row normalisation  u = x/(r + ε), r = ‖x‖:          ∂L/∂x = g/(r + ε) − u (u·g)/r   (g = ∂L/∂u)
    mask               ∂L/∂A = diag(m) ∂L/∂(diag(m) A)

then ∂L/∂a_l goes back through block l's σ' (and max-pool) to ∇W_l (``Block.backward`` with
``need_dx=False``), and ∂L/∂s_l back through feedback block l+1's φ' to ∇V_{l+1}.

Names (trace format, 0-based blocks like ``forward.<l>``): ``feedback.<l>.weight`` is the map
from block l's output back to its input, i.e. V_{l+1} above; its output is s_l. For a CNN with
B conv blocks, ``feedback.B.weight`` (shape (features, C)) maps the classes back to the last
conv block. Loss terms: ``ce``, ``pair/<l>`` and, for the cnn form, ``pair/<l>/cross``,
``pair/<l>/ssl_a``, ``pair/<l>/ssl_s``. Note that ``pair/0/ssl_a`` depends on x alone: it is a
constant of the loss (kept so the loss value equals the public code's).
"""
from __future__ import annotations

import numpy as np

from ..backend import asarray_like, get_array_module, rng as make_rng
from ..layers import Activation, Conv2d, Linear, Reshape, Upsample2d, check_activation
from ..losses import cross_entropy, one_hot, softmax
from ..models import Block
from ..ranges import Range
from .base import Rule, StepResult

#: ε of the row normalisation x / (‖x‖ + ε) (public code: 1e-8)
NORM_EPS = 1e-8
#: the mlp form multiplies pair l by 256 / d_l (public code)
MLP_WIDTH_REF = 256

#: ``scale`` when the caller leaves it at None: the public MLP configs use λ = 0.5, the CIFAR CNN
#: configs s_C = 1
DEFAULT_SCALE = {"mlp": 0.5, "cnn": 1.0}

# --------------------------------------------------------------------------------------------
# The loss terms, each with its gradient
# --------------------------------------------------------------------------------------------

def match_loss(A, S, Y, coef: float):
    """coef · mean((A Sᵀ − Y)²) over the N×C entries, and its gradients.

    Shapes: A (N, d), S (C, d), Y (N, C).
    With G = 2·coef/(N·C) · (A Sᵀ − Y):   ∂L/∂A = G S  (N, d),   ∂L/∂S = Gᵀ A  (C, d).
    Returns (value, dA, dS).
    """
    ### BEGIN SOLUTION  Task 5.2: CCL matching loss coef·mean((A Sᵀ − Y)²) and its gradients (match_loss)
    N, C = Y.shape
    R = A @ S.T - Y                        # residual (N, C)
    value = coef * (R * R).mean()
    G = (2.0 * coef / (N * C)) * R
    return value, G @ S, G.T @ A
    ### END SOLUTION


def gram_loss(X, coef: float):
    """coef · mean((X Xᵀ − I_n)²) over the n×n entries, and its gradient.

    Shapes: X (n, d). With M = X Xᵀ − I_n (symmetric), d[Σ M²] = 4 tr(Xᵀ M dX), so
    ∂L/∂X = 4·coef/n² · M X  (n, d). Returns (value, dX).
    """
    xp = get_array_module(X)
    n = X.shape[0]
    ### BEGIN SOLUTION  Task 6.4: self-similarity loss coef·mean((X Xᵀ − I)²) and its gradient (gram_loss)
    M = X @ X.T - xp.eye(n, dtype=X.dtype)
    value = coef * (M * M).mean()
    return value, (4.0 * coef / (n * n)) * (M @ X)
    ### END SOLUTION


def normalize_rows(X, eps: float = NORM_EPS):
    """U = X / (r + ε) with r_n = ‖X_n‖ (Euclidean norm of each row). Returns (U, r), r (n, 1)."""
    xp = get_array_module(X)
    r = xp.sqrt((X * X).sum(axis=1, keepdims=True))
    return X / (r + eps), r


def normalize_rows_backward(dU, U, r, eps: float = NORM_EPS):
    """∂L/∂X from g = ∂L/∂U for U = X / (r + ε), row by row.

    ∂u_i/∂x_j = δ_ij/(r + ε) − x_i x_j / (r (r + ε)²), hence
        ∂L/∂x = g/(r + ε) − u (u·g)/r.
    A zero row (r = 0, u = 0) has ∂L/∂x = g/ε: the second term vanishes there.
    """
    xp = get_array_module(dU)
    ### BEGIN SOLUTION  Task 6.3: backward of the row normalisation x/(‖x‖ + ε) (normalize_rows_backward)
    r_safe = xp.where(r > 0, r, 1)
    return dU / (r + eps) - U * ((U * dU).sum(axis=1, keepdims=True) / r_safe)
    ### END SOLUTION


def flood_mask(logits, y, flood: float):
    """m (N,): 0 for samples whose true-class probability is within ``flood`` of 1, else 1.

    m_n = 0  ⇔  |softmax(z_n)[y_n] − 1| < flood   (a constant of the loss: no gradient).
    """
    xp = get_array_module(logits)
    p = softmax(logits)
    p_true = xp.take_along_axis(p, y.reshape(-1, 1).astype(xp.int64), axis=1)[:, 0]
    return (xp.abs(p_true - 1) >= flood).astype(logits.dtype)


def _selected(name: str, only) -> bool:
    """True when term ``name`` (e.g. 'pair/2/cross') or one of its parents ('pair/2', 'pair')
    is in ``only`` (None selects every term)."""
    if only is None:
        return True
    parts = name.split("/")
    return any("/".join(parts[:k]) in only for k in range(1, len(parts) + 1))


def _on(selected: bool, grad):
    """``grad`` when its term is selected, else zeros: float(selected)·grad without the pass
    (1·g is g exactly)."""
    return grad if selected else grad * 0


# --------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------

class CCL(Rule):
    """Counter-current learning: the model plus a trainable feedback net, trained on layer-pair
    losses with every input detached (see the module docstring for the equations).

    After :meth:`step`: ``self.signals`` = [s_0, ..., s_L] (s_l shaped like a_l, with C rows),
    ``self.mask`` = the flooding mask (None when off), and ``model.activations`` = [a_1..a_L].
    """
    name = "ccl"
    OPTIONS = {
        "form": (str, "auto", "loss form: 'mlp' (raw products, x256/d), 'cnn' (row-normalised, "
                              "plus self-similarity terms) or 'auto' (from the model's kind)"),
        "scale": (float, None, "weight of the class-matching term (lambda / s_C); None: 0.5 "
                               "for the mlp form, 1.0 for the cnn form", Range(float, 0)),
        "ssl_scale": (float, 0.5, "weight s_ssl of each self-similarity term (cnn form)",
                      Range(float, 0)),
        "flood": (float, None, "zero A's rows for samples whose true-class probability is within "
                               "this of 1; None or 0 = off (public CIFAR-10 CNN: 0.1)", Range(float, 0, 1)),
        "feedback_activation": (str, None, "activation of the feedback net; None = the model's"),
    }

    def __init__(self, form: str = "auto", scale: float | None = None, ssl_scale: float = 0.5,
                 flood: float | None = None, feedback_activation: str | None = None):
        if form not in ("auto", "mlp", "cnn"):
            raise ValueError(f"form must be 'auto', 'mlp' or 'cnn', got {form!r}")
        if scale is not None and not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        if not ssl_scale >= 0:
            raise ValueError(f"ssl_scale must be >= 0, got {ssl_scale}")
        if flood is not None and not 0 <= flood <= 1:
            raise ValueError(f"flood must be in [0, 1] or None, got {flood}")
        if feedback_activation is not None:
            check_activation(feedback_activation)
        self.form = form                # 'auto' until setup resolves it from the model's kind
        self._requested_form = form
        self.scale = None if scale is None else float(scale)
        self.ssl_scale = float(ssl_scale)
        self.flood = float(flood) if flood else None          # 0 means off, as in the public code
        self.feedback_activation = feedback_activation
        self.feedback: list = []           # feedback block l: maps block l's output to its input
        self.signals: list = []
        self.mask = None

    # -- the feedback net ----------------------------------------------------------------------
    def setup(self, model, seed=0):
        """Build the feedback net for ``model``: one block per forward block, weights drawn like
        PyTorch's defaults (U(±1/√fan_in)) from ``default_rng([seed, 0xCC1])``, l = 0 first."""
        super().setup(model, seed)
        self.form = model.kind if self._requested_form == "auto" else self._requested_form
        if self.form not in ("mlp", "cnn"):
            raise ValueError(f"cannot pick a loss form for a model of kind {model.kind!r}; "
                             f"pass form='mlp' or form='cnn'")
        if self.scale is None:
            self.scale = DEFAULT_SCALE[self.form]
        self.feedback_activation = self.feedback_activation or model.activation
        g = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0xCC1])
        in_shapes = [model.input_shape] + list(model.shapes[:-1])
        self.feedback = [self._feedback_block(model, l, in_shapes[l], g)
                         for l in range(len(model.blocks))]
        self.signals, self.mask = [], None
        return self

    def _feedback_block(self, model, l: int, in_shape, g) -> Block:
        """Feedback block l: from block l's output shape back to its input shape ``in_shape``."""
        block = model.blocks[l]
        main, dtype = block.main, model.dtype
        # the lowest map is linear; every other one ends with the feedback activation φ
        tail = [Activation(self.feedback_activation)] if l > 0 else []
        if isinstance(main, Linear):
            width = int(np.prod(in_shape))
            V = Linear(main.out_features, width, bias=False, seed=g, dtype=dtype)
            layers = [V] + tail + ([Reshape(in_shape)] if len(in_shape) > 1 else [])
            fb = Block(layers, "linear", tail[0].name if tail else "identity")
        else:
            if main.stride != 1 or main.padding != main.kernel_size // 2:
                raise ValueError(f"CCL's feedback net needs conv blocks with stride 1 and padding "
                                 f"k//2; block {l} has stride {main.stride}, padding {main.padding}")
            V = Conv2d(main.out_channels, main.in_channels, main.kernel_size, 1,
                       main.kernel_size // 2, bias=False, seed=g, dtype=dtype)
            up = [Upsample2d(block.pool)] if block.pool and block.pool > 1 else []
            fb = Block(up + [V] + tail, "conv", tail[0].name if tail else "identity")
            got = fb.output_shape(model.shapes[l])
            if tuple(got) != tuple(in_shape):
                raise ValueError(
                    f"CCL feedback block {l} would map {model.shapes[l]} to {got}, but block {l}'s "
                    f"input is {tuple(in_shape)}: the upsampling cannot undo a max-pool that "
                    f"dropped a row/column. Use inputs whose size stays divisible by the pool "
                    f"(e.g. 32x32 for 5 blocks, 28x28 for 2)")
        like = main.params["weight"]
        V.params["weight"] = asarray_like(V.params["weight"], like, dtype)
        return fb

    def parameters(self) -> dict:
        """{``feedback.<l>.weight``: V} for l = 0..L−1 (the live arrays, PyTorch layout)."""
        return {f"feedback.{l}.weight": fb.main.params["weight"] for l, fb in enumerate(self.feedback)}

    def gradients(self) -> dict:
        """The feedback gradients the last :meth:`step` stored, named like :meth:`parameters`."""
        return {f"feedback.{l}.weight": fb.main.grads["weight"] for l, fb in enumerate(self.feedback)}

    def feedback_forward(self) -> list:
        """Run the feedback net from the class one-hots: [s_0, ..., s_L], s_L = I_C, each s_l
        (C, *shape of a_l): the class prototypes at every layer. Also kept in ``self.signals``."""
        if not self.feedback:
            raise RuntimeError("CCL.setup(model, seed) must be called before the feedback net runs")
        V_top = self.feedback[-1].main.params["weight"]
        xp = get_array_module(V_top)
        s = xp.eye(self.feedback[-1].main.in_features, dtype=V_top.dtype)     # s_L = I_C
        signals = [s]
        for fb in reversed(self.feedback):                                    # l = L−1 .. 0
            s = fb.forward(s)                                                 # s_l = φ(V s_{l+1})
            signals.append(s)
        self.signals = signals[::-1]
        return self.signals

    # -- the loss of one layer pair ------------------------------------------------------------
    def _pair_mlp(self, l, A, S, Y, only):
        """mlp form: λ·mean((A Sᵀ − Y)²)·256/d. Returns ({name: value}, ∂/∂A, ∂/∂S)."""
        name = f"pair/{l}"
        coef = self.scale * MLP_WIDTH_REF / A.shape[1]
        value, dA, dS = match_loss(A, S, Y, coef)
        if not _selected(name, only):
            dA, dS = dA * 0, dS * 0
        return {name: value}, dA, dS

    def _pair_cnn(self, l, A, S, Y, only):
        """cnn form: cross + ssl_a + ssl_s on row-normalised A, S. Returns (terms, ∂/∂A, ∂/∂S)."""
        Ah, rA = normalize_rows(A)
        Sh, rS = normalize_rows(S)
        cross, dAh_c, dSh_c = match_loss(Ah, Sh, Y, self.scale)
        ssl_a, dAh_a = gram_loss(Ah, self.ssl_scale)
        ssl_s, dSh_s = gram_loss(Sh, self.ssl_scale)
        p = f"pair/{l}"
        use = {k: _selected(f"{p}/{k}", only) for k in ("cross", "ssl_a", "ssl_s")}
        dAh = _on(use["cross"], dAh_c) + _on(use["ssl_a"], dAh_a)
        dSh = _on(use["cross"], dSh_c) + _on(use["ssl_s"], dSh_s)
        terms = {p: cross + ssl_a + ssl_s, f"{p}/cross": cross, f"{p}/ssl_a": ssl_a,
                 f"{p}/ssl_s": ssl_s}
        return terms, normalize_rows_backward(dAh, Ah, rA), normalize_rows_backward(dSh, Sh, rS)

    def term_names(self, num_blocks: int) -> list:
        """Every loss term :meth:`step` reports for a model with ``num_blocks`` blocks."""
        names = ["ce"]
        for l in range(num_blocks):
            names.append(f"pair/{l}")
            if self.form == "cnn":
                names += [f"pair/{l}/cross", f"pair/{l}/ssl_a", f"pair/{l}/ssl_s"]
        return names

    # -- the learning step ---------------------------------------------------------------------
    def step(self, model, x, y, *, only=None) -> StepResult:
        """One CCL step: x (N, *input_shape), y (N,) int -> loss, gradients of every
        ``forward.*`` and ``feedback.*`` parameter, the loss terms and the logits.

        ``only`` (optional): a collection of term names ('ce', 'pair/2', 'pair/2/ssl_a', ...);
        the gradients then come from those terms alone (the loss and terms are still all
        reported). Used to check which weights each term reaches.
        """
        if len(self.feedback) != len(model.blocks):
            raise RuntimeError("CCL.setup(model, seed) must be called for this model before step")
        if only is not None:
            only = {only} if isinstance(only, str) else set(only)
            known = self.term_names(len(model.blocks)) + ["pair"]
            unknown = sorted(t for t in only if not any(k == t or k.startswith(t + "/") for k in known))
            if unknown:
                raise ValueError(f"unknown loss terms {unknown}; this model has {known[:-1]}")
        xp = get_array_module(x)
        N, L = x.shape[0], len(model.blocks)

        # the two passes: a_1..a_L (logits = a_L) and s_0..s_L
        logits = model.forward(x)
        signals = self.feedback_forward()
        acts = [x] + model.activations[:-1]                      # a_0 .. a_{L-1}
        C = logits.shape[1]
        Y = one_hot(y, C, logits.dtype, xp)
        self.mask = flood_mask(logits, y, self.flood) if self.flood else None
        m = None if self.mask is None else self.mask[:, None]

        # cross-entropy: reaches W_L only (its input a_{L-1} is detached)
        ce, dlogits = cross_entropy(logits, y)
        if not _selected("ce", only):
            dlogits = dlogits * 0
        model.blocks[L - 1].backward(dlogits, need_dx=False)

        # layer pairs: pair l reaches W_l (block l−1) through a_l and V_{l+1} (feedback l) through s_l
        terms, total = {"ce": ce}, ce
        pair = self._pair_cnn if self.form == "cnn" else self._pair_mlp
        for l in range(L):
            A = acts[l].reshape(N, -1)
            S = signals[l].reshape(C, -1)
            if m is not None:
                A = A * m                                        # flooding: A ← diag(m) A
            values, dA, dS = pair(l, A, S, Y, only)
            terms.update(values)
            total = total + values[f"pair/{l}"]
            if l > 0:
                if m is not None:
                    dA = dA * m
                model.blocks[l - 1].backward(dA.reshape(acts[l].shape), need_dx=False)
            self.feedback[l].backward(dS.reshape(signals[l].shape), need_dx=False)

        grads = dict(model.gradients())
        grads.update(self.gradients())
        return StepResult(loss=total, grads=grads, terms=terms, logits=logits)

    # -- traces ----------------------------------------------------------------------------------
    TRACE_META = ("feedback_activation",)

    def trace_tensors(self, model) -> dict:
        """``act/<l>``, then the feedback signals ``signal/<L>`` (= I_C) down to ``signal/0``."""
        out = super().trace_tensors(model)
        for l in range(len(self.signals) - 1, -1, -1):
            out[f"signal/{l}"] = self.signals[l]
        return out

    def trace_shapes(self, model, n: int) -> dict:
        """``signal/<l>``: (C, *shape of block l's input); ``signal/<L>``: (C, C)."""
        out = super().trace_shapes(model, n)
        C, L = model.num_classes, len(model.blocks)
        ins = [model.input_shape] + list(model.shapes)
        for l in range(L, -1, -1):
            out[f"signal/{l}"] = (C,) + tuple(ins[l]) if l < L else (C, C)
        return out

    def grad_order(self, model, names) -> list:
        """Cross-entropy's W_L first, then pair l = 0..L−1: W_{l−1} (l > 0), V_l."""
        L = len(model.blocks)

        def fw(l):
            return [n for n in (f"forward.{l}.weight", f"forward.{l}.bias") if n in names]

        order = fw(L - 1)
        for l in range(L):
            order += (fw(l - 1) if l > 0 else []) + [n for n in (f"feedback.{l}.weight",) if n in names]
        return order + [n for n in names if n not in order]

    # -- extras ----------------------------------------------------------------------------------
    def diagnostics(self, model, x, y) -> dict:
        """``align_bp/<l>``: angle (degrees) between CCL's and backprop's ∇W_l on (x, y)."""
        from ..metrics import alignment_with_bp
        return {f"align_bp/{name.split('.')[1]}": v
                for name, v in alignment_with_bp(model, self, x, y).items() if name.endswith("weight")}

    def config(self) -> dict:
        """Every setting of the objective (resolved after :meth:`setup`); keys are constructor
        arguments, so ``CCL(**{k: v for k, v in cfg.items() if k != 'rule'})`` rebuilds the rule."""
        return {"rule": self.name, "form": self.form, "scale": self.scale,
                "ssl_scale": self.ssl_scale, "flood": self.flood,
                "feedback_activation": self.feedback_activation}
