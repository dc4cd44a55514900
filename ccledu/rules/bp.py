"""Backpropagation: the exact gradient of the mean cross-entropy.

    δ_L = (softmax(z_L) − Y) / N
    δ_l = (δ_{l+1} W_{l+1}) ⊙ σ'(z_l)          (through max-pool / flatten where present)
    ∇W_l = δ_lᵀ a_{l-1}                         (conv: δ_l in row layout times im2col columns)
"""
from __future__ import annotations

from ..losses import cross_entropy
from .base import Rule, StepResult


class BP(Rule):
    """Backprop. ``step`` runs the forward pass, then the chain rule through every block."""
    name = "bp"

    def step(self, model, x, y) -> StepResult:
        logits = model.forward(x)
        loss, dlogits = cross_entropy(logits, y)
        model.backward(dlogits)
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)
