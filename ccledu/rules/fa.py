"""Feedback alignment (Lillicrap et al. 2016): backprop with fixed random matrices on the way down.

The forward pass and the output error are those of backprop; only the matrix the error
crosses when it goes from block l to block l−1 changes:

    δ_L = (softmax(z_L) − Y) / N                         (N, C)
    δ_l = (δ_{l+1} B_{l+1}) ⊙ σ'(z_l)                     B_{l+1} fixed, W_{l+1}'s shape
    ∇W_l = δ_lᵀ a_{l-1}                                   (conv: δ_l in row layout × im2col columns)

For a conv block the error also goes back through the max-pool (to the arg-max positions)
before σ', and "δ_{l+1} B_{l+1}" is the transposed convolution with the fixed kernel B_{l+1}.
Equivalently, W_l follows the gradient of the local objective ⟨sg(δ_l), z_l(W_l)⟩.

Fixed matrices: B_l for l = 1..L−1 (block 0 never sends an error down), named
``fixed.<l>.weight``, with W_l's PyTorch layout ((out, in) or (out, in, kh, kw)). They are drawn
once in :meth:`FA.setup` and never trained. With B_l = W_l the rule *is* backprop.

Scale of B: B_l ~ U(−s/√fan_in, s/√fan_in), fan_in = in·kh·kw, the same law as PyTorch's
default initialisation of W_l (s = ``feedback_scale``, default 1). At initialisation B_l and
W_l then have the same statistics, so the FA error has the size BP's error would have. The
error arriving at block l scales like s^(L−1−l): on the paper MLP s = 1.5 already makes the
hidden activations grow and MNIST accuracy drop, s = 0.7 starves the lower layers.
The draw uses the generator ``default_rng([seed, 0xFA])``, so B is independent of forward
weights built from the same seed. ``feedback_init="xavier"`` draws B_l as BioTorch's FA layers
do (``xavier_uniform_`` of ``weight_backward``, times s): bound s·√(6/(fan_in + fan_out)),
fan_in = in·kh·kw, fan_out = out·kh·kw.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import rng as make_rng
from ..losses import cross_entropy
from ..ranges import Range
from .base import FixedFeedbackRule, StepResult

class FA(FixedFeedbackRule):
    """Feedback alignment. ``setup`` draws B_1..B_{L-1}; ``step`` is backprop with B in place of W."""
    name = "fa"
    OPTIONS = {
        "feedback_init": (str, "uniform", "'uniform': U(+-s/sqrt(fan_in)); 'xavier': "
                                          "s * xavier_uniform of W_l's shape (BioTorch)"),
        "feedback_scale": (float, 1.0, "B_l ~ U(-s/sqrt(fan_in), s/sqrt(fan_in)); s is this scale",
                           Range(float, 0, lo_open=True)),
    }

    def __init__(self, feedback_scale: float = 1.0, feedback_init: str = "uniform"):
        super().__init__(feedback_scale, feedback_init)

    def setup(self, model, seed=0):
        super().setup(model, seed)
        g = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0xFA])
        self.fixed = {}
        for l in range(1, len(model.blocks)):
            W = model.blocks[l].main.params["weight"]
            self.fixed[f"fixed.{l}.weight"] = self.draw_fixed(
                g, tuple(W.shape), math.prod(W.shape[1:]), W.shape[0] * math.prod(W.shape[2:]),
                W, model.dtype)
        return self

    def feedback_weights(self, model) -> list:
        """[None, B_1, ..., B_{L-1}]: what ``Network.backward`` uses in place of each W_l."""
        if len(self.fixed) != len(model.blocks) - 1:
            raise RuntimeError("FA.setup(model, seed) must be called for this model before step")
        return [None] + [self.fixed[f"fixed.{l}.weight"] for l in range(1, len(model.blocks))]

    def step(self, model, x, y) -> StepResult:
        """x (N, *input_shape), y (N,) int -> gradients of every ``forward.<l>.*``."""
        logits = model.forward(x)
        loss, delta = cross_entropy(logits, y)             # δ_L = (softmax − Y)/N
        model.backward(delta, weights=self.feedback_weights(model))
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)

    def diagnostics(self, model, x, y) -> dict:
        """Angles in degrees: ``align_bp/<l>`` between FA's and BP's ∇W_l on (x, y), and
        ``align_weights/<l>`` between W_l and B_l (l ≥ 1)."""
        from ..metrics import alignment_with_bp, angle
        out = {f"align_bp/{name.split('.')[1]}": v
               for name, v in alignment_with_bp(model, self, x, y).items() if name.endswith("weight")}
        for l in range(1, len(model.blocks)):
            out[f"align_weights/{l}"] = angle(model.blocks[l].main.params["weight"],
                                              self.fixed[f"fixed.{l}.weight"])
        return out

    def config(self) -> dict:
        return {"rule": self.name, "feedback_scale": self.feedback_scale,
                "feedback_init": self.feedback_init}
