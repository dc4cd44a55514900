"""What every learning rule provides.

A learning rule changes only the credit-assignment step: given the model and a batch it
returns a gradient for every trainable parameter. Everything else (the layers, the optimiser,
the training loop) is shared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import functools
import math

import numpy as np

from ..backend import asarray, asarray_like, get_array_module, to_numpy
from ..losses import cross_entropy
from ..presets import named, rule_defaults


class _NamedPresets:
    """``Rule.PRESETS``: the rule's named presets of ``ccledu/presets.py`` (read-only)."""

    def __get__(self, obj, cls):
        return named(cls.name)


def check_batch(model, x, y) -> None:
    """ValueError, saying what is wrong and how to fix it, unless (x, y) is a batch ``model``
    can be trained on: x an array (N, *model.input_shape) of floating-point numbers with N ≥ 1;
    for a classifier y an integer array (N,) of labels in 0..C−1 (C = ``model.num_classes``;
    the range is checked on host arrays only, so a GPU step never waits for it); for an
    autoencoder (``num_classes`` None) y is not read. Every rule's :meth:`Rule.step` and
    :meth:`Rule.evaluate` run this first (see :meth:`Rule.__init_subclass__`)."""
    shape = getattr(x, "shape", None)
    want = "(N, " + ", ".join(str(s) for s in model.input_shape) + ")"
    if shape is None or not hasattr(x, "dtype"):
        raise ValueError(f"x must be an array {want}, got {type(x).__name__}; "
                         f"use numpy.asarray(x, dtype=model.dtype)")
    if tuple(shape[1:]) != tuple(model.input_shape):
        hint = ("; this is one example: x[None] makes it a batch of one"
                if tuple(shape) == tuple(model.input_shape) else
                f"; x.reshape(len(x), {', '.join(str(s) for s in model.input_shape)}) if each "
                f"row holds one example's {int(np.prod(model.input_shape))} numbers"
                if len(shape) >= 1 and int(np.prod(shape[1:])) == int(np.prod(model.input_shape))
                else "")
        raise ValueError(f"x has shape {tuple(shape)}, but the model takes {want}, one example "
                         f"per row{hint}")
    if shape[0] == 0:
        raise ValueError("the batch is empty (x has 0 rows): a step needs at least one example")
    if np.dtype(x.dtype).kind != "f":
        raise ValueError(f"x holds {x.dtype} numbers; convert it with x.astype(model.dtype) "
                         f"({model.dtype})")
    C = model.num_classes
    if C is None:
        return
    if y is None or not hasattr(y, "dtype") or not hasattr(y, "shape"):
        raise ValueError(f"y must be an integer array of {shape[0]} labels in 0..{C - 1}, "
                         f"got {type(y).__name__}")
    if np.dtype(y.dtype).kind not in "iu":
        raise ValueError(f"y holds {y.dtype} values; labels are integers 0..{C - 1} (one per "
                         f"row of x), e.g. y.astype(int) for whole-number floats, "
                         f"y.argmax(axis=1) for one-hot rows")
    if tuple(y.shape) != (shape[0],):
        raise ValueError(f"y has shape {tuple(y.shape)}, but x has {shape[0]} rows: "
                         f"give one integer label per example, shape ({shape[0]},)")
    if isinstance(y, np.ndarray):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= C:
            raise ValueError(f"labels must lie in 0..{C - 1} (the model has {C} classes), "
                             f"got values from {lo} to {hi}")


def _checked(method):
    """``method(self, model, x, y, ...)`` that runs :func:`check_batch` first."""
    @functools.wraps(method)
    def checked(self, model, x, y=None, *args, **kwargs):
        check_batch(model, x, y)
        return method(self, model, x, y, *args, **kwargs)
    checked.checks_batch = True
    return checked


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

    Every rule's ``step`` and ``evaluate`` check their batch first (:func:`check_batch`: x's
    shape and dtype, the labels' dtype, length and range), so a wrong batch gets a message, not
    an IndexError from deep inside a rule, or a silently wrong result (a label −1 would index
    the last class). A subclass's own code does not call it: :meth:`__init_subclass__` wraps
    the methods it defines.
    """
    name = "base"
    #: constructor options the CLI exposes as flags: name -> (type, default, help)
    OPTIONS: dict = {}
    #: named training-config overrides (``--preset NAME``), from ``ccledu/presets.py``
    PRESETS = _NamedPresets()
    #: the model kinds (``models.parse_spec``) the rule trains
    MODEL_KINDS: tuple = ("mlp", "cnn")

    def __init_subclass__(cls, **kwargs):
        """Wrap the ``step`` and ``evaluate`` a subclass defines so that each runs
        :func:`check_batch` first (a few µs: shapes, dtypes, min/max of host labels)."""
        super().__init_subclass__(**kwargs)
        for name in ("step", "evaluate"):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "checks_batch", False):
                setattr(cls, name, _checked(method))

    @classmethod
    def defaults(cls, kind: str, data: str | None = None) -> dict:
        """Training-config overrides for this rule on a model of ``kind`` ('mlp'|'cnn') and
        dataset ``data``: the matching entry of the presets table (``ccledu/presets.py``)."""
        return rule_defaults(cls.name, kind, data)

    def setup(self, model, seed=0):
        """Draw the rule's own matrices for ``model`` (host RNG from ``seed``); the base rule
        owns none."""
        return self

    @classmethod
    def check_kind(cls, kind: str) -> None:
        """ValueError (one line, naming the rules that can) unless the rule trains models of
        ``kind`` (:data:`MODEL_KINDS`; ``models.parse_spec`` gives a spec's kind)."""
        if kind not in cls.MODEL_KINDS:
            from . import RULES, rule_class
            able = sorted(r for r in RULES if kind in rule_class(r).MODEL_KINDS)
            raise ValueError(f"rule {cls.name!r} trains {' and '.join(cls.MODEL_KINDS)} models, "
                             f"not {kind} models; rules for {kind} models: "
                             f"{', '.join(able) or 'none'}")

    def model_options(self) -> dict:
        """Keyword arguments the rule gives the model builder (``models.build_model``); none
        by default (the autoencoder rules' ``small_init``)."""
        return {}

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
    def begin_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before the first step of epoch ``epoch`` (1-based) of
        ``epochs``, also on ``--resume``. Nothing by default; a rule whose step depends on
        where training stands reads it here (FF's ``schedule="layerwise"``)."""

    def shuffle_batches(self, batch_size: int, n_train: int) -> bool:
        """Whether the trainer visits the ``n_train`` training examples in a new random order
        every epoch (True by default). A rule whose step needs the very same batch at every
        step returns False, and raises ValueError, saying how to fix it, when ``batch_size``
        cannot give it that (FF's ``negatives="permuted_once"``). Called before training."""
        return True

    def step(self, model, x, y) -> StepResult:  # pragma: no cover - interface
        raise NotImplementedError

    # -- evaluation --------------------------------------------------------------------------
    def class_scores(self, model, x):
        """Scores (N, C) whose arg-max is the prediction (logits for most rules)."""
        return model.forward(x)

    @_checked
    def evaluate(self, model, x, y):
        """(sum of per-sample loss, number correct) on a batch; loss = cross-entropy of logits."""
        logits = self.class_scores(model, x)
        loss = cross_entropy(logits, y, grad=False)
        xp = get_array_module(logits)
        correct = xp.sum(logits.argmax(axis=1) == y)
        return loss * x.shape[0], correct

    def evaluate_set(self, model, x, y, batch_size: int = 1024) -> dict:
        """Mean metrics over host arrays x, y, in batches: {"loss": mean loss of
        :meth:`evaluate`, "accuracy": fraction correct}. ``loss`` is what the trainer selects
        the checkpoint on; each key k is recorded as ``val_<k>`` / ``test_<k>``."""
        total_loss, correct, n = 0.0, 0, len(y)
        for i in range(0, n, batch_size):
            xb = asarray(x[i:i + batch_size], dtype=model.dtype)
            loss, c = self.evaluate(model, xb, asarray(y[i:i + batch_size]))
            total_loss += float(to_numpy(loss))
            correct += int(to_numpy(c))
        return {"loss": total_loss / max(n, 1), "accuracy": correct / max(n, 1)}

    def figures(self, model, x, outdir, scores) -> list:
        """Figures of a finished run written into ``outdir`` (paths); ``x``: host test inputs,
        ``scores``: the test metrics. None by default (the autoencoders draw reconstructions)."""
        return []

    def diagnostics(self, model, x, y) -> dict:
        """Per-epoch extras (alignment angles, goodness, ...) computed on a held-out batch."""
        return {}

    def config(self) -> dict:
        """Settings that define the rule (recorded in metrics.json and traces)."""
        return {"rule": self.name}

    # -- traces (docs/trace-format.md): what this rule adds to one recorded step --------------
    #: options also written at the top level of a trace's meta (they must agree with meta.loss)
    TRACE_META: tuple = ()
    #: ``input/<name>`` entries of a trace that hold integer labels
    TRACE_LABELS: tuple = ()

    def trace_step(self, model, x, y, inputs=None):
        """One step as a trace records it: (StepResult, drawn).

        ``inputs``: name -> host array of the random draws of a recorded step (the file's
        ``input/<name>`` entries), replayed instead of drawing afresh; None draws. ``drawn``:
        name -> array of every draw the step made (written as ``input/<name>``). A rule whose
        step draws random numbers overrides this so that ``ccledu verify`` can replay them."""
        return self.step(model, x, y), {}

    def trace_tensors(self, model) -> dict:
        """Rule-specific tensors after :meth:`trace_step`, name -> array in computation order.
        Default: ``act/<l>``, each block's output (``model.activations``)."""
        return {f"act/{l}": a for l, a in enumerate(model.activations)}

    def trace_shapes(self, model, n: int) -> dict:
        """name -> shape of every entry :meth:`trace_step` draws and :meth:`trace_tensors`
        gives for a batch of ``n`` (what a reader checks a file against)."""
        return {f"act/{l}": (n,) + tuple(s) for l, s in enumerate(model.shapes)}

    def trace_meta(self) -> dict:
        """Extra top-level meta keys of a trace: the :data:`TRACE_META` options by default."""
        return {k: getattr(self, k) for k in self.TRACE_META}

    def grad_order(self, model, names) -> list:
        """Gradient names in the order the step computes them; default: from the top block
        down (weight before bias), the way an error travels."""
        order = [n for l in range(len(model.blocks) - 1, -1, -1)
                 for n in (f"forward.{l}.weight", f"forward.{l}.bias") if n in names]
        return order + [n for n in names if n not in order]


class FixedFeedbackRule(Rule):
    """A rule that owns fixed, never-trained random matrices (FA's B_l, DFA's D_l), kept in
    ``self.fixed`` as {``fixed.<l>.weight``: array}. ``feedback_scale`` scales their draw."""

    def __init__(self, feedback_scale: float = 1.0, feedback_init: str | None = None):
        if not feedback_scale > 0:
            raise ValueError(f"feedback_scale must be > 0, got {feedback_scale}")
        self.feedback_scale = float(feedback_scale)
        if feedback_init is not None:
            if feedback_init not in ("uniform", "xavier"):
                raise ValueError(f"feedback_init must be 'uniform' or 'xavier', got {feedback_init!r}")
            self.feedback_init = feedback_init
        self.fixed: dict = {}

    def draw_fixed(self, g, shape, fan_in: int, fan_out: int, like, dtype):
        """A fixed matrix of ``shape`` ~ U(−b, b) drawn on the host from ``g`` and moved to the
        device of ``like``: b = s/√fan_in (``feedback_init`` 'uniform', the default) or
        b = s·√(6/(fan_in + fan_out)) ('xavier'), s = ``feedback_scale``."""
        if getattr(self, "feedback_init", "uniform") == "xavier":
            bound = self.feedback_scale * math.sqrt(6.0 / (fan_in + fan_out))
        else:
            bound = self.feedback_scale / math.sqrt(fan_in)
        return asarray_like(g.uniform(-bound, bound, size=shape), like, dtype)

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
