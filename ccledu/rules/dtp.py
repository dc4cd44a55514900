"""Difference target propagation (DTP, Lee et al. 2015) and the shared target-propagation core.

Target propagation hands every layer a *target* for its output instead of a gradient, and each
layer moves its output toward its target with a purely local loss. Notation (MLP, blocks
l = 0..L−1 from the input, a_{−1} = x, no bias by default):

    forward      a_l = f_l(a_{l−1}) = σ(a_{l−1} W_lᵀ)          (N, d_l), σ = tanh
                 z = a_{L−1} = a_{L−2} W_{L−1}ᵀ                 (logits, linear)
    feedback     g_l(s) = σ_b(s Q_lᵀ)                           Q_l (d_{l−1}, d_l), σ_b = tanh
                 g_l maps layer l's output space back to layer l's input space (an
                 approximate inverse of f_l), for l = 1..L−1 (block 0 has nothing below it).

**Output target** (a gradient step on the output, "stepsize" β):

    t_{L−1} = z − β ∂ℓ/∂z = z − β (softmax(z) − Y),     ℓ = Σ_n CE(z_n, y_n)  (summed over the batch)

**Difference correction** (Lee et al. 2015, eq. 15), for l = L−1 down to 1:

    t_{l−1} = g_l(t_l) + a_{l−1} − g_l(a_l)

The correction term a_{l−1} − g_l(a_l) makes the propagation exact at β = 0 for *any* g_l:
t_l = a_l ⇒ t_{l−1} = a_{l−1}. For small β, t_{l−1} − a_{l−1} ≈ J_{g_l}(t_l − a_l): the target
displacement travels down through the feedback Jacobians. With exact inverses g_l = f_l⁻¹ the
displacement at layer l is −β (J_{F_l})⁻¹ (softmax − Y) + O(β²), F_l the map from a_l to the
logits: the Gauss–Newton target (Meulemans et al. 2020, Theorem 2; tested in tests/test_tp.py).

**Forward update** (local, every layer, including the first and the classifier):

    L_l = (1/N) Σ_n ‖f_l(sg(a_{l−1}))_n − sg(t_l)_n‖²,     ∇W_l = (2/N) ((a_l − t_l) ⊙ σ'(z_l))ᵀ a_{l−1}

For the classifier this is exactly 2β times backprop's last-layer gradient of the mean
cross-entropy. The authors' code updates W ← W − (η/N) ∇ Σ_n ‖t − a‖², which is SGD at rate η on
L_l: ``lr_forward`` here is their ``--learning_rate``.

**Feedback training** (DTP, Lee et al. 2015 eq. 13; the subclasses replace it): for l = 1..L−1,
with fresh noise ε ~ N(0, σ²) (σ = ``noise_std``) each time,

    q = a_{l−1} + ε,    L^fb_l = (1/N) Σ_n ‖g_l(f_l(q))_n − q_n‖²,    only Q_l moves.

The authors' code (TatsukichiShibuya/Fixed-Weight-Difference-Target-Propagation, models/tp_net.py)
runs ``feedback_iters`` (their ``--epochs_backward``, default 5) plain-SGD updates of every Q_l
on each mini-batch, top layer first, at rate ``lr_backward`` (their ``--learning_rate_backward``;
their sum loss with rate lr/N equals rate lr on the mean loss above), *before* it computes the
targets of that batch; ccledu does the same inside :meth:`TargetPropagation.step`. So the
feedback weights are trained by the rule itself, not by the optimiser: they are
``parameters()`` (saved with the checkpoints) but not in an optimiser group.

Where ccledu differs from that code (documented in docs/tp.md):

* the code also *pre-trains* the feedback weights for ``epochs_backward`` full epochs before
  the first forward update; ccledu does not (its :class:`ccledu.rules.base.Rule` never sees the
  whole data set). Option ``pretrain_iters`` spends that many extra feedback updates on the
  first mini-batch instead.
* With ``batchnorm`` (their "-BN" algorithms) every f_l, g_l and difference output is
  standardised over the batch: BN(v) = (v − mean_n v)/(std_n v + 1e-12) with the unbiased std
  (``torch.std``), no affine parameters, batch statistics also at test time (as the code does;
  so a prediction depends on the evaluation batch: ccledu evaluates in batches of 1024, the code
  in batches of 256). The logits are standardised too (their ``--forward_last_activation
  linear-BN``).

Initialisation (the code's defaults): forward weights orthogonal (``orthogonal_init``: the rule
overwrites the model's weights in :meth:`setup`, rows or columns orthonormal as
``torch.nn.init.orthogonal_``), learned feedback weights Q_l ~ U(−0.01, 0.01)
(``feedback_init`` 0.01), fixed ones (FW-DTP) U(−0.001, 0.001).
"""
from __future__ import annotations


import numpy as np

from ..backend import asarray, asarray_like, get_array_module, is_cupy_array, rng as make_rng
from ..layers import activate, activation_grad, check_activation
from ..losses import cross_entropy, one_hot, softmax
from ..ranges import Range
from .base import Rule, StepResult

BN_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Small explicit building blocks (functions, so tests and the chapter can use them alone)
# --------------------------------------------------------------------------------------------

def batchnorm(v):
    """BN(v) = (v − μ)/(s + ε) per column; μ the batch mean, s the unbiased batch std (N−1),
    ε = 1e-12, no affine parameters. v (N, d) -> (y, cache)."""
    xp = get_array_module(v)
    N = v.shape[0]
    c = v - v.mean(axis=0, keepdims=True)
    s = xp.sqrt((c * c).sum(axis=0, keepdims=True) / max(N - 1, 1))
    y = c / (s + BN_EPS)
    return y, (c, s)


def batchnorm_backward(dy, cache):
    """VJP of :func:`batchnorm`: with c = v − μ, s = √(Σ c²/(N−1)), y = c/(s+ε):

        ∂L/∂c_n = dy_n/(s+ε) − c_n (Σ_m dy_m c_m) / ((s+ε)² s (N−1)),   dv = ∂L/∂c − mean_n ∂L/∂c
    """
    c, s = cache
    N = dy.shape[0]
    xp = get_array_module(dy)
    se = s + BN_EPS
    proj = (dy * c).sum(axis=0, keepdims=True)
    safe = xp.where(s > 0, s, xp.ones_like(s))
    gc = dy / se - c * proj / (se * se * safe * max(N - 1, 1))
    return gc - gc.mean(axis=0, keepdims=True)


class Map:
    """One explicit map v -> [BN](σ(v Mᵀ)) with its cache, so that it can be differentiated.

    ``M`` (out, in), σ an activation name, ``bn`` standardise over the batch after σ.
    ``__call__(v)`` returns the output and keeps what ``backward`` needs; ``backward(dy)``
    returns (dv, dM) with dM = (dy through BN and σ')ᵀ v.
    """

    def __init__(self, M, activation: str, bn: bool = False, bias=None):
        self.M, self.activation, self.bn, self.bias = M, activation, bn, bias

    def __call__(self, v):
        z = v @ self.M.T
        if self.bias is not None:
            z = z + self.bias
        h = activate(self.activation, z)
        self._c = (v, z, h, None)
        if self.bn:
            y, cache = batchnorm(h)
            self._c = (v, z, h, cache)
            return y
        return h

    def backward(self, dy, need_dv: bool = True):
        v, z, h, cache = self._c
        if self.bn:
            dy = batchnorm_backward(dy, cache)
        dz = dy * activation_grad(self.activation, z, h)
        dM = dz.T @ v
        db = dz.sum(axis=0) if self.bias is not None else None
        dv = dz @ self.M if need_dv else None
        return dv, dM, db


def difference_target(g, t_upper, a_lower, g_a_upper, bn: bool = False):
    """t_{l−1} = g(t_l) + a_{l−1} − g(a_l) (DTP's difference correction), optionally
    standardised over the batch (the code's "linear-BN" difference function). ``g`` a callable,
    ``g_a_upper`` = g(a_l) (precomputed). Shapes (N, d_{l−1})."""
    t = g(t_upper) + a_lower - g_a_upper
    return batchnorm(t)[0] if bn else t


def difference_targets(acts, t_top, inverses, bn: bool = False):
    """Propagate a top target down: ``acts`` = [a_0, ..., a_{L−1}], ``t_top`` = t_{L−1},
    ``inverses[l]`` a callable g_l for l = 1..L−1 (index 0 unused). Returns [t_0, ..., t_{L−1}]
    with t_{l−1} = g_l(t_l) + a_{l−1} − g_l(a_l)."""
    L = len(acts)
    targets = [None] * L
    targets[L - 1] = t_top
    for l in range(L - 1, 0, -1):
        g = inverses[l]
        targets[l - 1] = difference_target(g, targets[l], acts[l - 1], g(acts[l]), bn=bn)
    return targets


def output_target(logits, y, stepsize: float):
    """t_{L−1} = z − β (softmax(z) − Y): one gradient step of size β on the summed cross-entropy."""
    Y = one_hot(y, logits.shape[1], logits.dtype)
    return logits - stepsize * (softmax(logits) - Y)


def orthogonal_(shape, g: np.random.Generator):
    """A host matrix of ``shape`` with orthonormal rows (out ≤ in) or columns (out > in), from
    the QR decomposition of a Gaussian matrix with the signs of R's diagonal fixed (the
    construction of ``torch.nn.init.orthogonal_``; not its random stream)."""
    rows, cols = shape
    A = g.standard_normal((max(rows, cols), min(rows, cols)))
    Qm, R = np.linalg.qr(A)
    Qm = Qm * np.sign(np.diag(R))
    return Qm if rows >= cols else Qm.T


# --------------------------------------------------------------------------------------------
# The rule family
# --------------------------------------------------------------------------------------------

class TargetPropagation(Rule):
    """Shared core of DTP, DRL, L-DRL and FW-DTP. Subclasses set ``feedback_loss``
    ('dtp' | 'drl' | 'ldrl' | None for fixed feedback) and ``fixed_feedback``.

    After a step, ``rule.acts`` = [a_0..a_{L−1}] and ``rule.targets`` = [t_0..t_{L−1}] hold the
    forward activations and the targets of that batch (NumPy/CuPy arrays, (N, d_l)).
    """
    name = "dtp"
    MODEL_KINDS = ("mlp",)
    feedback_loss = "dtp"
    fixed_feedback = False
    OPTIONS = {
        "stepsize": (float, 0.01, "beta: output target t = z - beta*(softmax(z) - Y) (TP rules)", Range(float, 0)),
        "lr_backward": (float, 1e-3, "SGD rate of the rule's own feedback training (TP rules with learned feedback)", Range(float, 0)),
        "noise_std": (float, 0.01, "std of the noise in the feedback-training losses (TP rules)", Range(float, 0)),
        "feedback_iters": (int, 5, "feedback updates per mini-batch before the targets (the code's epochs_backward)", Range(int, 0)),
        "pretrain_iters": (int, 0, "extra feedback updates on the first mini-batch (TP rules)", Range(int, 0)),
        "batchnorm": (bool, False, "standardise every f, g and difference output over the batch (the code's -BN)"),
        "orthogonal_init": (bool, True, "re-initialise the forward weights orthogonally in setup (TP rules)"),
        "feedback_init": (float, 0.01, "Q_l ~ U(-s, s) (TP rules; FW-DTP's fixed Q default 0.001)", Range(float, 0, lo_open=True)),
        "feedback_activation": (str, "tanh", "activation of the feedback maps g_l (TP rules)"),
    }

    def __init__(self, stepsize: float = 0.01, lr_backward: float = 1e-3, noise_std: float = 0.01,
                 feedback_iters: int = 5, pretrain_iters: int = 0, batchnorm: bool = False,
                 orthogonal_init: bool = True, feedback_init: float | None = None,
                 feedback_activation: str = "tanh", **extra):
        if extra:
            raise ValueError(f"unknown option(s) {sorted(extra)} for rule {self.name!r}; "
                             f"valid: {sorted(self.OPTIONS)}")
        if not stepsize > 0:
            raise ValueError(f"stepsize must be > 0, got {stepsize}")
        if lr_backward < 0 or noise_std < 0:
            raise ValueError("lr_backward and noise_std must be >= 0")
        if int(feedback_iters) < 0 or int(pretrain_iters) < 0:
            raise ValueError("feedback_iters and pretrain_iters must be >= 0")
        self.stepsize = float(stepsize)
        self.lr_backward = float(lr_backward)
        self.noise_std = float(noise_std)
        self.feedback_iters = int(feedback_iters)
        self.pretrain_iters = int(pretrain_iters)
        self.batchnorm = bool(batchnorm)
        self.orthogonal_init = bool(orthogonal_init)
        default_init = 1e-3 if self.fixed_feedback else 1e-2
        self.feedback_init = float(default_init if feedback_init is None else feedback_init)
        if not self.feedback_init > 0:
            raise ValueError(f"feedback_init must be > 0, got {feedback_init}")
        self.feedback_activation = check_activation(feedback_activation)
        self.Q: dict = {}
        self.acts = self.targets = None
        self._steps = 0

    # -- setup -------------------------------------------------------------------------------
    def setup(self, model, seed=0):
        super().setup(model, seed)
        if model.kind != "mlp" or any(b.kind != "linear" for b in model.blocks):
            raise ValueError(f"rule {self.name!r} is implemented for MLPs only (got a {model.kind}); "
                             f"use --model mlp or an 'mlp:...' spec")
        g = make_rng([int(seed), 0x7D7]) if not isinstance(seed, np.random.Generator) else seed
        W0 = model.blocks[0].main.params["weight"]
        backend = "cupy" if is_cupy_array(W0) else "numpy"
        if self.orthogonal_init:
            for b in model.blocks:
                W = b.main.params["weight"]
                W[...] = asarray(orthogonal_(tuple(W.shape), g), dtype=W.dtype, backend=backend)
        self.Q = {}
        s = self.feedback_init
        for l in range(1, len(model.blocks)):
            W = model.blocks[l].main.params["weight"]
            self.Q[f"feedback.{l}.weight"] = asarray(g.uniform(-s, s, size=tuple(W.T.shape)),
                                                     dtype=model.dtype, backend=backend)
        self._noise_rng = make_rng([int(seed) if not isinstance(seed, np.random.Generator) else 0, 0x7D8])
        self._steps = 0
        return self

    def parameters(self) -> dict:
        """Learned feedback weights Q_l, ``feedback.<l>.weight`` (d_{l−1}, d_l); trained inside
        ``step`` by the rule (none for FW-DTP, whose Q_l are ``buffers``)."""
        return {} if self.fixed_feedback else dict(self.Q)

    def buffers(self) -> dict:
        return dict(self.Q) if self.fixed_feedback else {}

    def param_groups(self, model) -> dict:
        """Only the forward weights go to the optimiser (the rule trains its Q_l itself)."""
        return {"forward": model.parameters()}

    # -- maps --------------------------------------------------------------------------------
    def _check(self, model):
        if len(self.Q) != len(model.blocks) - 1:
            raise RuntimeError(f"{self.name}: call setup(model, seed) for this model before step")

    def f(self, model, l: int) -> Map:
        """f_l as an explicit :class:`Map` (W_l, σ or identity for the classifier, BN)."""
        b = model.blocks[l]
        return Map(b.main.params["weight"], b.activation, self.batchnorm, b.main.params.get("bias"))

    def g(self, l: int) -> Map:
        """g_l(s) = [BN](σ_b(s Q_lᵀ)) as an explicit :class:`Map`."""
        return Map(self.Q[f"feedback.{l}.weight"], self.feedback_activation, self.batchnorm)

    def forward(self, model, x):
        """[a_0, ..., a_{L−1}] (a_{L−1} the logits) and the list of f maps (with caches)."""
        acts, maps, a = [], [], x
        for l in range(len(model.blocks)):
            m = self.f(model, l)
            a = m(a)
            acts.append(a)
            maps.append(m)
        return acts, maps

    def class_scores(self, model, x):
        self._check(model)
        return self.forward(model, x)[0][-1]

    def _noise(self, like):
        """ε ~ N(0, σ²) shaped like ``like``: the one place a TP step draws (traces record each
        draw and replay them, :meth:`trace_step`)."""
        tape = getattr(self, "_tape", None)
        if tape is not None and tape["replay"] is not None:
            e = np.asarray(tape["replay"][len(tape["drawn"])])
        else:
            e = self._noise_rng.standard_normal(like.shape) * self.noise_std
        out = asarray_like(e, like, like.dtype)
        if tape is not None:
            tape["drawn"].append(out)
        return out

    # -- traces: Q is updated inside the step (param/ and after/, no grad/); noise is an input -
    def trace_step(self, model, x, y, inputs=None):
        """One step recording every noise draw as ``noise/<k>`` (k in draw order: feedback
        iterations × layers L−1..1 × the keys of :meth:`draw_noise`), or replaying them."""
        replay = None
        if inputs is not None:
            replay = [inputs[k] for k in sorted((k for k in inputs if k.startswith("noise/")),
                                                key=lambda k: int(k.split("/")[1]))]
        self._tape = {"replay": replay, "drawn": []}
        try:
            res = self.step(model, x, y)
            drawn = self._tape["drawn"]
        finally:
            self._tape = None
        return res, {f"noise/{k}": e for k, e in enumerate(drawn)}

    def trace_tensors(self, model) -> dict:
        """``act/<l>`` (a_l, the rule's own forward pass) and ``target/<l>`` (t_l)."""
        out = {f"act/{l}": a for l, a in enumerate(self.acts)}
        out.update({f"target/{l}": t for l, t in enumerate(self.targets)})
        return out

    def trace_meta(self) -> dict:
        return {"batchnorm": bool(self.batchnorm)}

    def trace_shapes(self, model, n: int) -> dict:
        out = super().trace_shapes(model, n)
        out.update({f"target/{l}": (n,) + tuple(s) for l, s in enumerate(model.shapes)})
        if self.fixed_feedback or self.feedback_loss is None:
            return out
        xp = np
        acts = [xp.zeros((n,) + tuple(s)) for s in model.shapes]
        probe = {"replay": None, "drawn": []}
        saved, self._tape = self._noise_rng, probe
        self._noise_rng = np.random.default_rng(0)          # shapes only: the real stream is kept
        try:
            iters = self.feedback_iters + self.pretrain_iters
            for _ in range(iters):
                for l in range(len(model.blocks) - 1, 0, -1):
                    self.draw_noise(acts, l)
        finally:
            self._noise_rng, self._tape = saved, None
        out.update({f"input/noise/{k}": tuple(e.shape) for k, e in enumerate(probe["drawn"])})
        return out

    # -- feedback training -------------------------------------------------------------------
    def feedback_loss_grad(self, model, l: int, x_in, acts, noise):
        """(loss, ∂loss/∂Q_l) of this rule's feedback objective for layer l (1..L−1) on the
        batch, given the forward activations ``acts`` (a_{−1} = ``x_in`` is not needed except
        for l = 1, where a_{l−1} = a_0) and the noise arrays ``noise`` (a dict, see each rule).
        The DTP objective: noise['q'] (N, d_{l−1}); L = (1/N) Σ ‖g_l(f_l(a_{l−1}+ε)) − (a_{l−1}+ε)‖²."""
        a_prev = acts[l - 1]
        N = a_prev.shape[0]
        q = a_prev + noise["q"]
        fm, gm = self.f(model, l), self.g(l)
        r = gm(fm(q))
        diff = r - q
        loss = (diff * diff).sum() / N
        _, dQ, _ = gm.backward(2 * diff / N, need_dv=False)
        return loss, dQ

    def draw_noise(self, acts, l: int) -> dict:
        return {"q": self._noise(acts[l - 1])}

    def train_feedback(self, model, x, acts, iters: int):
        """``iters`` rounds of plain SGD on every Q_l (top layer first). Returns the mean loss of
        the last round (0-d array) or None."""
        if self.fixed_feedback or self.feedback_loss is None or iters == 0:
            return None
        last = None
        L = len(model.blocks)
        for _ in range(iters):
            total = None
            for l in range(L - 1, 0, -1):
                loss, dQ = self.feedback_loss_grad(model, l, x, acts, self.draw_noise(acts, l))
                self.Q[f"feedback.{l}.weight"] -= self.lr_backward * dQ
                total = loss if total is None else total + loss
            last = total / (L - 1)
        return last

    # -- the step ----------------------------------------------------------------------------
    def compute_targets(self, model, acts, y):
        """[t_0..t_{L−1}] from the current feedback weights (difference correction)."""
        t_top = output_target(acts[-1], y, self.stepsize)
        inverses = [None] + [self.g(l) for l in range(1, len(model.blocks))]
        return difference_targets(acts, t_top, inverses, bn=self.batchnorm)

    def forward_grads(self, model, x, acts, maps, targets):
        """∇W_l of L_l = (1/N) Σ ‖a_l − sg(t_l)‖² with a_{l−1} detached, for every block."""
        N = x.shape[0]
        grads, terms = {}, {}
        for l, (a, t, m) in enumerate(zip(acts, targets, maps)):
            d = a - t
            terms[f"local/{l}"] = (d * d).sum() / N
            _, dW, db = m.backward(2 * d / N, need_dv=False)
            grads[f"forward.{l}.weight"] = dW
            if db is not None:
                grads[f"forward.{l}.bias"] = db
        return grads, terms

    def step(self, model, x, y) -> StepResult:
        """Feedback training (``feedback_iters`` rounds), targets, local forward gradients."""
        self._check(model)
        acts, _ = self.forward(model, x)
        iters = self.feedback_iters + (self.pretrain_iters if self._steps == 0 else 0)
        fb = self.train_feedback(model, x, acts, iters)
        self._steps += 1
        acts, maps = self.forward(model, x)
        targets = self.compute_targets(model, acts, y)
        grads, terms = self.forward_grads(model, x, acts, maps, targets)
        ce = cross_entropy(acts[-1], y, grad=False)
        terms["ce"] = ce
        if fb is not None:
            terms["feedback"] = fb
        self.acts, self.targets = acts, targets
        return StepResult(loss=ce, grads=grads, terms=terms, logits=acts[-1])

    def diagnostics(self, model, x, y) -> dict:
        """Angles in degrees, without training anything: ``align_bp/<l>`` between this rule's
        ∇W_l (from the current feedback, no feedback update) and backprop's ∇W_l of the mean
        cross-entropy of the model's plain forward pass; ``target_bp/<l>`` between the target
        displacement t_l − a_l and −∂CE/∂a_l. With ``batchnorm`` the rule's forward pass is not
        the model's, so the comparison is only indicative."""
        from ..metrics import angle
        from .bp import BP
        self._check(model)
        acts, maps = self.forward(model, x)
        targets = self.compute_targets(model, acts, y)
        grads, _ = self.forward_grads(model, x, acts, maps, targets)
        mine = {k: get_array_module(v).array(v, copy=True) for k, v in grads.items()}
        disp = [t - a for t, a in zip(targets, acts)]
        logits = model.forward(x)
        _, dlogits = cross_entropy(logits, y)
        out = {}
        d = dlogits
        for l in range(len(model.blocks) - 1, -1, -1):     # −∂CE/∂a_l, block by block
            out[f"target_bp/{l}"] = angle(disp[l], -d)
            d = model.blocks[l].backward(d, need_dx=l > 0)
        ref = BP().step(model, x, y).grads
        for k, v in mine.items():
            if k.endswith("weight"):
                out[f"align_bp/{k.split('.')[1]}"] = angle(v, ref[k])
        return out

    def config(self) -> dict:
        return {"rule": self.name, "stepsize": self.stepsize, "lr_backward": self.lr_backward,
                "noise_std": self.noise_std, "feedback_iters": self.feedback_iters,
                "pretrain_iters": self.pretrain_iters, "batchnorm": self.batchnorm,
                "orthogonal_init": self.orthogonal_init, "feedback_init": self.feedback_init,
                "feedback_activation": self.feedback_activation}


class DTP(TargetPropagation):
    """Difference target propagation with the noisy layer-wise reconstruction loss (module doc).

    Defaults (``defaults``): the authors' code's defaults where its README gives nothing else
    (Shibuya et al., Main.py: batch 256, 100 epochs, feedback_iters 5, noise_std 0.01,
    lr_backward 1e-3, stepsize 0.01, tanh, orthogonal init), with forward rate 1, the middle
    of the CCL paper's grid {0.3, 1, 3} (the code's argparse default, 1e-3, lies far below that grid
    and below every rate its README uses).
    """
    name = "dtp"
    feedback_loss = "dtp"
