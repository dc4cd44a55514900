"""Recording one step: the optimiser settings a trace states, running the step with every
tensor named (:func:`run_step`), and writing a fresh trace (:func:`make_trace`,
:func:`write_trace`)."""
from __future__ import annotations

import numpy as np

from .. import __version__
from ..backend import asarray, resolve_dtype
from ..models import build_model, parse_spec
from ..rules import RULES, rule_class
from ..optim import group_settings
from ..presets import PROJECT
from .format import FORMAT, TOLERANCES, TraceError, all_parameters, host, json_value, save

#: ε in the clipping coefficient clip / (‖g‖ + ε) (as torch.nn.utils.clip_grad_norm_)
CLIP_EPS = 1e-6

#: optimiser settings, as TrainConfig fields, that write_trace accepts (plus "lr", "momentum",
#: "weight_decay", "clip" for both groups at once, and "step")
OPT_FIELDS = ("lr_forward", "lr_feedback", "momentum_forward", "momentum_feedback",
               "weight_decay_forward", "weight_decay_feedback", "clip_forward", "clip_feedback",
               "centralize", "warmup", "step")

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
        out[name] = json_value(value)
    for k, v in rule.config().items():
        if k != "rule" and k not in out:
            out[k] = json_value(v)
    return out


def optimizer_settings(rule_name: str, kind: str, data, rule, model, overrides=None) -> dict:
    """``meta["optimizer"]``: the rule's training defaults for this model kind and dataset (as
    ``ccledu train`` would use them), overridden by ``overrides``; one entry per group."""
    cls = rule_class(rule_name)
    merged = dict(PROJECT)
    merged.update({k: v for k, v in cls.defaults(kind, data).items() if k != "rule_options"})
    merged["step"] = 0
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k in ("lr", "momentum", "weight_decay", "clip"):
            merged[f"{k}_forward"] = merged[f"{k}_feedback"] = v
        elif k in OPT_FIELDS:
            merged[k] = v
        else:
            raise ValueError(f"unknown optimizer setting {k!r}; valid: lr, momentum, weight_decay, "
                             f"clip, {', '.join(OPT_FIELDS)}")
    groups = []
    for name, params in rule.param_groups(model).items():
        g = group_settings(name, merged)
        groups.append({"name": name, "params": list(params),
                       **{k: g[k] for k in ("lr", "momentum", "weight_decay", "clip", "centralize")}})
    return {"kind": "sgd", "step": int(merged["step"]), "warmup": int(merged["warmup"] or 0),
            "groups": groups, "order": list(UPDATE_ORDER)}


def make_optimizer(opt_meta: dict, model, rule):
    from ..optim import Optimizer, ParamGroup

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
    grouped = {p for params in rule.param_groups(model).values() for p in params}
    missing = sorted(grouped - {p for g in opt_meta["groups"] for p in g["params"]})
    if missing:
        raise TraceError(f"meta.optimizer puts no group in charge of {missing}")
    opt = Optimizer(groups, warmup=int(opt_meta["warmup"]))
    opt.step_count = int(opt_meta["step"])
    return opt


def run_step(model, rule, x, y, opt_meta: dict, inputs=None, negative_labels=None) -> tuple[dict, dict]:
    """Run one step of ``rule`` and the optimiser on device arrays x, y.

    ``inputs``: the recorded draws to replay (name -> host array, without the ``input/``
    prefix; None draws afresh). Returns (inputs, computed): ``inputs`` holds what the step
    drew (``input/<name>``), ``computed`` every checked tensor as host arrays, in computation
    order: the rule's tensors (:meth:`Rule.trace_tensors`), ``loss/*``, ``grad/*`` (parameters
    the optimiser updates) and ``after/*`` (every trainable parameter, including those the
    rule updates inside its step). ``negative_labels``: the older spelling of
    ``inputs={"negative_labels": ...}`` (kept for existing callers).
    """
    dtype = model.dtype
    if negative_labels is not None:
        inputs = dict(inputs or {}, negative_labels=negative_labels)
    res, drawn = rule.trace_step(model, x, y, inputs)
    out = {k: host(v) for k, v in rule.trace_tensors(model).items()}
    for k, v in res.terms.items():
        out[f"loss/{k}"] = host(v, dtype).reshape(())
    out["loss/total"] = host(res.loss, dtype).reshape(())
    order = rule.grad_order(model, list(res.grads))
    for n in order:
        out[f"grad/{n}"] = host(res.grads[n])
    opt = make_optimizer(opt_meta, model, rule)
    opt.step(res.grads)
    live = all_parameters(model, rule)
    trainable = dict(model.parameters())
    trainable.update(rule.parameters())
    for n in order + [n for n in trainable if n not in order]:
        out[f"after/{n}"] = host(live[n])
    return {f"input/{k}": host(v) for k, v in drawn.items()}, out


def _data_batch(name: str, n: int, input_shape, dtype):
    """The first n examples of the official training set of ``name``, normalised and shaped
    for a model with ``input_shape`` (flattened for an MLP, zero-padded images for a larger CNN)."""
    from .. import data as D

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
    cls.check_kind(kind)
    defaults = cls.defaults(kind, data) or {}
    requested = dict(defaults.get("rule_options", {}) or {})
    requested.update(rule_options or {})
    model = build_model(model_spec, data=data, activation=activation, bias=bias, seed=seed,
                        dtype=dtype)
    r = cls(**requested)
    if model.num_classes is None:
        raise ValueError(f"traces record classifiers; {model.kind} models have none")
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
        arrays[f"param/{name}"] = host(p)
    inputs, computed = run_step(model, r, asarray(x_host, dtype=dtype), asarray(y_host), opt_meta)
    arrays.update(inputs)
    arrays.update(computed)
    loss = rule_settings(r, requested)
    meta = {
        "format": FORMAT, "rule": rule, "dtype": dtype, "seed": int(seed),
        "model": model_spec, "data": data, "activation": activation, "bias": bool(bias),
        "input_shape": list(model.input_shape), "num_classes": model.num_classes,
        "batch_size": batch_size, "layers": json_value(model.spec()), "loss": loss,
        "optimizer": opt_meta, "tolerances": {"rtol": TOLERANCES[dtype][0], "atol": TOLERANCES[dtype][1]},
        "ccledu_version": __version__,
    }
    meta.update(json_value(r.trace_meta()))
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


