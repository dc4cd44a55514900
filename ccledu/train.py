"""The training loop, evaluation and history.

``run(TrainConfig(...))`` does a whole experiment: load and split the data, build the model and
the rule, train with a progress bar, keep the parameters of the epoch with the lowest
validation loss, evaluate them on the test set and (with ``out``) write ``metrics.json``.

Setting resolution, lowest priority first:

1. the project's defaults (the public CCL MLP configuration: batch 256, SGD lr 1, momentum 0,
   no weight decay, global-norm clip 1 per group, no warm-up, no cosine schedule, 100 epochs);
2. the rule's ``defaults(kind, data)`` (e.g. CCL's CNN configuration on CIFAR); a "model" there
   replaces a plain ``model="mlp"``/``"cnn"`` (e.g. FF's 2 × 500 MLP on MNIST);
3. the rule's ``PRESETS[preset]`` when ``preset`` names one (e.g. ``ff`` ``paper``);
4. every field the caller set explicitly (anything not ``None``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .backend import asarray, get_array_module, machine_info, to_numpy, use
from .models import build_model, parse_spec
from .rules import rule_class

#: values used when neither the rule nor the caller sets a field
BASE_DEFAULTS = dict(
    epochs=100, batch_size=256, lr_forward=1.0, lr_feedback=1.0, momentum_forward=0.0,
    momentum_feedback=0.0, weight_decay_forward=0.0, weight_decay_feedback=0.0,
    clip_forward=1.0, clip_feedback=1.0, centralize=False, warmup=0, cosine_tmax=0,
    eta_min=1e-3, activation="elu", bias=False, augment=False, diagnostics=False,
    optimizer="sgd", track_test=False,
)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "use the default" (see module doc).

    rule:  'bp' | 'fa' | 'dfa' | 'ccl' | 'ff'
    model: 'mlp' | 'cnn' (the paper architecture for ``data``), a preset such as 'mlp-mnist',
           or an explicit spec 'mlp:784-256-10' / 'cnn:1x28x28-c8-c16-10'
    data:  'mnist' | 'fashion-mnist' | 'cifar10' | 'cifar100'
    limit_train / limit_test: keep only the first n (shuffled) examples, for quick runs
    diagnostics: call the rule's ``diagnostics`` on a held-out batch after every epoch
    track_test: also evaluate the test set after every epoch (``test_loss``/``test_accuracy`` in
           the history, and ``selections`` in the metrics: the test accuracy under three
           checkpoint choices). It is only recorded: the checkpoint is still chosen on the
           validation loss, never on test data. Off by default (one more pass over the test set
           per epoch).
    rule_options: keyword arguments of the rule's constructor (its ``OPTIONS``)
    optimizer: 'sgd' (default) | 'adam' (torch.optim.Adam semantics, see ccledu.optim)
    """
    rule: str = "bp"
    model: str = "mlp"
    data: str = "mnist"
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr_forward: float | None = None
    lr_feedback: float | None = None
    momentum_forward: float | None = None
    momentum_feedback: float | None = None
    weight_decay_forward: float | None = None
    weight_decay_feedback: float | None = None
    clip_forward: float | None = None
    clip_feedback: float | None = None
    centralize: bool | None = None
    warmup: int | None = None
    cosine_tmax: int | None = None
    eta_min: float | None = None
    optimizer: str | None = None
    activation: str | None = None
    bias: bool | None = None
    augment: bool | None = None
    diagnostics: bool | None = None
    track_test: bool | None = None
    preset: str | None = None
    dtype: str = "float32"
    backend: str = "numpy"
    val_fraction: float = 0.1
    limit_train: int | None = None
    limit_test: int | None = None
    data_root: str | None = None
    rule_options: dict = field(default_factory=dict)
    out: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; valid ones: {sorted(names)}")
        return cls(**d)


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill every ``None`` field from the rule's presets/defaults and the project's defaults."""
    from .data import _lookup

    cls = rule_class(config.rule)
    config = dataclasses.replace(config, data=_lookup(config.data).name)  # validates the name
    kind = parse_spec(config.model, config.data)[0]
    merged = dict(BASE_DEFAULTS)
    rule_defaults = cls.defaults(kind, config.data) if hasattr(cls, "defaults") else {}
    merged.update(rule_defaults)
    presets = getattr(cls, "PRESETS", {}) or {}
    if config.preset not in (None, "paper", "default") and config.preset not in presets:
        raise ValueError(f"rule {config.rule!r} has no preset {config.preset!r}; "
                         f"available: {sorted(presets) or 'none'}")
    preset = dict(presets.get(config.preset, {})) if config.preset else {}
    explicit = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    rule_options = dict(merged.pop("rule_options", {}) or {})
    rule_options.update(preset.pop("rule_options", {}) or {})
    rule_options.update(config.rule_options or {})
    for k, v in preset.items():
        if k in explicit and (explicit[k] is None or k == "model" and config.model in ("mlp", "cnn")):
            merged[k] = v
    out = {}
    for f in dataclasses.fields(config):
        v = explicit[f.name]
        out[f.name] = v if v is not None else merged.get(f.name)
    if "model" in preset and config.model in ("mlp", "cnn"):
        out["model"] = preset["model"]
    elif "model" in rule_defaults and config.model == kind:
        out["model"] = rule_defaults["model"]      # plain "mlp"/"cnn": the rule's own default
    out["rule_options"] = rule_options
    return TrainConfig(**out)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def load_splits(config: TrainConfig, input_shape):
    """Load ``config.data`` and shape it for a model with ``input_shape``.

    Returns host arrays ((x_train, y_train), (x_val, y_val), (x_test, y_test)).
    """
    from . import data as D

    ds = D.load_dataset(config.data, root=config.data_root)
    data_shape = tuple(ds.info.input_shape)
    flatten = len(input_shape) == 1
    pad_to = None
    if not flatten:
        if input_shape[0] != data_shape[0]:
            raise ValueError(f"the model takes {input_shape[0]} input channel(s) but {config.data} "
                             f"images have {data_shape[0]}")
        if input_shape[1:] != data_shape[1:]:
            pad_to = int(input_shape[1])
    elif int(np.prod(data_shape)) != input_shape[0]:
        raise ValueError(f"the MLP takes {input_shape[0]} inputs but {config.data} images have "
                         f"{int(np.prod(data_shape))} pixels; use e.g. 'mlp:{int(np.prod(data_shape))}-256-10'")
    splits = D.prepare(ds, val_fraction=config.val_fraction, seed=config.seed, dtype=config.dtype,
                       flatten=flatten, pad_to=pad_to)
    train, val, test = splits.train, splits.val, splits.test
    if config.limit_train:
        n = int(config.limit_train)
        train = (train[0][:n], train[1][:n])
        nv = max(1, int(round(n * config.val_fraction / (1 - config.val_fraction))))
        val = (val[0][:nv], val[1][:nv])
    if config.limit_test:
        test = (test[0][:config.limit_test], test[1][:config.limit_test])
    return train, val, test


# --------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------

def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def evaluate(model, rule, x, y, batch_size: int = 1024):
    """(mean loss, accuracy) of ``rule.evaluate`` over host arrays x, y."""
    total_loss, correct, n = 0.0, 0, len(y)
    for i in range(0, n, batch_size):
        xb = asarray(x[i:i + batch_size], dtype=model.dtype)
        yb = asarray(y[i:i + batch_size])
        loss, c = rule.evaluate(model, xb, yb)
        total_loss += float(to_numpy(loss))
        correct += int(to_numpy(c))
    return total_loss / max(n, 1), correct / max(n, 1)


def _snapshot(model, rule):
    xp = get_array_module(*model.parameters().values())
    return ({k: xp.array(v, copy=True) for k, v in model.parameters().items()},
            {k: xp.array(v, copy=True) for k, v in rule.parameters().items()})


def _restore(model, rule, snap):
    fwd, fb = snap
    model.load_parameters(fwd)
    own = rule.parameters()
    for k, v in fb.items():
        own[k][...] = v


def _check_finite(losses, epoch, first_step):
    """Raise DivergenceError naming the first non-finite loss among device scalars ``losses``."""
    if not losses:
        return
    xp = get_array_module(losses[0])
    vals = to_numpy(xp.stack(losses))
    bad = np.flatnonzero(~np.isfinite(vals))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        raise DivergenceError(
            f"training diverged: the loss became {vals[bad[0]]} at epoch {epoch}, step {step}. "
            f"Try a smaller learning rate (--lr-forward/--lr-feedback), gradient clipping "
            f"(--clip-forward/--clip-feedback), or float64 (--dtype float64) to check.")


def fit(model, rule, optimizer, train, val, *, epochs: int, batch_size: int, seed: int = 0,
        augment=None, diagnostics: bool = False, progress: bool = True, check_every: int = 20,
        desc: str = "", on_epoch=None, monitor=None):
    """Train ``model`` with ``rule`` and ``optimizer`` on host arrays ``train = (x, y)``.

    ``monitor``: optional host arrays (x, y), evaluated after every epoch and recorded as
    ``test_loss`` / ``test_accuracy`` in the history (never used to choose anything).

    Returns (history, best) where history is a list of per-epoch dicts and best = (epoch,
    snapshot of parameters with the lowest validation loss).
    """
    from .data import batches

    tqdm = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            pass
    g = np.random.default_rng([seed, 1])
    x_tr, y_tr = train
    x_va, y_va = val
    diag_x = asarray(x_va[:512], dtype=model.dtype) if diagnostics else None
    diag_y = asarray(y_va[:512]) if diagnostics else None
    history, best = [], (None, math.inf, None)
    xp = get_array_module(*model.parameters().values())
    steps_per_epoch = math.ceil(len(y_tr) / batch_size)
    for epoch in range(1, epochs + 1):
        it = batches(x_tr, y_tr, batch_size, shuffle=True, rng=g, augment=augment)
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=steps_per_epoch, desc=f"{desc}epoch {epoch}/{epochs}", leave=False,
                       unit="step", disable=None)  # None: off when stderr is not a terminal
        losses, pending, term_sums, n_steps = [], [], {}, 0
        _sync(xp)
        t0 = time.perf_counter()
        for xb, yb in it:
            xb = asarray(xb, dtype=model.dtype)
            yb = asarray(yb)
            res = rule.step(model, xb, yb)
            optimizer.step(res.grads)
            pending.append(res.loss)
            for k, v in res.terms.items():
                term_sums[k] = term_sums[k] + v if k in term_sums else v
            n_steps += 1
            if len(pending) >= check_every:
                _check_finite(pending, epoch, n_steps - len(pending))
                losses.extend(pending)
                if bar is not None:
                    bar.set_postfix(loss=f"{float(to_numpy(pending[-1])):.4f}")
                pending = []
            if bar is not None:
                bar.update(1)
        _check_finite(pending, epoch, n_steps - len(pending))
        losses.extend(pending)
        _sync(xp)
        train_seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        optimizer.end_epoch()
        train_loss = float(np.mean(to_numpy(xp.stack(losses)))) if losses else float("nan")
        val_loss, val_acc = evaluate(model, rule, x_va, y_va)
        entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                 "val_accuracy": val_acc, "train_seconds": train_seconds,
                 "terms": {k: float(to_numpy(v)) / max(n_steps, 1) for k, v in term_sums.items()}}
        if monitor is not None:
            entry["test_loss"], entry["test_accuracy"] = evaluate(model, rule, *monitor)
        if diagnostics:
            entry.update(rule.diagnostics(model, diag_x, diag_y))
        history.append(entry)
        if val_loss < best[1] or best[0] is None:
            best = (epoch, val_loss, _snapshot(model, rule))
        if progress:
            print(f"{desc}epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  val loss "
                  f"{val_loss:.4f}  val acc {100 * val_acc:6.2f} %  ({train_seconds:.1f} s)", flush=True)
        if on_epoch is not None:
            on_epoch(entry)
    return history, best


def selections(history: list) -> dict:
    """Test accuracy under three checkpoint choices, from a history recorded with ``track_test``.

    - ``lowest_val_loss``: the epoch with the lowest validation loss (the public CCL code's
      choice, and ``run``'s ``test_accuracy``);
    - ``highest_val_accuracy``: the epoch with the highest validation accuracy (the first one on
      a tie);
    - ``last_epoch``: the final epoch.

    Each maps to ``{"epoch": e, "val_loss": ..., "val_accuracy": ..., "test_accuracy": ...}``.
    All three choices look only at validation data or at the epoch count.
    """
    if not history or "test_accuracy" not in history[0]:
        raise ValueError("selections() needs a history recorded with track_test=True")
    picks = {
        "lowest_val_loss": min(history, key=lambda h: h["val_loss"]),
        "highest_val_accuracy": max(history, key=lambda h: (h["val_accuracy"], -h["epoch"])),
        "last_epoch": history[-1],
    }
    keys = ("epoch", "val_loss", "val_accuracy", "test_accuracy")
    return {name: {k: h[k] for k in keys} for name, h in picks.items()}


def build_optimizer(config: TrainConfig, model, rule):
    """Two SGD (or Adam) groups (forward, feedback when the rule has one) with their own settings."""
    from .optim import Optimizer, ParamGroup

    groups = []
    for name, params in rule.param_groups(model).items():
        suffix = "forward" if name == "forward" else "feedback"
        groups.append(ParamGroup(
            name, params, lr=getattr(config, f"lr_{suffix}"),
            momentum=getattr(config, f"momentum_{suffix}"),
            weight_decay=getattr(config, f"weight_decay_{suffix}"),
            clip=getattr(config, f"clip_{suffix}") or 0.0, centralize=bool(config.centralize),
            optimizer=config.optimizer or "sgd"))
    return Optimizer(groups, warmup=config.warmup or 0, cosine_tmax=config.cosine_tmax or 0,
                     eta_min=config.eta_min)


def run(config: TrainConfig | dict, progress: bool = True) -> dict:
    """Run a whole experiment and return its metrics (also written to ``out/metrics.json``)."""
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config = resolve(config)
    t_start = time.perf_counter()
    with use(config.backend):
        model = build_model(config.model, data=config.data, activation=config.activation,
                            bias=config.bias, seed=config.seed, dtype=config.dtype)
        rule = rule_class(config.rule)(**config.rule_options)
        rule.setup(model, seed=config.seed)
        train, val, test = load_splits(config, model.input_shape)
        optimizer = build_optimizer(config, model, rule)
        augment = None
        if config.augment:
            from .data import cifar_augment
            augment = cifar_augment(4)
        if progress:
            print(f"ccledu {__version__}: rule {config.rule}, {config.data} "
                  f"({len(train[1])} train / {len(val[1])} val / {len(test[1])} test), backend "
                  f"{config.backend}, {config.dtype}\n{model.describe()}", flush=True)
        history, (best_epoch, _, snap) = fit(
            model, rule, optimizer, train, val, epochs=config.epochs, batch_size=config.batch_size,
            seed=config.seed, augment=augment, diagnostics=bool(config.diagnostics),
            progress=progress, monitor=test if config.track_test else None)
        _restore(model, rule, snap)
        test_loss, test_acc = evaluate(model, rule, *test)
    metrics = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "best_epoch": best_epoch,
        "config": dataclasses.asdict(config),
        "rule_config": rule.config(),
        "model": model.spec(),
        "history": history,
        **({"selections": selections(history)} if config.track_test else {}),
        "total_seconds": time.perf_counter() - t_start,
        "ccledu_version": __version__,
        "machine": machine_info(config.backend),
    }
    if progress:
        print(f"test accuracy (epoch {best_epoch}, lowest validation loss): {100 * test_acc:.2f} %")
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.json", "w") as fh:
            json.dump(metrics, fh, indent=1, default=_json_default)
        if progress:
            print(f"wrote {out / 'metrics.json'}")
    metrics["_model"] = model
    metrics["_rule"] = rule
    return metrics


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def quick_mode() -> bool:
    """True when CCLEDU_QUICK is set (chapters and CI shrink data and epochs)."""
    return os.environ.get("CCLEDU_QUICK", "").strip() not in ("", "0", "false", "no")
