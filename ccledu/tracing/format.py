"""The trace format: constants, writing (:func:`save`), reading and validation
(:func:`read_trace`), and rebuilding a trace's network and rule from its meta (:func:`rebuild`).

What a rule adds to a trace (its signals, overlays, drawn inputs, their shapes) comes from the
rule itself (``Rule.trace_tensors`` / ``trace_shapes`` / ``trace_step``, ``ccledu/rules/base.py``);
nothing here knows a rule by name. The format is documented in ``docs/trace-format.md``.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zipfile
import zlib

import numpy as np

from ..backend import to_numpy
from ..models import build_from_layers
from ..rules import RULES, rule_class

FORMAT = "ccledu-trace/1"

#: default tolerances per dtype: (rtol, atol). A tensor agrees when every element satisfies
#: |file − ccledu| <= atol + rtol·|ccledu|.
TOLERANCES = {"float64": (1e-7, 1e-10), "float32": (1e-4, 1e-5)}

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

#: settings every entry of meta.optimizer.groups states
GROUP_KEYS = ("lr", "momentum", "weight_decay", "clip", "centralize")

class TraceError(ValueError):
    """A trace file that cannot be read or does not describe a valid step."""


def json_value(v):
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, (list, tuple)):
        return [json_value(e) for e in v]
    if isinstance(v, dict):
        return {str(k): json_value(e) for k, e in v.items()}
    return v



def host(a, dtype=None):
    """A host copy of ``a`` (``dtype``: cast floating arrays to it)."""
    out = np.array(to_numpy(a), copy=True)
    return out.astype(dtype) if dtype is not None and out.dtype.kind == "f" else out


def all_parameters(model, rule) -> dict:
    """name -> live array: forward.*, then the rule's trainable (feedback.*) and fixed (fixed.*)."""
    out = dict(model.parameters())
    out.update(rule.parameters())
    out.update(rule.buffers())
    return out



def save(path, meta: dict, arrays: dict) -> None:
    """Write (meta, arrays) as a trace file: ``meta`` as a JSON string, arrays by name."""
    from ..train import atomic_write

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
        for k in ("name", "params") + GROUP_KEYS:
            _check(k in g, f"meta.optimizer.groups[{i}] lacks {k!r}")
        for k in ("lr", "momentum", "weight_decay", "clip"):
            _check(isinstance(g[k], (int, float)) and not isinstance(g[k], bool) and math.isfinite(g[k])
                   and g[k] >= 0, f"meta.optimizer.groups[{i}].{k} must be a number >= 0, got {g[k]!r}")
        _check(isinstance(g["params"], list), f"meta.optimizer.groups[{i}].params must be a list")
    for k in rule_class(meta["rule"]).TRACE_META:         # options the rule mirrors in meta
        if meta.get(k) is not None and k in meta["loss"]:
            _check(meta[k] == meta["loss"][k],
                   f"meta.{k} ({meta[k]!r}) disagrees with meta.loss.{k} ({meta['loss'][k]!r})")


def build_rule(meta: dict):
    """The rule of ``meta``: ``meta.rule`` with the entries of ``meta.loss`` that are options
    of that rule's constructor."""
    cls = rule_class(meta["rule"])
    options = getattr(cls, "OPTIONS", {}) or {}
    kwargs = {k: v for k, v in meta["loss"].items() if k in options}
    for k in cls.TRACE_META:
        if meta.get(k) is not None:
            kwargs.setdefault(k, meta[k])
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
    N = meta["batch_size"]
    shapes = {"x": (N,) + model.input_shape, "y": (N,)}
    params = all_parameters(model, rule)
    for n, p in params.items():
        shapes[f"param/{n}"] = tuple(p.shape)
    shapes.update(rule.trace_shapes(model, N))
    trainable = dict(model.parameters())
    trainable.update(rule.parameters())
    grouped = {n for params in rule.param_groups(model).values() for n in params}
    for n, p in trainable.items():
        if n in grouped:                     # a parameter the rule updates itself has no grad/
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
_FLOAT_PREFIXES = ("param/", "input/", "overlay/", "act/", "signal/", "target/", "loss/", "grad/",
                   "after/")


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
    every ``input/*`` the rule's step draws, e.g. FF's ``input/negative_labels``), holds arrays whose shapes or dtypes do not match what meta
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
        required += [k for k in shapes if k.startswith("input/")]
        labels = ("y",) + tuple(rule.TRACE_LABELS)
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
            if name in labels:
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
        if name in labels:
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
