"""What every learning rule provides.

A learning rule changes only the credit-assignment step: given the model and a batch it
returns a gradient for every trainable parameter. Everything else (the layers, the optimiser,
the training loop) is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import get_array_module
from ..losses import cross_entropy


@dataclass
class StepResult:
    """One step's output.

    loss:   0-d array (on the model's device): the objective the rule minimised.
    grads:  name -> array for every trainable parameter (``forward.<l>.weight`` ...,
            and rule-owned ones such as ``feedback.<l>.weight``), PyTorch layout.
    terms:  name -> 0-d array, the loss broken down (e.g. per layer), for plots and traces.
    logits: (N, C) forward output, when the rule computed one.
    """
    loss: object
    grads: dict
    terms: dict = field(default_factory=dict)
    logits: object = None


class Rule:
    """Base class. Subclasses implement :meth:`step`.

    ``setup(model, seed)`` is called once before training: it draws any fixed or trainable
    matrices the rule owns (on the host, from ``seed``) for that model.
    """
    name = "base"
    #: constructor options the CLI exposes as flags: name -> (type, default, help)
    OPTIONS: dict = {}
    #: named training-config overrides (``--preset NAME``)
    PRESETS: dict = {}

    @classmethod
    def defaults(cls, kind: str, data: str) -> dict:
        """Training-config overrides for this rule on a model of ``kind`` ('mlp'|'cnn') and
        dataset ``data``. The base rule keeps the project defaults."""
        return {}

    def setup(self, model, seed=0):
        self.model_spec = model.spec()
        return self

    # -- parameters the rule owns ------------------------------------------------------------
    def parameters(self) -> dict:
        """Trainable parameters owned by the rule (CCL's feedback weights), name -> array."""
        return {}

    def buffers(self) -> dict:
        """Fixed, never-trained arrays owned by the rule (FA/DFA feedback), name -> array."""
        return {}

    def param_groups(self, model) -> dict:
        """Optimiser groups: 'forward' always, 'feedback' when the rule trains its own weights."""
        groups = {"forward": model.parameters()}
        own = self.parameters()
        if own:
            groups["feedback"] = own
        return groups

    # -- the learning step -------------------------------------------------------------------
    def step(self, model, x, y) -> StepResult:  # pragma: no cover - interface
        raise NotImplementedError

    # -- evaluation --------------------------------------------------------------------------
    def predict(self, model, x):
        """Scores (N, C) whose arg-max is the prediction (logits for most rules)."""
        return model.forward(x)

    def evaluate(self, model, x, y):
        """(sum of per-sample loss, number correct) on a batch; loss = cross-entropy of logits."""
        logits = self.predict(model, x)
        loss = cross_entropy(logits, y, grad=False)
        xp = get_array_module(logits)
        correct = xp.sum(logits.argmax(axis=1) == y)
        return loss * x.shape[0], correct

    def diagnostics(self, model, x, y) -> dict:
        """Per-epoch extras (alignment angles, goodness, ...) computed on a held-out batch."""
        return {}

    def config(self) -> dict:
        """Settings that define the rule (recorded in metrics.json and traces)."""
        return {"rule": self.name}


class FixedFeedbackRule(Rule):
    """A rule that owns fixed, never-trained random matrices (FA's B_l, DFA's D_l), kept in
    ``self.fixed`` as {``fixed.<l>.weight``: array}. ``feedback_scale`` scales their draw."""

    def __init__(self, feedback_scale: float = 1.0):
        if not feedback_scale > 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.feedback_scale = float(feedback_scale)
        self.fixed: dict = {}

    def buffers(self) -> dict:
        """{``fixed.<l>.weight``: matrix} (the live arrays)."""
        return dict(self.fixed)

    def set_feedback(self, arrays: dict) -> None:
        """Overwrite some fixed matrices in place, e.g. ``{"fixed.1.weight": W_1}`` (tests set
        B = W to recover backprop)."""
        for name, value in arrays.items():
            if name not in self.fixed:
                raise KeyError(f"unknown feedback matrix {name!r}; {self.name.upper()} holds "
                               f"{sorted(self.fixed)}")
            M = self.fixed[name]
            if tuple(value.shape) != tuple(M.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match {tuple(M.shape)}")
            M[...] = get_array_module(M).asarray(value, dtype=M.dtype)
