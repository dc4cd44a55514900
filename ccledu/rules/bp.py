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


#: the public BP CNN configuration on CIFAR (see the module docstring)
_CNN_CIFAR = dict(batch_size=256, lr_forward=0.03, momentum_forward=0.5, weight_decay_forward=1e-5,
                  clip_forward=0.0, centralize=True, warmup=200, cosine_tmax=100, eta_min=1e-3)


class BP(Rule):
    """Backprop. ``step`` runs the forward pass, then the chain rule through every block."""
    name = "bp"

    @classmethod
    def defaults(cls, kind: str, data: str) -> dict:
        """The public BP CNN optimiser for ``kind == "cnn"`` on CIFAR-10/100, else nothing."""
        return dict(_CNN_CIFAR) if kind == "cnn" and data in ("cifar10", "cifar100") else {}

    def step(self, model, x, y) -> StepResult:
        logits = model.forward(x)
        loss, dlogits = cross_entropy(logits, y)
        model.backward(dlogits)
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)
