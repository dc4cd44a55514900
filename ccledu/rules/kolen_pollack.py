"""Kolen–Pollack learning (Kolen & Pollack 1994; as used by Akrout et al. 2019, "Deep learning
without weight transport"): feedback alignment whose feedback matrices receive the *same*
update as the forward weights, plus the same weight decay, so that they converge to them.

    δ_L = (softmax(z_L) − Y)/N,   δ_l = (δ_{l+1} B_{l+1}) ⊙ σ'(z_l),   ΔW_l = δ_lᵀ a_{l−1}
    W_l ← W_l − η (ΔW_l + λ W_l),        B_l ← B_l − η (ΔW_l + λ B_l)          (l ≥ 1)

B_l has W_l's shape (FA's layout) and is a trainable parameter named ``feedback.<l>.weight``;
the rule returns ∇B_l = ΔW_l (the *forward* layer's gradient) and the optimiser applies the decay
λ (``weight_decay_forward`` = ``weight_decay_feedback``). Subtracting the two updates,

    B_l − W_l ← (1 − ηλ)(B_l − W_l)          (plain SGD, equal η and λ, no clipping)

so the difference decays geometrically whatever the data (with momentum μ the same holds for
the pair (difference, momentum buffer difference): a linear contraction). The learning signal
that reaches B_l is local to layer l: δ_l and a_{l−1}, both available where B_l sits.

The defaults are FA's (batch 32, lr 0.03, momentum 0.9, gradient centralization, cosine over
100 epochs) for *both* groups, with weight decay λ = 1e-4 on both and no clipping, because
per-group clipping scales the two groups' identical gradients by different factors and breaks
the identity above. Akrout et al. train ResNets on ImageNet; they publish no MNIST configuration.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import asarray, is_cupy_array, rng as make_rng
from ..losses import cross_entropy
from ..ranges import Range
from .base import Rule, StepResult


class KolenPollack(Rule):
    """Kolen–Pollack: FA with B_l trained by W_l's own update and a shared decay."""
    name = "kp"
    OPTIONS = {
        "feedback_scale": (float, 1.0, "B_l ~ U(-s/sqrt(fan_in), s/sqrt(fan_in)); s is this scale",
                           Range(float, 0, lo_open=True)),
    }

    def __init__(self, feedback_scale: float = 1.0):
        if not feedback_scale > 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.feedback_scale = float(feedback_scale)
        self.B: dict = {}

    def setup(self, model, seed=0):
        super().setup(model, seed)
        g = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0x6B9])
        backend = "cupy" if is_cupy_array(model.blocks[0].main.params["weight"]) else "numpy"
        self.B = {}
        for l in range(1, len(model.blocks)):
            W = model.blocks[l].main.params["weight"]
            bound = self.feedback_scale / math.sqrt(math.prod(W.shape[1:]))
            self.B[f"feedback.{l}.weight"] = asarray(g.uniform(-bound, bound, size=tuple(W.shape)),
                                                     dtype=model.dtype, backend=backend)
        return self

    def parameters(self) -> dict:
        """{``feedback.<l>.weight``: B_l} (W_l's shape), trained by the optimiser's feedback group."""
        return dict(self.B)

    def step(self, model, x, y) -> StepResult:
        L = len(model.blocks)
        if len(self.B) != L - 1:
            raise RuntimeError("KolenPollack.setup(model, seed) must be called for this model before step")
        logits = model.forward(x)
        loss, delta = cross_entropy(logits, y)
        model.backward(delta, weights=[None] + [self.B[f"feedback.{l}.weight"] for l in range(1, L)])
        grads = dict(model.gradients())
        for l in range(1, L):
            grads[f"feedback.{l}.weight"] = grads[f"forward.{l}.weight"]
        return StepResult(loss=loss, grads=grads, terms={"ce": loss}, logits=logits)

    def diagnostics(self, model, x, y) -> dict:
        """``align_weights/<l>``: angle in degrees between W_l and B_l; ``align_bp/<l>`` with BP."""
        from ..metrics import alignment_with_bp, angle
        out = {f"align_bp/{name.split('.')[1]}": v
               for name, v in alignment_with_bp(model, self, x, y).items()
               if name.startswith("forward") and name.endswith("weight")}
        for l in range(1, len(model.blocks)):
            out[f"align_weights/{l}"] = angle(model.blocks[l].main.params["weight"],
                                              self.B[f"feedback.{l}.weight"])
        return out

    def config(self) -> dict:
        return {"rule": self.name, "feedback_scale": self.feedback_scale}
