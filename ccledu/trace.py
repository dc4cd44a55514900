"""Trace files: one training step written down tensor by tensor, and a checker for them.

A trace is a ``.npz`` archive (``numpy.savez``) that describes one step of one learning rule
completely: the network (``meta["layers"]``), the batch (``x``, ``y``), every parameter before the
step (``param/<name>``), what the rule computed (``act/<l>``, ``signal/<l>``, ``loss/<term>``,
``grad/<name>``) and every parameter after the optimiser step (``after/<name>``). The full format
is documented in ``docs/trace-format.md``; this module writes, reads and checks such files.

* :func:`write_trace` builds a model and a rule, runs one step with ccledu, writes the file.
* :func:`read_trace` loads a file (ours or anyone's) and checks that it is well formed, raising
  :class:`TraceError` with a readable message otherwise.
* :func:`verify_trace` rebuilds the network and the rule from ``meta``, loads the parameters,
  recomputes the step with ccledu, and compares every tensor the file holds.

Command line (``ccledu trace`` / ``ccledu verify``): see :func:`add_parser`.

Naming (0-based block index l, PyTorch layouts):

    x (N, *input_shape), y (N,) int
    param/forward.<l>.weight|bias, param/feedback.<l>.weight (CCL), param/fixed.<l>.weight (FA, DFA)
    act/<l>        output of block l (act/<L-1> = the logits; the input x is not an act)
    signal/<l>     CCL: output of feedback block l, shaped like block l's *input* (C rows);
                   signal/<L> = I_C, the feedback net's input
    overlay/positive|negative|neutral   FF: the inputs with the label written in
    input/negative_labels               FF: the wrong labels the step drew (an input, not checked)
    loss/<term>, loss/total             0-d
    grad/<name>    the rule's gradient (before warm-up, centralization, clipping, SGD)
    after/<name>   the parameter after the optimiser step
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from . import __version__
from .backend import asarray, get_array_module, resolve_dtype, to_numpy
from .models import build_from_layers, build_model, parse_spec
from .rules import RULES, rule_class

FORMAT = "ccledu-trace/1"

#: default tolerances per dtype: (rtol, atol). A tensor agrees when every element satisfies
#: |file − ccledu| <= atol + rtol·|ccledu|.
TOLERANCES = {"float64": (1e-7, 1e-10), "float32": (1e-4, 1e-5)}

#: ε in the clipping coefficient clip / (‖g‖ + ε) (as torch.nn.utils.clip_grad_norm_)
CLIP_EPS = 1e-6

#: meta keys every trace must have
REQUIRED_META = ("format", "rule", "dtype", "seed", "input_shape", "num_classes", "layers",
                 "loss", "optimizer", "batch_size")

#: what the reader accepts before it allocates anything (override per call with ``limits=``):
#:
#: * ``entries``: members of the archive;
#: * ``meta_bytes``: size of the ``meta`` string entry;
#: * ``parameters``: forward-weight elements that ``meta.layers`` declares (Σ over blocks);
#: * ``step_elements``: elements one recomputed step touches, declared by meta:
#:   N·(|x| + Σ_l |a_l| + im2col columns of each conv) + C·(C + Σ_l |input of block l|);
#: * ``total_bytes``: decompressed bytes of the entries that are loaded (from their headers).
#:
#: The defaults allow the paper's architectures (the CIFAR CNN has 2.2 M forward weights, the
#: 4 × 1024 CIFAR MLP 6.3 M) at trace batch sizes, and keep a recomputation within a few GiB.
LIMITS = {"entries": 4096, "meta_bytes": 1 << 24, "parameters": 1 << 24,
          "step_elements": 1 << 27, "total_bytes": 1 << 30}

#: meta key that, when it holds a non-empty string, allows NaN/inf in a trace: the file says why
#: (e.g. "overflow test"); each tensor with a non-finite element must then match bit for bit.
NONFINITE_KEY = "nonfinite"

#: optimiser settings, as TrainConfig fields, that write_trace accepts (plus "lr", "momentum",
#: "weight_decay", "clip" for both groups at once, and "step")
_OPT_FIELDS = ("lr_forward", "lr_feedback", "momentum_forward", "momentum_feedback",
               "weight_decay_forward", "weight_decay_feedback", "clip_forward", "clip_feedback",
               "centralize", "warmup", "step")
_GROUP_KEYS = ("lr", "momentum", "weight_decay", "clip", "centralize")

#: the order of the update, written into meta["optimizer"]["order"]
UPDATE_ORDER = [
    "warmup: g <- g * (step + 1) / warmup when step < warmup",
    "centralize (groups with centralize): g <- g - mean(g over all axes but the first), for g.ndim > 1",
    "clip (groups with clip > 0): n = sqrt(sum over the group of |g|^2); if clip / (n + 1e-6) < 1, "
    "every g of the group <- g * clip / (n + 1e-6)",
    "weight decay: g <- g + weight_decay * p",
    "momentum (momentum > 0): b <- g on the first step (a trace is the first step of a fresh "
    "optimiser), g <- b",
    "sgd: p <- p - lr * g",
]


class TraceError(ValueError):
    """A trace file that cannot be read or does not describe a valid step."""


#: one compared tensor: its name, max |file − ccledu|, max relative error, whether it agrees
Row = namedtuple("Row", ["tensor", "max_abs", "max_rel", "ok"])


class Report(list):
    """The rows of :func:`verify_trace` (a list of :data:`Row`, in computation order) plus:

    ``missing``: tensors ccledu computes that the file lacks (not checked);
    ``unknown``: tensors in the file that ccledu does not compute (not checked);
    ``rtol``, ``atol``, ``meta``; ``ok`` (every row agrees) and ``first_mismatch`` (index or None).
    """

    def __init__(self, rows=(), missing=(), unknown=(), rtol=0.0, atol=0.0, meta=None):
        super().__init__(rows)
        self.missing = list(missing)
        self.unknown = list(unknown)
        self.rtol, self.atol = rtol, atol
        self.meta = meta or {}

    @property
    def ok(self) -> bool:
        """Every compared tensor agrees, and at least one was compared."""
        return len(self) > 0 and all(r.ok for r in self)

    @property
    def first_mismatch(self):
        return next((i for i, r in enumerate(self) if not r.ok), None)

    def failing(self) -> list:
        return [r.tensor for r in self if not r.ok]

    def summary(self) -> str:
        """One paragraph: all agree, or the first tensor that differs and the last that agreed."""
        i = self.first_mismatch
        tol = f"rtol {self.rtol:g}, atol {self.atol:g}"
        if i is None:
            return f"all {len(self)} tensors agree ({tol})."
        r = self[i]
        n_bad = len(self.failing())
        msg = (f"{n_bad} of {len(self)} tensors differ ({tol}). The first, in computation order, is "
               f"{r.tensor} (max abs error {r.max_abs:.3e}, max rel error {r.max_rel:.3e}). ")
        if i == 0:
            msg += ("It is the first tensor checked: look at the inputs, the parameters and the "
                    "settings in meta (layers, loss, optimizer).")
        else:
            msg += (f"The tensor computed just before it, {self[i - 1].tensor}, still agrees: the "
                    f"difference arises between the two.")
        return msg


# ------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------

def _json_value(v):
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(e) for e in v]
    if isinstance(v, dict):
        return {str(k): _json_value(e) for k, e in v.items()}
    return v


def rule_settings(rule, requested: dict | None = None) -> dict:
    """Every constructor option of ``rule`` (its ``OPTIONS``) with the value in effect after
    ``setup`` (e.g. CCL's ``form`` 'auto' resolved to 'mlp'), followed by the descriptive
    entries of ``rule.config()`` that are not options. This is ``meta["loss"]``."""
    cls = type(rule)
    options = getattr(cls, "OPTIONS", {}) or {}
    requested = dict(requested or {})
    out = {}
    for name, spec in options.items():
        default = spec[1]
        value = getattr(rule, name, None)
        if value is None or callable(value):
            value = requested.get(name, default)
        out[name] = _json_value(value)
    for k, v in rule.config().items():
        if k != "rule" and k not in out:
            out[k] = _json_value(v)
    return out


def optimizer_settings(rule_name: str, kind: str, data, rule, model, overrides=None) -> dict:
    """``meta["optimizer"]``: the rule's training defaults for this model kind and dataset (as
    ``ccledu train`` would use them), overridden by ``overrides``; one entry per group."""
    from .train import BASE_DEFAULTS

    cls = rule_class(rule_name)
    merged = dict(BASE_DEFAULTS)
    merged.update({k: v for k, v in cls.defaults(kind, data).items() if k != "rule_options"})
    merged["step"] = 0
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k in ("lr", "momentum", "weight_decay", "clip"):
            merged[f"{k}_forward"] = merged[f"{k}_feedback"] = v
        elif k in _OPT_FIELDS:
            merged[k] = v
        else:
            raise ValueError(f"unknown optimizer setting {k!r}; valid: lr, momentum, weight_decay, "
                             f"clip, {', '.join(_OPT_FIELDS)}")
    groups = []
    for name, params in rule.param_groups(model).items():
        sfx = "forward" if name == "forward" else "feedback"
        groups.append({
            "name": name, "params": list(params),
            "lr": float(merged[f"lr_{sfx}"]), "momentum": float(merged[f"momentum_{sfx}"]),
            "weight_decay": float(merged[f"weight_decay_{sfx}"]),
            "clip": float(merged[f"clip_{sfx}"] or 0.0), "centralize": bool(merged["centralize"]),
        })
    return {"kind": "sgd", "step": int(merged["step"]), "warmup": int(merged["warmup"] or 0),
            "groups": groups, "order": list(UPDATE_ORDER)}


def _make_optimizer(opt_meta: dict, model, rule):
    from .optim import Optimizer, ParamGroup

    live = dict(model.parameters())
    live.update(rule.parameters())
    groups = []
    for g in opt_meta["groups"]:
        params = {}
        for p in g["params"]:
            if p not in live:
                raise TraceError(f"meta.optimizer group {g.get('name')!r} lists {p!r}, which is not "
                                 f"a trainable parameter of this network/rule ({sorted(live)})")
            params[p] = live[p]
        groups.append(ParamGroup(str(g["name"]), params, lr=float(g["lr"]),
                                 momentum=float(g["momentum"]), weight_decay=float(g["weight_decay"]),
                                 clip=float(g["clip"]), centralize=bool(g["centralize"])))
    missing = sorted(set(live) - {p for g in opt_meta["groups"] for p in g["params"]})
    if missing:
        raise TraceError(f"meta.optimizer puts no group in charge of {missing}")
    opt = Optimizer(groups, warmup=int(opt_meta["warmup"]))
    opt.step_count = int(opt_meta["step"])
    return opt


# ------------------------------------------------------------------------------------------------
# One step, every tensor named
# ------------------------------------------------------------------------------------------------

def _host(a, dtype=None):
    out = np.array(to_numpy(a), copy=True)
    return out.astype(dtype) if dtype is not None and out.dtype.kind == "f" else out


def all_parameters(model, rule) -> dict:
    """name -> live array: forward.*, then the rule's trainable (feedback.*) and fixed (fixed.*)."""
    out = dict(model.parameters())
    out.update(rule.parameters())
    out.update(rule.buffers())
    return out


def _grad_order(rule_name: str, model, names) -> list:
    """Gradient names in the order the rule computes them (weight before bias)."""
    L = len(model.blocks)

    def fw(l):
        return [n for n in (f"forward.{l}.weight", f"forward.{l}.bias") if n in names]

    if rule_name == "ccl":
        order = fw(L - 1)                                    # cross-entropy first
        for l in range(L):                                   # then pair l: W_{l-1}, V_l
            order += (fw(l - 1) if l > 0 else []) + [n for n in (f"feedback.{l}.weight",) if n in names]
    elif rule_name == "ff":
        order = fw(L - 1) + [n for l in range(L - 1) for n in fw(l)]   # head, then blocks 0..
    else:
        order = [n for l in range(L - 1, -1, -1) for n in fw(l)]       # the error travels down
    return order + [n for n in names if n not in order]


def run_step(model, rule, x, y, opt_meta: dict, negative_labels=None) -> tuple[dict, dict]:
    """Run one step of ``rule`` and the optimiser on device arrays x, y.

    Returns (inputs, computed): ``inputs`` holds what the step drew (FF: ``input/negative_labels``),
    ``computed`` every checked tensor as host arrays, in computation order.
    """
    dtype = model.dtype
    out = {}
    inputs = {}
    if rule.name == "ff":
        xp = get_array_module(x)
        C = model.num_classes
        drawn = []
        if negative_labels is None:
            original = rule.negatives

            def capture(*args, **kwargs):           # record the labels the step draws
                labels = original(*args, **kwargs)
                drawn.append(labels)
                return labels
            rule.negatives = capture
            try:
                res = rule.local_step(model, x, y)
            finally:
                del rule.negatives
            y_neg = drawn[-1]
        else:
            y_neg = asarray(negative_labels, dtype=np.int64,
                            backend="cupy" if xp is not np else "numpy")
            res = rule.local_step(model, x, y, y_neg)
        inputs["input/negative_labels"] = _host(y_neg).astype(np.int64)
        out["overlay/positive"] = _host(rule.overlay(x, rule.one_hot(y, C, x)))
        out["overlay/negative"] = _host(rule.overlay(x, rule.one_hot(y_neg, C, x)))
        out["overlay/neutral"] = _host(rule.neutral(x, C))
    else:
        res = rule.step(model, x, y)
    for l, a in enumerate(model.activations):
        out[f"act/{l}"] = _host(a)
    if rule.name == "ccl":
        for l in range(len(rule.signals) - 1, -1, -1):
            out[f"signal/{l}"] = _host(rule.signals[l])
    for k, v in res.terms.items():
        out[f"loss/{k}"] = _host(v, dtype).reshape(())
    out["loss/total"] = _host(res.loss, dtype).reshape(())
    order = _grad_order(rule.name, model, list(res.grads))
    for n in order:
        out[f"grad/{n}"] = _host(res.grads[n])
    opt = _make_optimizer(opt_meta, model, rule)
    opt.step(res.grads)
    live = all_parameters(model, rule)
    for n in order:
        out[f"after/{n}"] = _host(live[n])
    return inputs, out


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------

def _data_batch(name: str, n: int, input_shape, dtype):
    """The first n examples of the official training set of ``name``, normalised and shaped
    for a model with ``input_shape`` (flattened for an MLP, zero-padded images for a larger CNN)."""
    from . import data as D

    ds = D.load_dataset(name)
    info = ds.info
    if n > len(ds.train_y):
        raise ValueError(f"{name} has only {len(ds.train_y)} training examples")
    x = ds.train_x[:n]
    if len(input_shape) == 3 and tuple(input_shape[1:]) != tuple(x.shape[2:]):
        size = int(input_shape[1])
        h, w = x.shape[2:]
        if size < max(h, w):
            raise ValueError(f"the model takes {tuple(input_shape)} inputs, smaller than {name}'s "
                             f"{tuple(x.shape[1:])} images")
        top, left = (size - h) // 2, (size - w) // 2
        x = np.pad(x, ((0, 0), (0, 0), (top, size - h - top), (left, size - w - left)))
    x = D.normalize(x, info.mean, info.std, dtype)
    if len(input_shape) == 1:
        x = x.reshape(n, -1)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{name} examples have shape {tuple(x.shape[1:])}, the model takes "
                         f"{tuple(input_shape)}")
    return x, ds.train_y[:n].astype(np.int64)


def make_trace(rule: str, model_spec: str, batch_size: int, seed: int = 0, dtype: str = "float64",
               activation: str = "elu", data: str | None = None, rule_options: dict | None = None,
               optimizer: dict | None = None, bias: bool = False) -> tuple[dict, dict]:
    """Build everything and run one step; returns (meta, arrays) without writing a file.
    See :func:`write_trace` for the arguments."""
    dtype = str(resolve_dtype(dtype))
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}; choose one of {sorted(RULES)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    kind = parse_spec(model_spec, data)[0]
    cls = rule_class(rule)
    defaults = cls.defaults(kind, data) or {}
    requested = dict(defaults.get("rule_options", {}) or {})
    requested.update(rule_options or {})
    model = build_model(model_spec, data=data, activation=activation, bias=bias, seed=seed,
                        dtype=dtype)
    r = cls(**requested)
    r.setup(model, seed=seed)
    opt_meta = optimizer_settings(rule, kind, data, r, model, optimizer)
    if data is None:
        g = np.random.default_rng([int(seed), 0x7ACE])
        x_host = g.standard_normal((batch_size,) + model.input_shape).astype(dtype)
        y_host = g.integers(0, model.num_classes, size=batch_size).astype(np.int64)
    else:
        x_host, y_host = _data_batch(data, batch_size, model.input_shape, dtype)
    arrays = {"x": x_host, "y": y_host}
    for name, p in all_parameters(model, r).items():
        arrays[f"param/{name}"] = _host(p)
    inputs, computed = run_step(model, r, asarray(x_host, dtype=dtype), asarray(y_host), opt_meta)
    arrays.update(inputs)
    arrays.update(computed)
    loss = rule_settings(r, requested)
    meta = {
        "format": FORMAT, "rule": rule, "dtype": dtype, "seed": int(seed),
        "model": model_spec, "data": data, "activation": activation, "bias": bool(bias),
        "input_shape": list(model.input_shape), "num_classes": model.num_classes,
        "batch_size": batch_size, "layers": _json_value(model.spec()), "loss": loss,
        "optimizer": opt_meta, "tolerances": {"rtol": TOLERANCES[dtype][0], "atol": TOLERANCES[dtype][1]},
        "ccledu_version": __version__,
    }
    if rule == "ccl":
        meta["feedback_activation"] = loss.get("feedback_activation")
    if rule == "ff":
        meta["negative_labels"] = "input/negative_labels"
    return meta, arrays


def write_trace(path, rule: str, model_spec: str, batch_size: int, seed: int = 0,
                dtype: str = "float64", activation: str = "elu", data: str | None = None,
                rule_options: dict | None = None, optimizer: dict | None = None,
                bias: bool = False) -> dict:
    """Run one step of ``rule`` on a fresh model and write every tensor to ``path`` (``.npz``).

    rule: 'bp' | 'fa' | 'dfa' | 'ccl' | 'ff'. model_spec: a preset ('mlp-mnist') or a spec
    ('mlp:20-16-12-10', 'cnn:3x8x8-c4-c6-10'). The batch: N standard-normal inputs and uniform
    labels from ``default_rng([seed, 0x7ACE])``, or (``data``) the first N training examples of
    that dataset, normalised. Weights and the rule's own matrices come from ``seed``.
    rule_options: the rule's constructor options (over the rule's defaults for this model kind).
    optimizer: overrides of the optimiser settings (``lr``, ``lr_forward``, ``momentum_feedback``,
    ``clip``, ``centralize``, ``warmup``, ``step`` ...; the rest from the rule's training defaults).
    Returns meta.
    """
    meta, arrays = make_trace(rule, model_spec, batch_size, seed, dtype, activation, data,
                              rule_options, optimizer, bias)
    save(path, meta, arrays)
    return meta


def save(path, meta: dict, arrays: dict) -> None:
    """Write (meta, arrays) as a trace file: ``meta`` as a JSON string, arrays by name."""
    from .train import atomic_write

    payload = {"meta": np.array(json.dumps(meta, sort_keys=False))}
    payload.update({k: np.asarray(v) for k, v in arrays.items()})
    if os.path.isdir(path):
        raise ValueError(f"--out {path} is a folder; give the trace file's name (e.g. {path}/trace.npz)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {path}: the folder {parent} does not exist")
    atomic_write(path, lambda fh: np.savez(fh, **payload))   # all or nothing


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------

def _check(cond, msg):
    if not cond:
        raise TraceError(msg)


def _int_list(v, what):
    _check(isinstance(v, list) and v and all(isinstance(e, int) and e > 0 for e in v),
           f"meta.{what} must be a list of positive integers, got {v!r}")
    return tuple(v)


def _check_meta(meta: dict) -> None:
    _check(isinstance(meta, dict), "meta must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    _check(not missing, f"meta lacks the required key(s) {missing}")
    _check(meta["format"] == FORMAT,
           f"meta.format is {meta['format']!r}; this version of ccledu reads {FORMAT!r}")
    _check(meta["rule"] in RULES, f"unknown rule {meta['rule']!r} in meta.rule; known rules: "
                                  f"{sorted(RULES)}")
    _check(meta["dtype"] in TOLERANCES, f"meta.dtype must be 'float32' or 'float64', got {meta['dtype']!r}")
    _check(isinstance(meta["seed"], int), f"meta.seed must be an integer, got {meta['seed']!r}")
    _int_list(meta["input_shape"], "input_shape")
    _check(isinstance(meta["num_classes"], int) and meta["num_classes"] >= 2,
           f"meta.num_classes must be an integer >= 2, got {meta['num_classes']!r}")
    _check(isinstance(meta["batch_size"], int) and meta["batch_size"] >= 1,
           f"meta.batch_size must be a positive integer, got {meta['batch_size']!r}")
    _check(isinstance(meta["layers"], list) and meta["layers"]
           and all(isinstance(d, dict) for d in meta["layers"]),
           "meta.layers must be a non-empty list of layer objects")
    _check(isinstance(meta["loss"], dict), "meta.loss must be an object of rule settings")
    opt = meta["optimizer"]
    _check(isinstance(opt, dict), "meta.optimizer must be an object")
    for k in ("step", "warmup", "groups"):
        _check(k in opt, f"meta.optimizer lacks {k!r}")
    _check(isinstance(opt["step"], int) and opt["step"] >= 0, "meta.optimizer.step must be an integer >= 0")
    _check(isinstance(opt["warmup"], int) and opt["warmup"] >= 0,
           "meta.optimizer.warmup must be an integer >= 0")
    _check(isinstance(opt["groups"], list) and opt["groups"], "meta.optimizer.groups must be a non-empty list")
    for i, g in enumerate(opt["groups"]):
        _check(isinstance(g, dict), f"meta.optimizer.groups[{i}] must be an object")
        for k in ("name", "params") + _GROUP_KEYS:
            _check(k in g, f"meta.optimizer.groups[{i}] lacks {k!r}")
        for k in ("lr", "momentum", "weight_decay", "clip"):
            _check(isinstance(g[k], (int, float)) and not isinstance(g[k], bool) and math.isfinite(g[k])
                   and g[k] >= 0, f"meta.optimizer.groups[{i}].{k} must be a number >= 0, got {g[k]!r}")
        _check(isinstance(g["params"], list), f"meta.optimizer.groups[{i}].params must be a list")
    fa = meta.get("feedback_activation")
    if fa is not None and "feedback_activation" in meta["loss"]:
        _check(fa == meta["loss"]["feedback_activation"],
               f"meta.feedback_activation ({fa!r}) disagrees with meta.loss.feedback_activation "
               f"({meta['loss']['feedback_activation']!r})")


def build_rule(meta: dict):
    """The rule of ``meta``: ``meta.rule`` with the entries of ``meta.loss`` that are options
    of that rule's constructor."""
    cls = rule_class(meta["rule"])
    options = getattr(cls, "OPTIONS", {}) or {}
    kwargs = {k: v for k, v in meta["loss"].items() if k in options}
    if meta["rule"] == "ccl" and meta.get("feedback_activation") is not None:
        kwargs.setdefault("feedback_activation", meta["feedback_activation"])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise TraceError(f"meta.loss does not give valid {meta['rule']} settings: {e}") from None


def rebuild(meta: dict):
    """(model, rule) from meta: the network from ``meta.layers`` and the rule set up on it."""
    dtype = meta["dtype"]
    try:
        model = build_from_layers(meta["layers"], tuple(meta["input_shape"]), meta["num_classes"],
                                  seed=meta["seed"], dtype=dtype)
    except (ValueError, KeyError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise TraceError(f"meta.layers does not describe a network for input "
                         f"{tuple(meta['input_shape'])} and {meta['num_classes']} classes: {msg}") from None
    rule = build_rule(meta)
    try:
        rule.setup(model, seed=meta["seed"])
    except (ValueError, RuntimeError) as e:
        raise TraceError(f"rule {meta['rule']!r} cannot run on the network of meta.layers: {e}") from None
    return model, rule


def expected_shapes(meta: dict, model=None, rule=None) -> dict:
    """name -> shape of every array a complete trace of ``meta`` holds (what ``layers`` implies)."""
    if model is None or rule is None:
        model, rule = rebuild(meta)
    N, C = meta["batch_size"], model.num_classes
    shapes = {"x": (N,) + model.input_shape, "y": (N,)}
    params = all_parameters(model, rule)
    for n, p in params.items():
        shapes[f"param/{n}"] = tuple(p.shape)
    trainable = dict(model.parameters())
    trainable.update(rule.parameters())
    ff = meta["rule"] == "ff"
    L = len(model.blocks)
    if ff:
        shapes["input/negative_labels"] = (N,)
        for k in ("positive", "negative", "neutral"):
            shapes[f"overlay/{k}"] = (N,) + model.input_shape
    for l, s in enumerate(model.shapes):
        rows = 2 * N if ff and l < L - 1 else N
        shapes[f"act/{l}"] = (rows,) + tuple(s)
    if meta["rule"] == "ccl":
        ins = [model.input_shape] + list(model.shapes)
        for l in range(L, -1, -1):
            shapes[f"signal/{l}"] = (C,) + tuple(ins[l]) if l < L else (C, C)
    for n, p in trainable.items():
        shapes[f"grad/{n}"] = tuple(p.shape)
        shapes[f"after/{n}"] = tuple(p.shape)
    return shapes


def _limits(limits) -> dict:
    out = dict(LIMITS)
    out.update(limits or {})
    return out


def _open_zip(path):
    """The archive as a ``zipfile.ZipFile`` (the caller closes it), or TraceError."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04" and magic != b"PK\x05\x06":
            raise TraceError(f"{path}: not a trace file: a trace is a NumPy .npz (zip) archive, "
                             f"and this file does not start like one")
        return zipfile.ZipFile(path)
    except TraceError:
        raise
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TraceError(f"{path}: is a directory, not a trace file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise TraceError(f"{path}: not a trace file (a NumPy .npz archive): {e}") from None


def _zip_error(path, name, e):
    return TraceError(f"{path}: entry {name!r} cannot be read ({type(e).__name__}: {e}); the "
                      f"archive is damaged")


_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               NotImplementedError, RuntimeError, zlib.error, struct.error, KeyError,
               OverflowError, SyntaxError, TypeError)


def _headers(path, zf, limits) -> dict:
    """name -> (ZipInfo, shape, dtype) from each ``.npy`` member's header; no data is read.

    Members whose name does not end in ``.npy`` are returned with shape None (they are listed
    as unknown and never read)."""
    infos = zf.infolist()
    _check(len(infos) <= limits["entries"],
           f"{path}: the archive holds {len(infos)} entries, more than the limit of "
           f"{limits['entries']} (ccledu.trace.LIMITS['entries'])")
    out = {}
    for info in infos:
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        _check(name not in out, f"{path}: the archive holds two entries named {name!r}; a trace "
                                f"names each tensor once")
        if not info.filename.endswith(".npy") or info.is_dir():
            out[name] = (info, None, None)
            continue
        try:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
        except _ZIP_ERRORS as e:
            raise _zip_error(path, name, e) from None
        _check(not dtype.hasobject, f"{path}: entry {name!r} holds Python objects ({dtype}); a "
                                    f"trace holds numbers only (and meta a string)")
        out[name] = (info, tuple(int(d) for d in shape), dtype)
    return out


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _load_entry(path, zf, name, info):
    """Read one member's data (its header was already checked); the stream must end there."""
    try:
        with zf.open(info) as f:
            a = np.lib.format.read_array(f, allow_pickle=False)
            if f.read(1):                          # reading on to the end also checks the CRC
                raise ValueError("bytes after the array data")
    except _ZIP_ERRORS as e:
        raise _zip_error(path, name, e) from None
    return a


def _read_meta(path, zf, headers, limits) -> dict:
    if "meta" not in headers:
        raise TraceError(f"{path}: no 'meta' entry: not a ccledu trace (its arrays: "
                         f"{sorted(headers)[:8]})")
    info, shape, dtype = headers["meta"]
    _check(shape == () and dtype is not None and dtype.kind in "US",
           f"{path}: meta is not valid JSON: meta must be a 0-d string array, got "
           f"{dtype} {shape}")
    _check(_nbytes(shape, dtype) <= limits["meta_bytes"],
           f"{path}: meta is {_nbytes(shape, dtype)} bytes, more than the limit of "
           f"{limits['meta_bytes']} (ccledu.trace.LIMITS['meta_bytes'])")
    raw = _load_entry(path, zf, "meta", info)
    try:
        text = raw.item()
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        meta = json.loads(text)
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise TraceError(f"{path}: meta is not valid JSON: {e}") from None
    return meta


def declared_size(meta: dict) -> tuple[int, int]:
    """(forward parameters, step elements) that ``meta`` declares, computed from
    ``meta.layers``, ``input_shape``, ``batch_size`` and ``num_classes`` alone (nothing is
    built). See :data:`LIMITS` for what is counted. Raises TraceError for a layer entry whose
    sizes are not positive integers."""
    N, C = int(meta["batch_size"]), int(meta["num_classes"])
    shape = tuple(int(v) for v in meta["input_shape"])
    params, acts, cols, inputs = 0, math.prod(shape), 0, 0

    def pos(d, key, default=None, zero_ok=False):
        v = d.get(key, default)
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if zero_ok else v > 0)
        _check(ok, f"meta.layers: {key!r} of layer {d} must be a "
                   f"{'non-negative' if zero_ok else 'positive'} integer")
        return v

    for d in meta["layers"]:
        inputs += math.prod(shape)
        fan_in, fan_out = pos(d, "in"), pos(d, "out")
        if d.get("kind") == "conv2d":
            k, st, pad = pos(d, "kernel", 3), pos(d, "stride", 1), pos(d, "padding", 0, True)
            pool = pos(d, "pool", 0, True) if d.get("pool") is not None else 0
            h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
            ho, wo = max((h + 2 * pad - k) // st + 1, 1), max((w + 2 * pad - k) // st + 1, 1)
            params += fan_out * fan_in * k * k
            cols += fan_in * k * k * ho * wo
            if pool:
                ho, wo = max(ho // pool, 1), max(wo // pool, 1)
            shape = (fan_out, ho, wo)
        else:
            params += fan_out * fan_in
            shape = (fan_out,)
        acts += math.prod(shape)
    return params, N * (acts + cols) + C * (C + inputs)


def _check_size(meta: dict, limits: dict) -> None:
    params, elements = declared_size(meta)
    _check(params <= limits["parameters"],
           f"meta.layers declares {params} forward parameters, more than the limit of "
           f"{limits['parameters']} (ccledu.trace.LIMITS['parameters']); ccledu refuses to "
           f"build it. Trace a smaller network, or raise the limit with "
           f"verify_trace(..., limits={{'parameters': ...}})")
    _check(elements <= limits["step_elements"],
           f"meta declares a step over {elements} array elements (batch {meta['batch_size']}, "
           f"layers, {meta['num_classes']} classes), more than the limit of "
           f"{limits['step_elements']} (ccledu.trace.LIMITS['step_elements']). Use a smaller "
           f"batch, or raise the limit with verify_trace(..., limits={{'step_elements': ...}})")


#: entry prefixes whose arrays hold floating-point values of meta.dtype
_FLOAT_PREFIXES = ("param/", "overlay/", "act/", "signal/", "loss/", "grad/", "after/")


class TraceArrays(dict):
    """name -> array of a trace's loaded entries; ``skipped`` lists the entries that were
    recognised as no part of the format and so were neither loaded nor checked."""

    skipped: list = []


def read_trace(path, limits: dict | None = None) -> tuple[dict, dict]:
    """Load and validate a trace: returns (meta, arrays) with arrays as NumPy arrays by name.

    Memory is bounded by what the file is allowed to declare, never by what it claims:

    1. every member's ``.npy`` header (shape, dtype) is read, no data;
    2. ``meta`` (at most ``LIMITS['meta_bytes']``) is parsed and checked, and the architecture
       it declares is measured from ``meta.layers`` alone (:func:`declared_size`) and refused
       beyond ``LIMITS['parameters']`` / ``LIMITS['step_elements']``;
    3. every known entry's header shape must equal what meta implies, and its dtype must be
       ``meta.dtype`` (floating tensors) or an integer type (``y``, negative labels);
    4. the decompressed total of the entries to load is capped at ``LIMITS['total_bytes']``;
    5. only then is data read. Entries that are no part of the format are listed in
       ``arrays.skipped`` and never read.

    ``limits`` overrides entries of :data:`LIMITS`. Raises :class:`TraceError` for a file that
    is not an ``.npz`` archive, lacks ``meta`` or has bad JSON in it, names another format or
    an unknown rule, lacks a required key or array (``x``, ``y``, every ``param/*``; FF:
    ``input/negative_labels``), holds arrays whose shapes or dtypes do not match what meta
    implies, holds NaN/inf in an input without saying why (meta key ``nonfinite``), or goes
    beyond a limit.
    """
    limits = _limits(limits)
    zf = _open_zip(path)
    with zf:
        headers = _headers(path, zf, limits)
        meta = _read_meta(path, zf, headers, limits)
        _check_meta(meta)
        _check_size(meta, limits)
        model, rule = rebuild(meta)
        shapes = expected_shapes(meta, model, rule)
        required = ["x", "y"] + [k for k in shapes if k.startswith("param/")]
        if meta["rule"] == "ff":
            required.append("input/negative_labels")
        missing = [k for k in required if k not in headers]
        _check(not missing, f"{path}: the trace lacks the required array(s) {missing}")
        dtype = meta["dtype"]
        load, skipped = [], []
        for name, (info, shape, dt) in headers.items():
            if name == "meta":
                continue
            if name in shapes:
                _check(shape is not None, f"{path}: {name} is not a .npy entry")
                _check(shape == shapes[name],
                       f"{path}: {name} has shape {shape}, but meta (layers, input_shape, "
                       f"num_classes, batch_size) implies {shapes[name]}")
            elif name.startswith("loss/") and shape is not None:
                _check(math.prod(shape) == 1,
                       f"{path}: {name} must be a scalar, got shape {shape}")
            elif name.split("/")[0] in ("param", "grad", "after"):
                raise TraceError(f"{path}: {name} is not a parameter of the network that "
                                 f"meta.layers and rule {meta['rule']!r} describe (they have "
                                 f"{sorted(k[6:] for k in shapes if k.startswith('param/'))})")
            else:
                skipped.append(name)
                continue
            if name in ("y", "input/negative_labels"):
                _check(dt.kind in "iu", f"{path}: {name} must hold integer labels, got {dt}")
            elif name == "x" or name.startswith(_FLOAT_PREFIXES):
                _check(dt.kind == "f" and dt.name == dtype,
                       f"{path}: {name} is {dt}, but meta.dtype says {dtype}: every "
                       f"floating-point tensor of a trace has meta.dtype (its tolerances "
                       f"depend on it); fix meta.dtype or the arrays")
            load.append(name)
        total = sum(_nbytes(headers[n][1], headers[n][2]) for n in load)
        _check(total <= limits["total_bytes"],
               f"{path}: the entries to load hold {total} bytes, more than the limit of "
               f"{limits['total_bytes']} (ccledu.trace.LIMITS['total_bytes'])")
        arrays = TraceArrays()
        arrays.skipped = sorted(skipped)
        for name in load:
            arrays[name] = _load_entry(path, zf, name, headers[name][0])
    C = meta["num_classes"]
    reason = meta.get(NONFINITE_KEY)
    allow_nonfinite = isinstance(reason, str) and reason.strip() != ""
    for name, a in arrays.items():
        if name in ("y", "input/negative_labels"):
            _check(a.size == 0 or (a.min() >= 0 and a.max() < C),
                   f"{path}: {name} holds labels outside 0..{C - 1}")
        elif (name == "x" or name.startswith("param/")) and not allow_nonfinite:
            _check(bool(np.all(np.isfinite(a))),
                   f"{path}: input {name} holds NaN or inf; a trace with non-finite values "
                   f"must say why in meta.{NONFINITE_KEY} (a string), and then every tensor "
                   f"must match bit for bit")
    return meta, arrays


# ------------------------------------------------------------------------------------------------
# Verifying
# ------------------------------------------------------------------------------------------------

def compare(name: str, theirs, ours, rtol: float, atol: float,
            allow_nonfinite: bool = False) -> Row:
    """Row for one tensor: max |theirs − ours|, max relative error, and whether every element
    satisfies |theirs − ours| <= atol + rtol·|ours|. The relative error of an element is
    |theirs − ours| / max(|ours|, atol/rtol) (so elements near zero are judged by atol).

    NaN or inf on either side is a mismatch (error reported as inf), even when both sides hold
    it at the same place; only with ``allow_nonfinite`` (the file says why, see
    :data:`NONFINITE_KEY`) does a tensor with non-finite elements agree, and then only when both
    sides are equal bit for bit in the file's dtype."""
    a = np.asarray(theirs)
    if a.shape != np.shape(ours):
        return Row(name, math.inf, math.inf, False)
    if a.size == 0:
        return Row(name, 0.0, 0.0, True)
    b = np.asarray(ours)
    finite = np.isfinite(a.astype(np.float64)) & np.isfinite(b.astype(np.float64))
    if not finite.all():
        same = (a.dtype.kind == "f" and np.ascontiguousarray(a).tobytes()
                == np.ascontiguousarray(b.astype(a.dtype)).tobytes())
        if allow_nonfinite and same:
            return Row(name, 0.0, 0.0, True)
        return Row(name, math.inf, math.inf, False)
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    diff = np.abs(a - b)
    floor = atol / rtol if rtol > 0 else max(atol, np.finfo(np.float64).tiny)
    rel = diff / np.maximum(np.abs(b), floor)
    ok = bool(np.all(diff <= atol + rtol * np.abs(b)))
    return Row(name, float(diff.max()), float(rel.max()), ok)


def check_tolerance(value, what: str) -> float:
    """``value`` as a float, when it is a finite number >= 0; else ValueError naming ``what``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return v


def verify_trace(path, rtol: float | None = None, atol: float | None = None,
                 limits: dict | None = None) -> Report:
    """Recompute the step a trace describes and compare every tensor it holds.

    The network comes from ``meta.layers``, the rule from ``meta.rule`` and the constructor
    options in ``meta.loss``, the optimiser from ``meta.optimizer``; all ``param/*`` are loaded
    (forward weights into the model, ``feedback.*`` / ``fixed.*`` into the rule), the step runs
    on the file's ``x`` and ``y`` (FF: with the file's negative labels), and each ``overlay/*``,
    ``act/*``, ``signal/*``, ``loss/*``, ``grad/*``, ``after/*`` in the file is compared with
    ccledu's value. Tolerances default to :data:`TOLERANCES` of ``meta.dtype``; given ones must
    be finite and >= 0 (ValueError otherwise). NaN/inf is a mismatch unless the file says why
    (``meta.nonfinite``) and both sides agree bit for bit (:func:`compare`). ``limits``: see
    :func:`read_trace`. Returns a :class:`Report` (list of rows in computation order); raises
    :class:`TraceError` for a malformed file and for one that checks nothing.
    """
    rtol = None if rtol is None else check_tolerance(rtol, "rtol")
    atol = None if atol is None else check_tolerance(atol, "atol")
    meta, arrays = read_trace(path, limits=limits)
    dtype = meta["dtype"]
    d_rtol, d_atol = TOLERANCES[dtype]
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    reason = meta.get(NONFINITE_KEY)
    allow_nonfinite = isinstance(reason, str) and reason.strip() != ""
    model, rule = rebuild(meta)
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    forward = {k: v for k, v in params.items() if k.startswith("forward.")}
    model.load_parameters({k: asarray(v, dtype=dtype) for k, v in forward.items()})
    own = dict(rule.parameters())
    own.update(rule.buffers())
    for k, v in params.items():
        if k in own:
            xp = get_array_module(own[k])
            own[k][...] = xp.asarray(np.asarray(v, dtype=dtype))
    x = asarray(np.asarray(arrays["x"], dtype=dtype), dtype=dtype)
    y = asarray(np.asarray(arrays["y"], dtype=np.int64))
    try:
        _, computed = run_step(model, rule, x, y, meta["optimizer"],
                               negative_labels=arrays.get("input/negative_labels"))
    except TraceError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise TraceError(f"cannot recompute the step from this trace: {e}") from None
    checked_prefixes = ("overlay/", "act/", "signal/", "loss/", "grad/", "after/")
    rows, missing = [], []
    for name, ours in computed.items():
        if name in arrays:
            rows.append(compare(name, arrays[name], ours, rtol, atol, allow_nonfinite))
        else:
            missing.append(name)
    unknown = sorted([k for k in arrays if k.startswith(checked_prefixes) and k not in computed]
                     + list(getattr(arrays, "skipped", [])))
    if not rows:
        raise TraceError(f"{path}: nothing to compare: the file holds none of the tensors ccledu "
                         f"computes for this step ({', '.join(list(computed)[:4])}, ...); a "
                         f"trace must hold at least one act/, signal/, loss/, grad/ or after/ "
                         f"tensor to check anything")
    return Report(rows, missing, unknown, rtol, atol, meta)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def format_report(report: Report) -> str:
    width = max([len("tensor")] + [len(r.tensor) for r in report])
    lines = [f"{'tensor':<{width}}  {'max abs error':>13}  {'max rel error':>13}  ok"]
    for r in report:
        lines.append(f"{r.tensor:<{width}}  {r.max_abs:13.3e}  {r.max_rel:13.3e}  "
                     f"{'yes' if r.ok else 'NO'}")
    if report.missing:
        lines.append(f"not in the file (not checked): {', '.join(report.missing)}")
    if report.unknown:
        lines.append(f"not computed by ccledu (not checked): {', '.join(report.unknown)}")
    return "\n".join(lines)


def cmd_trace(args) -> int:
    from .cli import collect_rule_options

    opts = collect_rule_options(args, args.rule)
    optimizer = {k: getattr(args, k) for k in ("lr",) + _OPT_FIELDS if getattr(args, k, None) is not None}
    meta = write_trace(args.out, args.rule, args.model, args.batch_size, seed=args.seed,
                       dtype=args.dtype, activation=args.activation, data=args.data,
                       rule_options=opts, optimizer=optimizer, bias=bool(args.bias))
    with np.load(args.out, allow_pickle=False) as z:
        n = len(z.files) - 1
    print(f"wrote {args.out}: rule {meta['rule']}, {len(meta['layers'])} blocks, batch "
          f"{meta['batch_size']}, {meta['dtype']}, {n} arrays")
    return 0


def cmd_verify(args) -> int:
    report = verify_trace(args.file, rtol=args.rtol, atol=args.atol)
    print(format_report(report))
    if report.ok:
        print(f"OK: {report.summary()}")
        return 0
    print(f"MISMATCH: {report.summary()}")
    return 1


def add_parser(sub) -> None:
    """Register ``ccledu trace`` and ``ccledu verify``."""
    from .cli import add_rule_option_flags

    p = sub.add_parser("trace", help="write a trace file: one training step, every tensor",
                       description="Run one step of a learning rule on a fresh network and write "
                                   "every tensor (parameters, activations, signals, losses, "
                                   "gradients, parameters after the update) to an .npz trace file "
                                   "(format: docs/trace-format.md).")
    p.add_argument("--rule", required=True, choices=sorted(RULES), help="learning rule")
    p.add_argument("--model", required=True,
                   help="a preset (mlp-mnist, cnn-cifar10, ...) or a spec: mlp:20-16-12-10, "
                        "cnn:3x8x8-c4-c6-10")
    from .cli import ranged_type
    from .train import RANGES, Range

    nonneg = Range(float, 0)
    ranges = {"lr": nonneg, "momentum": Range(float, 0, 1, hi_open=True), "weight_decay": nonneg,
              "clip": nonneg, "warmup": Range(int, 0), "step": Range(int, 0)}
    p.add_argument("--batch-size", type=ranged_type(RANGES["batch_size"]), default=8,
                   help="batch size N, an integer >= 1 (default 8)")
    p.add_argument("--seed", type=ranged_type(RANGES["seed"]), default=0,
                   help="seed of weights, rule matrices, batch, an integer >= 0 (default 0)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    p.add_argument("--out", required=True, help="file to write (.npz)")
    p.add_argument("--activation", default="elu", help="hidden activation (default elu)")
    p.add_argument("--bias", action="store_true", help="give every layer a bias (default off)")
    p.add_argument("--data", default=None,
                   help="take the first N training examples of this dataset (mnist, fashion-mnist, "
                        "cifar10, cifar100) instead of random normal inputs")
    g = p.add_argument_group("optimiser (default: the rule's training defaults for the model kind)")
    g.add_argument("--lr", type=ranged_type(ranges["lr"]), default=None,
                   help="learning rate of every group, a finite number >= 0")
    for f in _OPT_FIELDS:
        if f == "centralize":
            g.add_argument("--centralize", action=argparse.BooleanOptionalAction,
                           default=None, help="gradient centralization")
        else:
            rng = ranges[next(k for k in ranges if f == k or f.startswith(k + "_"))]
            helptext = "global step index of this update (warm-up)" if f == "step" else None
            g.add_argument("--" + f.replace("_", "-"), dest=f, type=ranged_type(rng), default=None,
                           help=(helptext + "; " if helptext else "") + rng.describe())
    add_rule_option_flags(p)
    p.set_defaults(func=cmd_trace)

    v = sub.add_parser("verify", help="recompute a trace file with ccledu and compare",
                       description="Rebuild the network and the rule a trace describes, recompute "
                                   "the step with ccledu and compare every tensor. Exit status 0: "
                                   "all agree; 1: a tensor differs; 2: the file is malformed.")
    v.add_argument("file", help="trace file (.npz)")
    v.add_argument("--rtol", type=_tolerance_arg, default=None,
                   help="relative tolerance, a finite number >= 0 (default 1e-7 for float64 "
                        "traces, 1e-4 for float32)")
    v.add_argument("--atol", type=_tolerance_arg, default=None,
                   help="absolute tolerance, a finite number >= 0 (default 1e-10 for float64 "
                        "traces, 1e-5 for float32)")
    v.set_defaults(func=_guarded(cmd_verify))


def _tolerance_arg(text):
    try:
        return check_tolerance(text, "the tolerance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _guarded(fn):
    """Turn any error while reading or recomputing a file into one ``ccledu: error:`` line."""
    def run(args):
        try:
            return fn(args)
        except TraceError as e:
            print(f"ccledu: error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # noqa: BLE001 - a malformed file must never print a traceback
            print(f"ccledu: error: cannot verify {args.file}: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
    return run
