"""Direct random target projection (DRTP, Frenkel, Lefebvre & Bol 2021, Front. Neurosci. 15:629892;
code ChFrenkel/DirectRandomTargetProjection).

DRTP is DFA with the output error replaced by the *target* itself. The one-hot Y (a sign-free
surrogate of the error's sign: for a correct output, −e and Y point the same way in the true
class) is sent through a fixed random matrix to every hidden block:

    classifier:      e = (softmax(z_L) − Y) / N,   ∇W_L = eᵀ a_{L−1}            (cross-entropy)
    hidden block l:  g_l = (Y D_lᵀ) / N                                (N, |a_l|), reshaped like a_l
                     δ_l = g_l ⊙ σ'(z_l)   (conv: back through the max-pool first)
                     ∇W_l = δ_lᵀ a_{l−1}

So W_l follows the gradient of the local objective (1/N) Σ_n ⟨sg(y_n D_lᵀ), a_l,n(W_l)⟩: the
hidden layers never see the output, only the label. Hence DRTP's defining property: the hidden
updates do not depend on the output error, nor on any weight above the layer (every hidden
update can run as soon as a_l is computed: no update locking; tests/test_drtp.py checks it).

Fixed matrices D_l of shape (|a_l|, C), ``fixed.<l>.weight`` (the layout DFA uses). Two draws:

* ``feedback_std`` = 0 (default): U(−√(6/|a_l|), √(6/|a_l|)) (``torch.nn.init.kaiming_uniform_``
  on a (C, |a_l|) tensor, as the public code does);
* ``feedback_std`` > 0: N(``feedback_mean``, ``feedback_std``²), the distribution the CCL paper's
  grid searches (mean {0, 0.05}, std {0.01, 0.03, 0.1, 0.3}).

Where the public code differs: its output layer is a sigmoid trained with binary cross-entropy
(mean over N·C) and its hidden-layer signal Y D is *not* divided by N (the hook replaces the
gradient, so the hidden layers get the sum over the batch while the output gets the mean).
ccledu keeps the project's softmax cross-entropy head and divides both by N (as for DFA), so the
same learning rate serves both; the code's hidden updates equal ccledu's at a rate N times
larger. Its optimiser is SGD with Nesterov momentum 0.9; ccledu's SGD has no Nesterov variant,
so the defaults use plain momentum 0.9.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import asarray, is_cupy_array, rng as make_rng
from ..losses import cross_entropy, one_hot
from ..ranges import Range
from .base import FixedFeedbackRule, StepResult

class DRTP(FixedFeedbackRule):
    """Direct random target projection. ``setup`` draws D_0..D_{L−2}; ``step`` injects Y D_lᵀ/N."""
    name = "drtp"
    OPTIONS = {
        "feedback_std": (float, 0.0, "DRTP: D_l ~ N(mean, std^2) when > 0, else Kaiming-uniform as the public code",
                         Range(float, 0)),
        "feedback_mean": (float, 0.0, "DRTP: mean of the Gaussian D_l (used when feedback_std > 0)",
                          Range(float)),
    }

    def __init__(self, feedback_std: float = 0.0, feedback_mean: float = 0.0):
        super().__init__(1.0)
        if feedback_std < 0:
            raise ValueError(f"feedback_std must be >= 0 (0 = Kaiming-uniform), got {feedback_std}")
        self.feedback_std = float(feedback_std)
        self.feedback_mean = float(feedback_mean)

    def setup(self, model, seed=0):
        super().setup(model, seed)
        g = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0xD27])
        C = model.num_classes
        backend = "cupy" if is_cupy_array(model.blocks[0].main.params["weight"]) else "numpy"
        self.fixed = {}
        for l in range(len(model.blocks) - 1):
            size = math.prod(model.shapes[l])
            if self.feedback_std > 0:
                host = g.normal(self.feedback_mean, self.feedback_std, size=(size, C))
            else:
                bound = math.sqrt(6.0 / size)
                host = g.uniform(-bound, bound, size=(size, C))
            self.fixed[f"fixed.{l}.weight"] = asarray(host, dtype=model.dtype, backend=backend)
        return self

    def hidden_signal(self, model, y, l):
        """g_l = Y D_lᵀ / N reshaped to a_l's shape: what block l receives (no output involved)."""
        N = y.shape[0]
        Y = one_hot(y, model.num_classes, model.dtype)
        return (Y @ self.fixed[f"fixed.{l}.weight"].T / N).reshape(N, *model.shapes[l])

    def step(self, model, x, y) -> StepResult:
        """x (N, *input_shape), y (N,) int -> gradients of every ``forward.<l>.*``."""
        L = len(model.blocks)
        if len(self.fixed) != L - 1:
            raise RuntimeError("DRTP.setup(model, seed) must be called for this model before step")
        logits = model.forward(x)
        loss, e = cross_entropy(logits, y)
        model.blocks[L - 1].backward(e, need_dx=False)          # ∇W_L = eᵀ a_{L−1}
        for l in range(L - 1):
            model.blocks[l].backward(self.hidden_signal(model, y, l), need_dx=False)
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)

    def diagnostics(self, model, x, y) -> dict:
        """``align_bp/<l>``: angle in degrees between DRTP's and BP's ∇W_l on (x, y)."""
        from ..metrics import alignment_with_bp
        return {f"align_bp/{name.split('.')[1]}": v
                for name, v in alignment_with_bp(model, self, x, y).items() if name.endswith("weight")}

    def config(self) -> dict:
        return {"rule": self.name, "feedback_std": self.feedback_std, "feedback_mean": self.feedback_mean}
