"""Backpropagation: the exact gradient of the mean cross-entropy.

    δ_L = (softmax(z_L) − Y) / N
    δ_l = (δ_{l+1} W_{l+1}) ⊙ σ'(z_l)          (through max-pool / flatten where present)
    ∇W_l = δ_lᵀ a_{l-1}                         (conv: δ_l in row layout times im2col columns)

Training defaults: the project's MLP protocol (the public code's BP MLP files: batch 256, SGD
lr 1, no momentum, clip 1). For the CNN on CIFAR-10/100 the optimiser of the public BP CNN files
(``yaml/cnn/cifar10_bp.yaml``, ``cifar100_bp.yaml`` in IandRover/CCL-NeurIPS24): batch 256, SGD
lr 0.03, momentum 0.5, weight decay 1e-5, warm-up 200 steps, cosine over 100 epochs to 1e-3,
gradient centralization, no clipping. One difference: those files put a BatchNorm (no affine
parameters) before every convolution; ccledu has no batch normalisation, so its BP CNN is the
plain network every other rule trains.
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
