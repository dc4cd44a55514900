"""Direct feedback alignment (Nøkland 2016): the output error is broadcast to every hidden block.

    e   = δ_L = (softmax(z_L) − Y) / N                    (N, C)
    ∇W_L from e as in backprop:  ∇W_L = eᵀ a_{L-1}
    hidden block l (0-based l = 0..L−2 here, a_l its output):
        g_l = e D_lᵀ                                       (N, |a_l|), reshaped to a_l's shape
        δ_l = g_l ⊙ σ'(z_l)     (conv: g_l goes back through the max-pool first)
        ∇W_l = δ_lᵀ a_{l-1}

So each hidden block follows the gradient of its own local objective ⟨sg(e D_lᵀ), a_l(W_l)⟩;
no error crosses a forward weight, and every block's update can be computed in parallel.

Fixed matrices: D_l of shape (|a_l|, C), |a_l| = prod(model.shapes[l]) (for a conv block the
pooled output C×H×W, flattened in C-major order like ``reshape``), for every hidden block,
named ``fixed.<l>.weight`` (PyTorch layout of a linear map from the C classes to block l).

Scale of D: D_l ~ U(−s/√|a_l|, s/√|a_l|), s = ``feedback_scale`` (default 0.3). With s = 1 this
is the law of W_Lᵀ for a classifier reading a_l initialised like PyTorch (fan_in = |a_l|), so
e D_lᵀ starts at the size of backprop's error at the last hidden block, for every block. That
is too strong for the paper MLP (784-256×5-10, ELU, PyTorch init): the hidden weights grow
along the feedback directions faster than the classifier aligns with them, the activations
blow up and MNIST accuracy after 2 epochs stays near 80 %. s = 0.3 keeps the hidden layers'
updates a few times below the classifier's (sweep over s ∈ {0.02 … 1}: best at 0.2–0.3). The
other textbook choice, the init of a C → |a_l| map (bound 1/√C), is √(|a_l|/C) = 16× larger
still for 256 units. ``feedback_init="xavier"`` draws instead as BioTorch does
(``xavier_uniform_`` of its ``weight_backward``, times s): bound s·√(6/(fan_in + fan_out)) of
the stored array's shape ((C, |a_l|) there: fan_in |a_l|, fan_out C; a kernel below: fan_in
ch_l·k·k, fan_out C·k·k).

**Convolutional feedback** (``conv_feedback="kernel"``, BioTorch's DFA ``Conv2d``): when block
l+1 is a conv block, a_l receives the transposed convolution of the output error repeated over
every output position of block l+1's convolution, through a fixed kernel K_l of shape
(C, ch_l, k, k) (k, stride, padding those of block l+1's conv):

    E[n, c, i, j] = e[n, c]  for every position (i, j) of conv_{l+1}'s output   (N, C, OH, OW)
    g_l = conv_transpose(E, K_l)                        (N, ch_l, H_l, W_l): every im2col row
          of sample n is e_n K_l,mat (K_l,mat = K_l reshaped (C, ch_l·k·k)), summed back by col2im,

i.e. g_l = e D_lᵀ with the weight-shared D_l[(c', i, j), c] = Σ_{taps (u, v) of output positions
that read (i, j)} K_l[c, c', u, v]. In BioTorch this is the hook of the *consumer* layer: it
replaces the gradient at conv_{l+1}'s input. Blocks followed by a linear block (the classifier)
keep the dense D_l. ``fixed.<l>.weight`` then has K_l's shape (PyTorch layout of a conv from
ch_l channels to C: BioTorch's ``weight_backward``).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, rng as make_rng
from ..im2col import col2im
from ..losses import cross_entropy
from ..ranges import Range
from .base import FixedFeedbackRule, StepResult

class DFA(FixedFeedbackRule):
    """Direct feedback alignment. ``setup`` draws D_0..D_{L-2}; ``step`` injects e D_lᵀ into a_l."""
    name = "dfa"
    OPTIONS = {
        "feedback_scale": (float, 0.3, "D_l ~ U(-s/sqrt(|a_l|), s/sqrt(|a_l|)); s is this scale",
                           Range(float, 0, lo_open=True)),
        "conv_feedback": (str, "dense", "into a block followed by a conv block: 'dense' D_l, or "
                                        "'kernel': a fixed kernel applied to the error repeated "
                                        "over every position (BioTorch's DFA Conv2d)"),
        "feedback_init": (str, "uniform", "'uniform': U(+-s/sqrt(|a_l|)); 'xavier': "
                                          "s * xavier_uniform of the stored shape (BioTorch)"),
    }

    def __init__(self, feedback_scale: float = 0.3, conv_feedback: str = "dense",
                 feedback_init: str = "uniform"):
        super().__init__(feedback_scale, feedback_init)
        if conv_feedback not in ("dense", "kernel"):
            raise ValueError(f"conv_feedback must be 'dense' or 'kernel', got {conv_feedback!r}")
        self.conv_feedback = conv_feedback

    def setup(self, model, seed=0):
        super().setup(model, seed)
        g = seed if isinstance(seed, np.random.Generator) else make_rng([int(seed), 0xDFA])
        C = model.num_classes
        self.fixed = {}
        for l in range(len(model.blocks) - 1):
            size = math.prod(model.shapes[l])
            conv = self.kernel_conv(model, l)
            if conv is not None:                   # K_l (C, ch_l, k, k)
                k = conv.kernel_size
                shape = (C, conv.in_channels, k, k)
                fan_in, fan_out = conv.in_channels * k * k, C * k * k
            else:                                  # D_l (|a_l|, C); BioTorch stores its transpose
                shape, fan_in, fan_out = (size, C), size, C
            self.fixed[f"fixed.{l}.weight"] = self.draw_fixed(
                g, shape, fan_in, fan_out, model.blocks[0].main.params["weight"], model.dtype)
        return self

    def kernel_conv(self, model, l):
        """Block l+1's Conv2d when block l gets kernel feedback (conv_feedback='kernel' and block
        l+1 is a conv block), else None."""
        if self.conv_feedback != "kernel" or l + 1 >= len(model.blocks):
            return None
        main = model.blocks[l + 1].main
        return main if getattr(main, "kernel_size", None) is not None and main.params["weight"].ndim == 4 else None

    def signal(self, model, l, e):
        """g_l (N, *shape of a_l): e D_lᵀ, or (kernel feedback) the transposed convolution of e
        repeated over conv_{l+1}'s output positions with K_l."""
        N = e.shape[0]
        M = self.fixed[f"fixed.{l}.weight"]
        conv = self.kernel_conv(model, l)
        if conv is None:
            return (e @ M.T).reshape(N, *model.shapes[l])
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        ch, H, W = model.shapes[l]
        OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        rows = e @ M.reshape(M.shape[0], -1)                       # (N, ch·k·k), one per sample
        xp = get_array_module(rows)
        cols = xp.repeat(rows, OH * OW, axis=0)                    # the same at every position
        return col2im(cols, (N, ch, H, W), k, k, s, p)

    def step(self, model, x, y) -> StepResult:
        """x (N, *input_shape), y (N,) int -> gradients of every ``forward.<l>.*``."""
        L = len(model.blocks)
        if len(self.fixed) != L - 1:
            raise RuntimeError("DFA.setup(model, seed) must be called for this model before step")
        logits = model.forward(x)
        loss, e = cross_entropy(logits, y)                        # e = (softmax − Y)/N
        model.blocks[L - 1].backward(e, need_dx=False)            # ∇W_L = eᵀ a_{L-1}
        for l in range(L - 1):
            g = self.signal(model, l, e)                          # e D_lᵀ, shaped like a_l
            model.blocks[l].backward(g, need_dx=False)
        return StepResult(loss=loss, grads=model.gradients(), terms={"ce": loss}, logits=logits)

    def diagnostics(self, model, x, y) -> dict:
        """``align_bp/<l>``: angle in degrees between DFA's and BP's ∇W_l on (x, y)."""
        from ..metrics import alignment_with_bp
        return {f"align_bp/{name.split('.')[1]}": v
                for name, v in alignment_with_bp(model, self, x, y).items() if name.endswith("weight")}

    def config(self) -> dict:
        return {"rule": self.name, "feedback_scale": self.feedback_scale,
                "conv_feedback": self.conv_feedback, "feedback_init": self.feedback_init}

