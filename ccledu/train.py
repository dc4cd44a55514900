"""The training loop, evaluation and history.

``run(TrainConfig(...))`` does a whole experiment: load and split the data, build the model and
the rule, train with a progress bar, keep the parameters of the epoch with the lowest
validation loss, evaluate them on the test set and (with ``out``) write ``metrics.json``.

Setting resolution, lowest priority first:

1. the project's defaults (the public CCL MLP configuration: batch 256, SGD lr 1, momentum 0,
   no weight decay, global-norm clip 1 per group, no warm-up, no cosine schedule, 100 epochs);
2. the rule's entry of the presets table for (rule, model kind, dataset), ``ccledu/presets.py``
   (e.g. CCL's CNN configuration on CIFAR); a "model" there replaces a plain
   ``model="mlp"``/``"cnn"`` (e.g. FF's 2 × 500 MLP on MNIST);
3. the rule's named preset when ``preset`` names one (e.g. ``ff`` ``paper``);
4. every field the caller set explicitly (anything not ``None``).

Every numeric setting has a valid range (:data:`RANGES`, checked by :func:`validate` before
anything is built). With ``out``, the folder is checked and locked before training
(:class:`RunDir`), a checkpoint is written atomically after every epoch, and ``metrics.json``
always says how the run ended (``status``: finished / diverged / interrupted). ``run(None,
resume=DIR)`` (``ccledu train --resume DIR``) continues a run bit for bit from its checkpoint.
Divergence: a non-finite loss, or one beyond :func:`divergence_bound`. See
``docs/reliability.md``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .backend import asarray, get_array_module, machine_info, to_numpy, use
from .models import PLAIN, build_model, parse_spec
from .presets import PROJECT, named, resolve_sources
from .ranges import Range
from .rules import rule_class

#: values used when neither the rule nor the caller sets a field
#: the project's defaults (``ccledu/presets.py``, :data:`ccledu.presets.PROJECT`)
BASE_DEFAULTS = PROJECT


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite, or grew past the divergence bound
    (:func:`divergence_bound`). ``epoch``, ``step`` and ``loss`` say where."""

    def __init__(self, message, epoch=None, step=None, loss=None):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss


@dataclass
class TrainConfig:
    """Every setting of a training run. ``None`` means "use the default" (see module doc).

    rule:  a name of ``ccledu.rules.RULES`` ('bp', 'fa', 'dfa', 'ccl', 'ff', ...; 'ccl-ae' and
           'bp-ae' train autoencoders)
    model: 'mlp' | 'cnn' (the paper architecture for ``data``), a preset such as 'mlp-mnist',
           an explicit spec 'mlp:784-256-10' / 'cnn:1x28x28-c8-c16-10', or 'autoencoder[:16-32]'
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
    warmup_mode: 'global' (default: warm-up factor (t+1)/warmup over global steps t) | 'epoch'
           (the public CCL scripts: (b+1)/warmup, b the batch index within the epoch, while
           t < warmup; see ccledu.optim)
    eval_every: evaluate (validation, ``track_test``'s test pass, diagnostics) after every k-th
           epoch and after the last one (default 1: every epoch). The checkpoint is chosen
           among the evaluated epochs; the other epochs' history entries hold only the training
           loss and time. Evaluation never changes the training trajectory (the weights after
           every epoch are those of k = 1; only the chosen checkpoint may differ); use it where
           evaluation costs as much as training (FF's
           candidate-label passes, 2 x 1000 full-batch steps). May change on ``--resume``.
    inputs: 'normalized' (default: x̂ = (x/255 − μ)/σ with the dataset's constants) | 'pixels'
           (x/255 in [0, 1], torchvision's bare ``ToTensor``, as loeweX/Forward-Forward feeds
           its network; computed as x̂·σ + μ, equal to x/255 within float rounding)
    cooldown: 'none' (default) | 'linear' (loeweX/Forward-Forward: the learning rates are
           constant for the first half of ``epochs``, then fall linearly, η_0 · 2(1+E−e)/E at
           0-based epoch e > E/2; see ccledu.optim.cooldown_lr). Not with ``cosine_tmax``.
           Extending a run with ``--resume --epochs`` recomputes the schedule for the new E.
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
    warmup_mode: str | None = None
    cooldown: str | None = None
    eval_every: int | None = None
    inputs: str | None = None
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
    """Fill every ``None`` field from the rule's presets/defaults and the project's defaults
    (module docstring); a named preset also replaces a field left at its TrainConfig default."""
    from .data import lookup

    cls = rule_class(config.rule)
    config = dataclasses.replace(config, data=lookup(config.data).name)  # validates the name
    kind = parse_spec(config.model, config.data)[0]
    merged = dict(BASE_DEFAULTS)
    rule_defaults = cls.defaults(kind, config.data)
    merged.update(rule_defaults)
    presets = named(config.rule)
    if config.preset not in (None, "paper", "default") and config.preset not in presets:
        raise ValueError(f"rule {config.rule!r} has no preset {config.preset!r}; "
                         f"available: {sorted(presets) or 'none'}")
    preset = dict(presets.get(config.preset, {})) if config.preset else {}
    fields = {f.name: f for f in dataclasses.fields(config)}
    explicit = {name: getattr(config, name) for name in fields}
    rule_options = dict(merged.pop("rule_options", {}) or {})
    rule_options.update(preset.pop("rule_options", {}) or {})
    rule_options.update(config.rule_options or {})
    for k, v in preset.items():
        if k in explicit and (explicit[k] is None or k == "model" and config.model in PLAIN):
            merged[k] = v
    out = {}
    for f in dataclasses.fields(config):
        v = explicit[f.name]
        out[f.name] = v if v is not None else merged.get(f.name)
    # a preset also sets a field the caller left at its (non-None) TrainConfig default, such
    # as val_fraction 0.1 (loewex: 1/6)
    for k, v in preset.items():
        f = fields.get(k)
        if k != "model" and f is not None and f.default is not None and explicit[k] == f.default:
            out[k] = v
    if "model" in preset and config.model in PLAIN:
        out["model"] = preset["model"]
    elif "model" in rule_defaults and config.model == kind:
        out["model"] = rule_defaults["model"]      # plain "mlp"/"cnn": the rule's own default
    out["rule_options"] = rule_options
    return TrainConfig(**out)


def sources(config: TrainConfig) -> dict:
    """setting -> where :func:`resolve` takes its value from for ``config`` (as given, before
    resolution): "user", "preset <name>", "rule (<provenance>)" or "project defaults"
    (:func:`ccledu.presets.resolve_sources`); rule options as ``rule_options.<name>``."""
    from .data import lookup

    data = lookup(config.data).name
    kind = parse_spec(config.model, data)[0]
    explicit = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in ("rule", "model", "data", "seed", "dtype", "backend", "preset",
                                  "val_fraction", "out", "limit_train", "limit_test", "data_root")}
    return resolve_sources(config.rule, kind, data, config.preset, explicit)


# --------------------------------------------------------------------------------------------
# Valid ranges of the settings
# --------------------------------------------------------------------------------------------

#: the valid range of every numeric training setting (checked by :func:`validate` for the
#: Python API and ``--config`` files, and at parse time for command-line flags)
RANGES = {
    "seed": Range(int, 0),
    "epochs": Range(int, 1),
    "batch_size": Range(int, 1),
    "lr_forward": Range(float, 0, lo_open=True),
    "lr_feedback": Range(float, 0),            # 0: the feedback weights stay as initialised
    "momentum_forward": Range(float, 0, 1, hi_open=True),
    "momentum_feedback": Range(float, 0, 1, hi_open=True),
    "weight_decay_forward": Range(float, 0),
    "weight_decay_feedback": Range(float, 0),
    "clip_forward": Range(float, 0),           # 0: no clipping
    "clip_feedback": Range(float, 0),
    "warmup": Range(int, 0),
    "cosine_tmax": Range(int, 0),
    "eval_every": Range(int, 1),
    "eta_min": Range(float, 0),
    "val_fraction": Range(float, 0, 1, lo_open=True, hi_open=True),
    "limit_train": Range(int, 1),
    "limit_test": Range(int, 1),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(config: "TrainConfig") -> "TrainConfig":
    """Check every numeric field against :data:`RANGES` (None = default is fine) and the
    choice fields; returns the config with numbers converted. ValueError, one line, else."""
    changes = {}
    for name, rng in RANGES.items():
        v = getattr(config, name)
        if v is not None:
            changes[name] = rng.check(v, f"{name} ({_flag(name)})")
    if config.optimizer is not None and config.optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer (--optimizer) must be 'sgd' or 'adam', got {config.optimizer!r}")
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype (--dtype) must be 'float32' or 'float64', got {config.dtype!r}")
    if config.warmup_mode is not None and config.warmup_mode not in ("global", "epoch"):
        raise ValueError(f"warmup_mode must be 'global' or 'epoch', got {config.warmup_mode!r}")
    if config.inputs is not None and config.inputs not in ("normalized", "pixels"):
        raise ValueError(f"inputs (--inputs) must be 'normalized' or 'pixels', got "
                         f"{config.inputs!r}")
    if config.cooldown is not None and config.cooldown not in ("none", "linear"):
        raise ValueError(f"cooldown (--cooldown) must be 'none' or 'linear', got "
                         f"{config.cooldown!r}")
    if config.cooldown == "linear" and (config.cosine_tmax or 0) > 0:
        raise ValueError("cooldown 'linear' (--cooldown) and a cosine schedule (--cosine-tmax "
                         f"{config.cosine_tmax}) both set the learning rate per epoch; choose one "
                         "(--cosine-tmax 0 or --cooldown none)")
    if not isinstance(config.rule_options, dict):
        raise ValueError(f"rule_options must be a dict of the rule's options, got "
                         f"{type(config.rule_options).__name__}")
    try:
        options = getattr(rule_class(config.rule), "OPTIONS", {}) or {}
    except ValueError:                      # an unknown rule is reported where it is built
        options = {}
    checked = {}
    for name, v in config.rule_options.items():
        spec = options.get(name, ())
        if len(spec) > 3 and spec[3] is not None and v is not None:
            checked[name] = spec[3].check(v, f"rule option {name} ({_flag(name)})")
    if checked:
        changes["rule_options"] = {**config.rule_options, **checked}
    return dataclasses.replace(config, **changes)


# --------------------------------------------------------------------------------------------
# The output folder: validation, lock, atomic writes, checkpoints
# --------------------------------------------------------------------------------------------

METRICS = "metrics.json"
PREVIOUS = "metrics.previous.json"
CHECKPOINT = "checkpoint.npz"
LOCK = ".ccledu.lock"


class OutputError(RuntimeError):
    """The output folder cannot be used (a file, not writable, locked by another run...)."""


def _nonfinite_to_none(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nonfinite_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nonfinite_to_none(v) for v in o]
    return o


def _json_text(obj) -> str:
    """Strict JSON (NaN/inf written as null, so every JSON reader accepts the file)."""
    plain = json.loads(json.dumps(obj, default=json_default))
    return json.dumps(_nonfinite_to_none(plain), indent=1, allow_nan=False)


def atomic_write(path, write) -> None:
    """Write a file so that it is either wholly there or not changed: ``write(fh)`` fills a
    temporary file in the same folder, which is flushed, fsynced and renamed over ``path``
    (``os.replace``, atomic on one file system). On any error the temporary file is removed and
    the old ``path`` (if any) is left as it was."""
    import tempfile
    import traceback

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                write(fh)
            except BaseException as e:
                # release what write() left open (a Ctrl-C inside numpy.savez leaves its ZipFile)
                # while fh is still open, so that it does not complain later on a closed file
                traceback.clear_frames(e.__traceback__)
                raise
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_json(path, obj) -> None:
    """``obj`` as strict JSON at ``path``, atomically (see :func:`atomic_write`)."""
    data = _json_text(obj).encode()
    atomic_write(path, lambda fh: fh.write(data))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


class RunDir:
    """The ``out`` folder of one run, checked and locked before any training.

    * ``out`` must be a folder (created if missing) that this process can write to, and
      ``out/metrics.json`` must not be a directory: otherwise :class:`OutputError` at once.
    * A lock file ``out/.ccledu.lock`` holds this process's PID and host name. A second run into
      the same folder refuses with a message; a lock left by a process that no longer exists (on
      this host) is taken over.
    * ``start()`` moves an earlier run's ``metrics.json`` to ``metrics.previous.json`` (unless
      this run resumes it) and writes ``metrics.json`` with ``status: "running"``, so nothing
      stale is ever read as this run's result.
    """

    def __init__(self, out):
        import socket

        self.path = Path(out).expanduser()
        self.host = socket.gethostname()
        self.locked = False
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputError(f"--out {p} is a file, not a folder; give a folder name (it is "
                              f"created if missing)")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder {p}: {e.strerror or e}; choose "
                              f"another --out") from None
        if (p / METRICS).is_dir():
            raise OutputError(f"{p / METRICS} is a directory, so the results could not be "
                              f"written; remove it or choose another --out")
        if (p / CHECKPOINT).is_dir():
            raise OutputError(f"{p / CHECKPOINT} is a directory; remove it or choose another --out")
        try:
            atomic_write(p / ".ccledu.write-test", lambda fh: fh.write(b"ok"))
            os.remove(p / ".ccledu.write-test")
        except OSError as e:
            raise OutputError(f"the output folder {p} is not writable ({e.strerror or e}); "
                              f"choose another --out") from None

    # -- lock --------------------------------------------------------------------------------
    def _lock_info(self) -> dict:
        return {"pid": os.getpid(), "host": self.host, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def acquire(self) -> None:
        lock = self.path / LOCK
        data = json.dumps(self._lock_info()).encode()
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text())
                pid, host = int(other["pid"]), str(other.get("host", ""))
            except (OSError, ValueError, KeyError, TypeError):
                other, pid, host = {}, -1, self.host       # unreadable: a crash mid-write
            if pid == os.getpid() and host == self.host:
                raise OutputError(f"this process is already running a training run into "
                                  f"{self.path}; use another --out") from None
            if host != self.host or _pid_alive(pid):
                raise OutputError(
                    f"another ccledu run (pid {pid} on {host}, started {other.get('started', '?')}) "
                    f"is writing to {self.path}; wait for it to end or choose another --out (if "
                    f"no such run exists, delete {lock})") from None
            atomic_write(lock, lambda fh: fh.write(data))          # stale: take it over
            try:
                if json.loads(lock.read_text()).get("pid") != os.getpid():
                    raise OutputError(f"another ccledu run took over {lock} at the same moment; "
                                      f"choose another --out")
            except (OSError, ValueError) as e:
                raise OutputError(f"cannot take over the stale lock {lock}: {e}") from None
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        self.locked = True

    def release(self) -> None:
        if not self.locked:
            return
        lock = self.path / LOCK
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                os.remove(lock)
        except (OSError, ValueError):
            pass
        self.locked = False

    # -- files -------------------------------------------------------------------------------
    def start(self, config, resuming: bool) -> None:
        m = self.path / METRICS
        if m.exists() and not resuming:
            os.replace(m, self.path / PREVIOUS)
        self.write_metrics({"status": "running", "pid": os.getpid(), "host": self.host,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                            "config": dataclasses.asdict(config), "ccledu_version": __version__})

    def write_metrics(self, metrics: dict) -> Path:
        write_json(self.path / METRICS, metrics)
        return self.path / METRICS


# ---- checkpoints ---------------------------------------------------------------------------

def _generators(obj) -> dict:
    """attribute name -> numpy Generator held directly by ``obj`` (a rule's or model's own
    random streams, e.g. FF's negative-label draws)."""
    return {k: v for k, v in vars(obj).items() if isinstance(v, np.random.Generator)}


def save_checkpoint(path, *, config, model, rule, optimizer, gen, history, best, epoch,
                    reference_loss) -> None:
    """Everything a run needs to continue bit for bit after ``epoch``, written atomically to
    ``path`` (an ``.npz``): model parameters, the rule's parameters and buffers, the optimiser
    state (step/epoch counters, learning rates, momentum buffers, Adam moments), the
    parameters of the best epoch so far, the RNG states (data order and augmentation, and any
    generator the rule or model holds), the history, the epoch and the resolved config."""
    opt = optimizer.state_dict()
    arrays = {}
    for k, v in model.parameters().items():
        arrays[f"model/{k}"] = to_numpy(v)
    own = dict(rule.parameters())
    own.update(rule.buffers())
    for k, v in own.items():
        arrays[f"rule/{k}"] = to_numpy(v)
    best_epoch, best_loss, snap = best
    if snap is not None:
        for k, v in snap[0].items():
            arrays[f"best_model/{k}"] = to_numpy(v)
        for k, v in snap[1].items():
            arrays[f"best_rule/{k}"] = to_numpy(v)
    for k, v in opt["momentum"].items():
        arrays[f"optim_momentum/{k}"] = v
    for k, st in opt["adam"].items():
        arrays[f"optim_adam_m/{k}"] = st["m"]
        arrays[f"optim_adam_v/{k}"] = st["v"]
    state = {
        "format": "ccledu-checkpoint/1", "ccledu_version": __version__, "epoch": int(epoch),
        "config": dataclasses.asdict(config), "history": history,
        "best_epoch": best_epoch, "best_val_loss": best_loss,
        "optimizer": {"step": opt["step"], "epoch": opt["epoch"], "lrs": opt["lrs"],
                      "initial_lrs": opt["initial_lrs"],
                      "adam_steps": {k: st["step"] for k, st in opt["adam"].items()}},
        "rng": {"data": gen.bit_generator.state,
                "rule": {k: g.bit_generator.state for k, g in _generators(rule).items()},
                "model": {k: g.bit_generator.state for k, g in _generators(model).items()}},
        "reference_loss": reference_loss,
    }
    arrays["state"] = np.array(_json_text(state))
    atomic_write(path, lambda fh: np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()}))


def load_checkpoint(path) -> tuple[dict, dict]:
    """(state, arrays) of a checkpoint written by :func:`save_checkpoint`; ValueError with one
    line when the file is missing or damaged."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: --resume takes the --out folder of a "
                                f"run that completed at least one epoch")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        state = json.loads(str(arrays.pop("state")))
        if state.get("format") != "ccledu-checkpoint/1":
            raise ValueError(f"format {state.get('format')!r}")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable ccledu checkpoint ({type(e).__name__}: {e})"
                         ) from None
    return state, arrays


def _checkpoint_epoch(path, default=None):
    """The epoch recorded in the checkpoint file at ``path`` (``default`` if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(str(z["state"]))["epoch"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return default


def _apply_checkpoint(state, arrays, model, rule, optimizer, gen):
    """Load a checkpoint's arrays and states into live objects; returns (history, best)."""
    def group(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    model.load_parameters({k: v for k, v in group("model/").items()})
    own = dict(rule.parameters())
    own.update(rule.buffers())
    saved = group("rule/")
    if set(saved) != set(own):
        raise ValueError(f"the checkpoint's rule arrays {sorted(saved)} do not match the rule's "
                         f"{sorted(own)}")
    for k, v in saved.items():
        xp = get_array_module(own[k])
        own[k][...] = xp.asarray(v, dtype=own[k].dtype)
    o = state["optimizer"]
    m, v_ = group("optim_adam_m/"), group("optim_adam_v/")
    optimizer.load_state_dict({
        "step": o["step"], "epoch": o["epoch"], "lrs": o["lrs"], "initial_lrs": o["initial_lrs"],
        "momentum": group("optim_momentum/"),
        "adam": {k: {"step": o["adam_steps"][k], "m": m[k], "v": v_[k]} for k in m}})
    gen.bit_generator.state = state["rng"]["data"]
    for k, st in state["rng"].get("rule", {}).items():
        getattr(rule, k).bit_generator.state = st
    for k, st in state["rng"].get("model", {}).items():
        getattr(model, k).bit_generator.state = st
    snap = None
    if state["best_epoch"] is not None:
        xp = get_array_module(*model.parameters().values())
        snap = ({k: xp.asarray(v) for k, v in group("best_model/").items()},
                {k: xp.asarray(v) for k, v in group("best_rule/").items()})
    best_loss = state["best_val_loss"]
    best = (state["best_epoch"], math.inf if best_loss is None else best_loss, snap)
    return list(state["history"]), best


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def load_splits(config: TrainConfig, input_shape, pixels: bool = False):
    """Load ``config.data`` and shape it for a model with ``input_shape``: flattened for an
    MLP, zero-padded when the model's images are larger. The inputs are normalised by the
    dataset's mean/std, or, with ``pixels`` (a model's ``pixels``, e.g. an autoencoder) or
    ``config.inputs == "pixels"``, mapped back to [0, 1] pixels by x·std + mean.

    Returns host arrays ((x_train, y_train), (x_val, y_val), (x_test, y_test)).
    """
    from . import data as D

    pixels = pixels or config.inputs == "pixels"
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
    if pixels:
        mean, std = (np.asarray(v, dtype=np.float64).reshape(1, -1, *[1] * (len(input_shape) - 1))
                     for v in (ds.info.mean, ds.info.std))
        train, val, test = (((x * std + mean).astype(x.dtype), y) for x, y in (train, val, test))
    return train, val, test


# --------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------

def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


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


#: divergence rule: a step's loss that is NaN/inf, or whose magnitude exceeds
#: DIVERGENCE_FACTOR × max(|loss of the run's first step|, 1), stops the run
DIVERGENCE_FACTOR = 1e3


def divergence_bound(reference_loss: float) -> float:
    """The largest |loss| a run may reach: DIVERGENCE_FACTOR · max(|L_1|, 1), L_1 = the loss of
    the run's first step (the floor of 1 keeps a tiny first loss from making the bound tight)."""
    return DIVERGENCE_FACTOR * max(abs(float(reference_loss)), 1.0)


def _check_finite(losses, epoch, first_step, bound=math.inf):
    """Raise DivergenceError naming the first loss among device scalars ``losses`` that is not
    finite or whose magnitude exceeds ``bound``."""
    if not losses:
        return
    xp = get_array_module(losses[0])
    vals = to_numpy(xp.stack(losses))
    bad = np.flatnonzero(~np.isfinite(vals) | (np.abs(vals) > bound))
    if bad.size:
        step = first_step + int(bad[0]) + 1
        v = float(vals[bad[0]])
        what = (f"became {v}" if not math.isfinite(v) else
                f"reached {v:.4g}, more than {DIVERGENCE_FACTOR:g} x max(|first loss|, 1) = {bound:.4g}")
        raise DivergenceError(
            f"training diverged: the loss {what} at epoch {epoch}, step {step}. "
            f"Try a smaller learning rate (--lr-forward/--lr-feedback), gradient clipping "
            f"(--clip-forward/--clip-feedback), or float64 (--dtype float64) to check.",
            epoch=epoch, step=step, loss=v)


def fit(model, rule, optimizer, train, val, *, epochs: int, batch_size: int, seed: int = 0,
        augment=None, diagnostics: bool = False, progress: bool = True, check_every: int = 20,
        desc: str = "", on_epoch=None, monitor=None, history=None, best=None, gen=None,
        start_epoch: int = 1, reference_loss=None, checkpoint=None, eval_every: int = 1):
    """Train ``model`` with ``rule`` and ``optimizer`` on host arrays ``train = (x, y)``.

    ``monitor``: optional host arrays (x, y), evaluated after every epoch and recorded as
    ``test_loss`` / ``test_accuracy`` in the history (never used to choose anything).

    ``eval_every`` k: validation, ``monitor`` and diagnostics only after epochs k, 2k, ... and
    the last; the other entries hold ``epoch``, ``train_loss``, ``train_seconds``, ``terms``.

    Divergence (see :func:`divergence_bound`): every ``check_every`` steps the losses are
    checked; a NaN/inf loss or one beyond the bound raises :class:`DivergenceError` (with
    ``epoch``, ``step``, ``loss``).

    Resuming: ``history`` (a list, appended to in place), ``best`` = (epoch, val loss,
    snapshot), ``gen`` (the data-order Generator, default ``default_rng([seed, 1])``),
    ``start_epoch`` and ``reference_loss`` (the first step's loss) continue an earlier run.
    ``checkpoint(epoch, history, best, gen, reference_loss)`` is called at the end of every epoch
    (before ``on_epoch(entry)``).

    Returns (history, best) where history is a list of per-epoch dicts and best = (epoch,
    val loss, snapshot of parameters with the lowest validation loss).
    """
    from .data import batches

    tqdm = None
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            pass
    g = np.random.default_rng([seed, 1]) if gen is None else gen
    x_tr, y_tr = train
    x_va, y_va = val
    diag_x = asarray(x_va[:512], dtype=model.dtype) if diagnostics else None
    diag_y = asarray(y_va[:512]) if diagnostics else None
    history = [] if history is None else history
    best = (None, math.inf, None) if best is None else best
    xp = get_array_module(*model.parameters().values())
    steps_per_epoch = math.ceil(len(y_tr) / batch_size)
    bound = math.inf if reference_loss is None else divergence_bound(reference_loss)
    shuffle = rule.shuffle_batches(batch_size, len(y_tr))
    for epoch in range(start_epoch, epochs + 1):
        rule.begin_epoch(epoch, epochs)
        it = batches(x_tr, y_tr, batch_size, shuffle=shuffle, rng=g, augment=augment)
        bar = None
        if progress and tqdm is not None:
            bar = tqdm(total=steps_per_epoch, desc=f"{desc}epoch {epoch}/{epochs}", leave=False,
                       unit="step", disable=None)  # None: off when stderr is not a terminal
        losses, pending, term_sums, n_steps = [], [], {}, 0
        _sync(xp)
        t0 = time.perf_counter()
        try:
            for xb, yb in it:
                xb = asarray(xb, dtype=model.dtype)
                yb = asarray(yb)
                res = rule.step(model, xb, yb)
                optimizer.step(res.grads)
                pending.append(res.loss)
                if reference_loss is None:
                    reference_loss = float(to_numpy(res.loss))
                    if math.isfinite(reference_loss):
                        bound = divergence_bound(reference_loss)
                for k, v in res.terms.items():
                    term_sums[k] = term_sums[k] + v if k in term_sums else v
                n_steps += 1
                if len(pending) >= check_every:
                    _check_finite(pending, epoch, n_steps - len(pending), bound)
                    losses.extend(pending)
                    if bar is not None:
                        bar.set_postfix(loss=f"{float(to_numpy(pending[-1])):.4f}")
                    pending = []
                if bar is not None:
                    bar.update(1)
            _check_finite(pending, epoch, n_steps - len(pending), bound)
        finally:
            if bar is not None:
                bar.close()
        losses.extend(pending)
        _sync(xp)
        train_seconds = time.perf_counter() - t0
        optimizer.end_epoch()
        train_loss = float(np.mean(to_numpy(xp.stack(losses)))) if losses else float("nan")
        entry = {"epoch": epoch, "train_loss": train_loss, "train_seconds": train_seconds,
                 "terms": {k: float(to_numpy(v)) / max(n_steps, 1) for k, v in term_sums.items()}}
        if epoch % eval_every == 0 or epoch == epochs:
            scores = rule.evaluate_set(model, x_va, y_va)
            val_loss = scores["loss"]
            entry.update({f"val_{k}": v for k, v in scores.items()})
            if monitor is not None:
                entry.update({f"test_{k}": v for k, v in rule.evaluate_set(model, *monitor).items()})
            if diagnostics:
                entry.update(rule.diagnostics(model, diag_x, diag_y))
            if val_loss < best[1] or best[0] is None:
                best = (epoch, val_loss, _snapshot(model, rule))
            if progress:
                acc = f"  val acc {100 * scores['accuracy']:6.2f} %" if "accuracy" in scores else ""
                print(f"{desc}epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  val loss "
                      f"{val_loss:.4f}{acc}  ({train_seconds:.1f} s)", flush=True)
        elif progress:
            print(f"{desc}epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  (not evaluated, "
                  f"eval_every {eval_every}; {train_seconds:.1f} s)", flush=True)
        history.append(entry)
        if checkpoint is not None:
            checkpoint(epoch, history, best, g, reference_loss)
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
    evaluated = [h for h in history if "val_loss" in h]      # all but eval_every's skipped epochs
    if not evaluated or "test_accuracy" not in evaluated[0]:
        raise ValueError("selections() needs a classifier's history recorded with track_test=True")
    picks = {
        "lowest_val_loss": min(evaluated, key=lambda h: h["val_loss"]),
        "highest_val_accuracy": max(evaluated, key=lambda h: (h["val_accuracy"], -h["epoch"])),
        "last_epoch": evaluated[-1],
    }
    keys = ("epoch", "val_loss", "val_accuracy", "test_accuracy")
    return {name: {k: h[k] for k in keys} for name, h in picks.items()}


def build_optimizer(config: TrainConfig, model, rule):
    """SGD (or Adam) with one group per entry of ``rule.param_groups(model)`` (forward, and
    feedback when the rule has one), built by :func:`ccledu.optim.build_groups`."""
    from .optim import Optimizer, build_groups

    groups = build_groups(rule.param_groups(model), dataclasses.asdict(config))
    return Optimizer(groups, warmup=config.warmup or 0, cosine_tmax=config.cosine_tmax or 0,
                     eta_min=config.eta_min, warmup_mode=config.warmup_mode or "global",
                     cooldown=config.cooldown or "none", epochs=config.epochs or 0)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run`. ``metrics.json`` (with ``out``) says ``interrupted``;
    ``epoch`` is the last completed epoch, ``checkpoint`` the file to resume from (or None)."""

    def __init__(self, message, epoch=0, checkpoint=None):
        super().__init__(message)
        self.epoch, self.checkpoint = epoch, checkpoint


def _resume_config(state, config) -> TrainConfig:
    """The checkpoint's config; ``config`` (a dict of overrides or a TrainConfig) may change
    ``epochs`` only (to extend a run)."""
    saved = dict(state["config"])
    if config is None:
        return TrainConfig.from_dict(saved)
    if isinstance(config, dict):
        TrainConfig.from_dict({**saved, **config})            # unknown names
        wanted = {**saved, **config}
    else:
        wanted = dataclasses.asdict(resolve(validate(config)))
    free = ("epochs", "eval_every", "out")
    differ = sorted(k for k in set(saved) | set(wanted)
                    if k not in free and wanted.get(k) != saved.get(k))
    if differ:
        raise ValueError(f"--resume continues a run with the settings of its checkpoint; these "
                         f"differ: {', '.join(differ)} (only epochs may change, to extend it, "
                         f"and eval_every)")
    return TrainConfig.from_dict({**saved, "epochs": wanted.get("epochs", saved["epochs"]),
                                  "eval_every": wanted.get("eval_every", saved.get("eval_every"))})


def run(config: TrainConfig | dict | None = None, progress: bool = True, resume=None,
        on_epoch=None) -> dict:
    """Run a whole experiment and return its metrics (also written to ``out/metrics.json``).

    Before any data is loaded: every setting is checked (:data:`RANGES`, one-line ValueError),
    the model's output width must equal the dataset's number of classes, and ``out`` (when
    set) is checked and locked (:class:`RunDir`). With ``out``, a checkpoint is written
    atomically at the end of every epoch (``out/checkpoint.npz``) and ``metrics.json`` always
    says how the run ended: ``status`` "finished", "diverged" (then DivergenceError is raised)
    or "interrupted" (Ctrl-C; then :class:`Interrupted` is raised), with ``epochs_completed``.

    ``resume``: the ``out`` folder (or checkpoint file) of an earlier run: the run continues
    after the checkpoint's epoch with its settings (``config`` may be None, or change
    ``epochs`` only) and ends bit for bit as the uninterrupted run would have.
    ``on_epoch(entry)`` is called after every epoch (and after its checkpoint).
    """
    from .data import lookup

    state = ck_arrays = origin = None
    if resume is not None:
        state, ck_arrays = load_checkpoint(resume)
        rdir = Path(resume)
        rdir = rdir.parent if rdir.is_file() else rdir
        config = dataclasses.replace(_resume_config(state, config), out=str(rdir))
        config = validate(config)
    else:
        if config is None:
            raise ValueError("run() needs a config (or resume=<the out folder of a run>)")
        if isinstance(config, dict):
            config = TrainConfig.from_dict(config)
        config = validate(config)
        origin = sources(config)
        config = validate(resolve(config))
    info = lookup(config.data)
    t_start = time.perf_counter()
    rundir = RunDir(config.out) if config.out else None
    if rundir is not None:
        rundir.acquire()
    try:
        return _run_locked(config, info, rundir, state, ck_arrays, progress, on_epoch, t_start,
                           origin)
    finally:
        if rundir is not None:
            rundir.release()


def settings_header(config: TrainConfig, origin: dict, n_train: int) -> list:
    """Lines of the run header: every resolved training setting with where it came from
    (:func:`sources`), and a warning when the warm-up is longer than the run."""
    skip = {"rule", "model", "data", "seed", "dtype", "backend", "out", "data_root",
            "rule_options", "preset", "val_fraction", "limit_train", "limit_test"}
    groups = {}
    values = [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)
              if f.name not in skip]
    values += [(f"rule_options.{k}", v) for k, v in sorted(config.rule_options.items())]
    for name, v in values:
        where = origin.get(name, "user" if name.startswith("rule_options.") else "project defaults")
        groups.setdefault(where, []).append(f"{name.replace('rule_options.', '')}={v!r}")
    order = sorted(groups, key=lambda w: (w != "user", not w.startswith("preset"),
                                          not w.startswith("rule"), w))
    lines = [f"settings, {'given by you' if w == 'user' else 'from the ' + w}: "
             f"{', '.join(groups[w])}" for w in order]
    steps = -(-n_train // config.batch_size) * config.epochs
    if config.warmup and config.warmup > steps:
        lines.append(f"warning: the warm-up ({config.warmup} steps) is longer than the run "
                     f"({steps} steps): the learning rate never reaches its full value; lower "
                     f"--warmup or raise --epochs")
    return lines


def _run_locked(config, info, rundir, state, ck_arrays, progress, on_epoch, t_start, origin=None):
    with use(config.backend):
        cls = rule_class(config.rule)
        try:
            rule = cls(**config.rule_options)
        except TypeError as e:
            raise ValueError(f"rule {config.rule!r} does not take the options "
                             f"{sorted(config.rule_options)} ({e}); its options: "
                             f"{sorted(getattr(cls, 'OPTIONS', {}) or {}) or 'none'}") from None
        rule.check_kind(parse_spec(config.model, config.data)[0])
        model = build_model(config.model, data=config.data, activation=config.activation,
                            bias=config.bias, seed=config.seed, dtype=config.dtype,
                            **rule.model_options())
        if model.num_classes not in (None, info.num_classes):
            raise ValueError(
                f"the model {config.model!r} has {model.num_classes} outputs but {info.name} has "
                f"{info.num_classes} classes; end the spec with the number of classes, e.g. "
                f"'mlp:{int(np.prod(info.input_shape))}-256-{info.num_classes}'")
        rule.setup(model, seed=config.seed)
        train, val, test = load_splits(config, model.input_shape, pixels=model.pixels)
        optimizer = build_optimizer(config, model, rule)
        rule.shuffle_batches(config.batch_size, len(train[1]))   # a bad batch size fails here
        augment = None
        if config.augment:
            from .data import cifar_augment
            augment = cifar_augment(4)
        gen = np.random.default_rng([config.seed, 1])
        history, best, start, ref = [], None, 1, None
        if state is not None:
            history, best = _apply_checkpoint(state, ck_arrays, model, rule, optimizer, gen)
            start, ref = int(state["epoch"]) + 1, state.get("reference_loss")
        if progress:
            print(f"ccledu {__version__}: rule {config.rule}, {config.data} "
                  f"({len(train[1])} train / {len(val[1])} val / {len(test[1])} test), backend "
                  f"{config.backend}, {config.dtype}\n{model.describe()}", flush=True)
            if origin is not None:
                print("\n".join(settings_header(config, origin, len(train[1]))), flush=True)
            if state is not None:
                print(f"resuming after epoch {start - 1} from {rundir.path / CHECKPOINT}", flush=True)
        ck_path = rundir.path / CHECKPOINT if rundir is not None else None
        last_ck = [start - 1 if state is not None else None]

        def checkpoint(epoch, hist, best_, g, reference):
            try:
                save_checkpoint(ck_path, config=config, model=model, rule=rule,
                                optimizer=optimizer, gen=g, history=hist, best=best_,
                                epoch=epoch, reference_loss=reference)
            except OSError as e:
                raise OutputError(f"cannot write the checkpoint {ck_path}: {e.strerror or e}") from None
            last_ck[0] = epoch

        def partial(status, **extra):
            return {"status": status, "epochs_completed": len(history), "epochs": config.epochs,
                    "checkpoint": str(ck_path) if last_ck[0] is not None else None,
                    "checkpoint_epoch": last_ck[0], **extra,
                    "config": dataclasses.asdict(config), "rule_config": rule.config(),
                    "model": model.spec(), "history": history,
                    "total_seconds": time.perf_counter() - t_start,
                    "ccledu_version": __version__, "machine": machine_info(config.backend)}

        def record(metrics):
            if rundir is None:
                return
            try:
                rundir.write_metrics(metrics)
            except OSError:
                pass                      # the original error is the one to report

        if rundir is not None:
            rundir.start(config, resuming=state is not None)
        try:
            history, best = fit(
                model, rule, optimizer, train, val, epochs=config.epochs,
                batch_size=config.batch_size, seed=config.seed, augment=augment,
                diagnostics=bool(config.diagnostics), progress=progress,
                monitor=test if config.track_test else None, history=history, best=best,
                gen=gen, start_epoch=start, reference_loss=ref,
                checkpoint=checkpoint if rundir is not None else None, on_epoch=on_epoch,
                eval_every=config.eval_every or 1)
            best_epoch, _, snap = best
            _restore(model, rule, snap)
            scores = rule.evaluate_set(model, *test)
        except DivergenceError as e:
            record(partial("diverged", message=str(e),
                           diverged={"epoch": e.epoch, "step": e.step, "loss": e.loss}))
            raise
        except KeyboardInterrupt:
            done = len(history)
            if ck_path is not None:           # a signal may land between the rename and the
                last_ck[0] = _checkpoint_epoch(ck_path, last_ck[0])   # bookkeeping: ask the file
            record(partial("interrupted", message=f"interrupted by the user after epoch {done}"))
            if rundir is not None and last_ck[0] is not None:
                hint = (f"checkpoint of epoch {last_ck[0]} in {ck_path}; continue with: "
                        f"ccledu train --resume {rundir.path}")
            elif rundir is not None:
                hint = "no epoch was completed, so there is no checkpoint"
            else:
                hint = "nothing was saved (no --out)"
            raise Interrupted(f"interrupted after epoch {done} of {config.epochs}; {hint}",
                              epoch=done, checkpoint=str(ck_path) if last_ck[0] else None) from None
        except Exception as e:
            record(partial("failed", message=f"{type(e).__name__}: {e}"))
            raise
    metrics = {
        "status": "finished",
        "epochs_completed": len(history),
        "resumed_after_epoch": int(state["epoch"]) if state is not None else None,
        **{f"test_{k}": v for k, v in sorted(scores.items())},
        "best_epoch": best_epoch,
        "config": dataclasses.asdict(config),
        "rule_config": rule.config(),
        "model": model.spec(),
        "history": history,
        **({"selections": selections(history)} if config.track_test else {}),
        "checkpoint": str(ck_path) if ck_path is not None else None,
        "total_seconds": time.perf_counter() - t_start,
        "ccledu_version": __version__,
        "machine": machine_info(config.backend),
    }
    label, value = (("test accuracy", f"{100 * scores['accuracy']:.2f} %") if "accuracy" in scores
                    else ("test loss", f"{scores['loss']:.5f}"))
    result = f"{label} {value}"
    if progress:
        print(f"{label} (epoch {best_epoch}, lowest validation loss): {value}")
    if rundir is not None:
        try:
            path = rundir.write_metrics(metrics)
            figures = rule.figures(model, test[0], rundir.path, scores)
        except OSError as e:
            raise OutputError(
                f"the run finished ({result}, epoch {best_epoch}) but {rundir.path} could not be "
                f"written: {e.strerror or e}; the final weights are in {ck_path}") from None
        if progress:
            print(f"wrote {', '.join(str(p) for p in [path, *figures])}")
    metrics["_model"] = model
    metrics["_rule"] = rule
    return metrics


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)



def quick_mode() -> bool:
    """True when CCLEDU_QUICK is set (chapters and CI shrink data and epochs)."""
    return os.environ.get("CCLEDU_QUICK", "").strip() not in ("", "0", "false", "no")
