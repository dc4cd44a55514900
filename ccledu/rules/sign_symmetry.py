"""Sign-symmetric feedback (Liao, Leibo & Poggio 2016, "How important is weight symmetry in
backpropagation?"; variants named as in BioTorch, Sanfiz & Akrout 2021, jsalbert/biotorch).

Backprop in which the error crosses layer l through a matrix B_l that shares only the *signs*
of W_l (W_l's shape, so conv layers work as in FA):

    δ_l = (δ_{l+1} B_{l+1}) ⊙ σ'(z_l),   ∇W_l = δ_lᵀ a_{l−1},   δ_L = (softmax(z_L) − Y)/N

Variants (``variant``):

* ``usf``  (uniform sign-concordant feedback): B_l = s_l · sign(W_l), recomputed from the current
  W_l at every step; s_l = 1/√(3·fan_in) is the standard deviation of the default (PyTorch /
  ccledu) initialisation U(−1/√fan_in, 1/√fan_in), the scale BioTorch uses so that B has the
  size of W at initialisation.
* ``brsf`` (batch-wise random-magnitude sign-concordant): B_l = |M_l| ⊙ sign(W_l) with M_l drawn
  afresh from U(−1/√fan_in, 1/√fan_in) at every step (the host generator, seeded).
* ``frsf`` (fixed random-magnitude sign-concordant): as brsf, but |M_l| is drawn once in
  ``setup`` (``fixed.<l>.weight``) and only the signs follow W_l.

Identities (tests/test_sign_kp.py): frSF with |M_l| set to |W_l| is backprop exactly; since the
update is multilinear in the B's and the M's of different layers are independent, the mean
brSF update over many draws converges to the uSF update with s_l = E|M| = 1/(2√fan_in).

The defaults are FA's (:mod:`ccledu.rules.fa`): batch 32, SGD lr 0.03, momentum 0.9, gradient
centralization, cosine over 100 epochs — the rule is FA with a different B. Liao et al. train
with batch manipulation and batch normalisation, which ccledu's MLP does not have.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import asarray, get_array_module, is_cupy_array, rng as make_rng
from ..losses import cross_entropy
from .base import Rule, StepResult

VARIANTS = ("usf", "brsf", "frsf")


class SignSymmetry(Rule):
    """Sign-concordant feedback: backprop with B_l built from sign(W_l) (module docstring)."""
    name = "sign"
    OPTIONS = {"variant": (str, "usf", "sign-symmetry variant: usf | brsf | frsf (BioTorch's names)")}

    def __init__(self, variant: str = "usf"):
        if variant not in VARIANTS:
            raise ValueError(f"unknown sign-symmetry variant {variant!r}; choose one of {list(VARIANTS)}")
        self.variant = variant
        self.fixed: dict = {}

    def setup(self, model, seed=0):
        super().setup(model, seed)
        self._rng = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0x515])
        self._backend = "cupy" if is_cupy_array(model.blocks[0].main.params["weight"]) else "numpy"
        self._dtype = model.dtype
        self.fixed = {}
        if self.variant == "frsf":
            for l in range(1, len(model.blocks)):
                self.fixed[f"fixed.{l}.weight"] = self._magnitude(model.blocks[l].main.params["weight"])
        self._L = len(model.blocks)
        return self

    def buffers(self) -> dict:
        """frSF: {``fixed.<l>.weight``: |M_l|}; the other variants hold nothing fixed."""
        return dict(self.fixed)

    def _magnitude(self, W):
        tape = getattr(self, "_tape", None)
        if tape is not None and tape["replay"] is not None:     # a trace's recorded draw
            host = np.asarray(tape["replay"][len(tape["drawn"])])
        else:
            bound = 1.0 / math.sqrt(math.prod(W.shape[1:]))
            host = np.abs(self._rng.uniform(-bound, bound, size=tuple(W.shape)))
        out = asarray(host, dtype=self._dtype, backend=self._backend)
        if tape is not None:
            tape["drawn"].append(out)
        return out

    def trace_step(self, model, x, y, inputs=None):
        """brSF: the step's freshly drawn |M_l| are recorded as ``magnitude/<l>`` (replayed
        from ``inputs`` when given); the other variants draw nothing."""
        if self.variant != "brsf":
            return self.step(model, x, y), {}
        replay = None if inputs is None else [inputs[f"magnitude/{l}"] for l in range(1, len(model.blocks))]
        self._tape = {"replay": replay, "drawn": []}
        try:
            res = self.step(model, x, y)
            drawn = self._tape["drawn"]
        finally:
            self._tape = None
        return res, {f"magnitude/{l + 1}": m for l, m in enumerate(drawn)}

    def trace_shapes(self, model, n: int) -> dict:
        out = super().trace_shapes(model, n)
        if self.variant == "brsf":
            out.update({f"input/magnitude/{l}": tuple(model.blocks[l].main.params["weight"].shape)
                        for l in range(1, len(model.blocks))})
        return out

    def trace_meta(self) -> dict:
        return {"variant": self.variant}

    def feedback_weights(self, model) -> list:
        """[None, B_1, ..., B_{L−1}] for the current W's (brsf draws new magnitudes)."""
        if getattr(self, "_L", None) != len(model.blocks):
            raise RuntimeError("SignSymmetry.setup(model, seed) must be called for this model before step")
        out = [None]
        for l in range(1, len(model.blocks)):
            W = model.blocks[l].main.params["weight"]
            xp = get_array_module(W)
            if self.variant == "usf":
                B = xp.sign(W) * (1.0 / math.sqrt(3 * math.prod(W.shape[1:])))
            elif self.variant == "brsf":
                B = self._magnitude(W) * xp.sign(W)
            else:
                B = self.fixed[f"fixed.{l}.weight"] * xp.sign(W)
            out.append(B.astype(W.dtype, copy=False))
        return out

    def set_feedback(self, arrays: dict) -> None:
        """frSF: overwrite magnitudes |M_l| (``fixed.<l>.weight``), e.g. with |W_l| (tests)."""
        for name, value in arrays.items():
            if name not in self.fixed:
                raise KeyError(f"unknown feedback magnitude {name!r}; this rule holds {sorted(self.fixed)}")
            M = self.fixed[name]
            M[...] = get_array_module(M).asarray(value, dtype=M.dtype)

    def step(self, model, x, y) -> StepResult:
        logits = model.forward(x)
        loss, delta = cross_entropy(logits, y)
        model.backward(delta, weights=self.feedback_weights(model))
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)

    def diagnostics(self, model, x, y) -> dict:
        """``align_bp/<l>``: angle in degrees between this rule's and BP's ∇W_l on (x, y)."""
        from ..metrics import alignment_with_bp
        return {f"align_bp/{name.split('.')[1]}": v
                for name, v in alignment_with_bp(model, self, x, y).items() if name.endswith("weight")}

    def config(self) -> dict:
        return {"rule": self.name, "variant": self.variant}
