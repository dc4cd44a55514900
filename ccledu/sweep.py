"""``ccledu sweep SPEC``: grids of training runs, resumable, on a local process pool or on Dask.

A *spec* (TOML, YAML or JSON) names the runs. Every run is one ``train.run(TrainConfig(...))``
and lives in its own folder ``<root>/runs/<hash>/`` where ``hash`` is the first 12 hex digits of
the SHA-256 of its *resolved* configuration (``train.resolve``: every default filled in) written
as canonical JSON (sorted keys, no spaces; ints in float fields written as floats; ``out`` and
``data_root`` left out: they say where, not what). Two specs asking for the same run share it.

Spec layout (all keys optional except ``groups`` or ``base``)::

    name = "bp-lr"                      # title of the results tables
    root = "../results/bp-lr"           # where runs go (relative to the spec's folder)
    seeds = [0, 1]                      # seeds of every setting (no [select])
    [base]                              # TrainConfig fields of every run
    data = "mnist"
    epochs = 100
    [[groups]]                          # one block of settings; a setting = one grid point
    name = "bp"
    set = { rule = "bp", activation = "tanh" }          # fixed fields of this group
    grid = { lr_forward = [0.1, 0.2], clip_forward = [0.5, 1] }   # cartesian product
    # points = [{ lr_forward = 0.1 }, { lr_forward = 0.3, batch_size = 64 }]  # a list axis
    [select]                            # optional: the paper's protocol, per group
    metric = "val_accuracy"             # or "val_loss" (lower is better)
    checkpoint = "lowest_val_loss"      # the epoch whose numbers count (see train.selections)
    search_seeds = [0, 1, 2, 3, 4]
    final_seeds = [0, 1, 2, 3, 4]

A grid key ``"a+b"`` sets fields a and b to the same value (``"lr_forward+lr_feedback"``); a key
``"rule_options.X"`` sets one entry of ``rule_options``; ``points`` (a list of tables) is one more
axis of the product. Group ``seeds`` override the top-level ones.

**Selection (``[select]``).** For every group: run each setting with every search seed; the
setting with the best *mean validation* metric over the search seeds is chosen (ties: the first
in grid order; a diverged run counts as the worst value, so a setting with one is only chosen
when every setting diverged); then the chosen setting runs with every final seed, and the
group's result is the mean ± std (ddof 1) of the *test* accuracy over the final seeds. Test
numbers are never read while choosing. The numbers of a run are those of its checkpoint epoch:
``lowest_val_loss`` (``metrics.json``'s headline, the public code's choice), or, for runs with
``track_test``, ``highest_val_accuracy`` / ``last_epoch`` (``metrics["selections"]``).

**Resuming.** A run is done when its ``metrics.json`` says ``status`` "finished" or "diverged"
(a diverged setting is a valid, bad, result) or, for files written before ``status`` existed,
holds ``test_accuracy``. Anything else (no file, unreadable file, "interrupted") is run again
(``train.run`` resumes from the folder's checkpoint where it keeps one). Running the same spec
again therefore only does what is missing.

**Executors.** Default: a local ``concurrent.futures.ProcessPoolExecutor`` (spawned processes)
with ``workers`` processes of ``threads`` BLAS threads each, ``workers × threads ≤ cores`` unless
asked otherwise. ``scheduler="tcp://host:8786"``: the runs go to that Dask distributed scheduler
(its workers need ccledu installed, the data, and the run folders on a shared filesystem);
``scheduler="local"`` starts a Dask ``LocalCluster`` of ``workers`` processes. See docs/sweeps.md.

**Stopping.** Ctrl-C, or SIGTERM to the ``ccledu sweep`` process (``kill PID``, a batch
system's time limit), stops the local pool's workers too: each records its run as
"interrupted" beside the run's per-epoch checkpoint, and the same command resumes. A worker
whose parent has died (even by SIGKILL) notices within a second and stops the same way, so no
orphaned run keeps training.

Outputs in ``root``: ``results.csv`` (one row per run), ``results.md`` (tables per group, the
selection), ``selection.json``; they are rewritten after every finished run.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

#: TrainConfig fields left out of a run's identity: where things are, not what is computed
NOT_HASHED = ("out", "data_root")
#: metrics.json statuses that mean "this run has its result"
DONE_STATUSES = ("finished", "diverged")
CHECKPOINTS = ("lowest_val_loss", "highest_val_accuracy", "last_epoch")
METRICS = {"val_accuracy": max, "val_loss": min}
SPEC_KEYS = {"name", "description", "root", "seeds", "base", "groups", "select"}
GROUP_KEYS = {"name", "set", "grid", "points", "seeds"}
SELECT_KEYS = {"metric", "checkpoint", "search_seeds", "final_seeds"}


class SpecError(ValueError):
    """The sweep spec is malformed (the message says what and how to fix it)."""


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------

def load_spec(path) -> dict:
    """Read a spec file (.toml, .yaml/.yml, .json) into a dict; relative ``root`` is taken from
    the spec's folder (default: ``<spec folder>/<spec name without suffix>``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib
            spec = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml
            spec = yaml.safe_load(text)
        elif suffix == ".json":
            spec = json.loads(text)
        else:
            raise SpecError(f"sweep spec {path}: unknown format {suffix!r}; use .toml, .yaml or .json")
    except SpecError:
        raise
    except Exception as e:  # noqa: BLE001  (each parser has its own error class)
        raise SpecError(f"sweep spec {path} could not be parsed: {e}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"sweep spec {path} must be a table/mapping at the top level")
    root = Path(spec.get("root", path.stem))
    spec["root"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    spec.setdefault("name", path.stem)
    return spec


def _train_fields():
    from .train import TrainConfig
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_fields(d: dict, where: str):
    fields = _train_fields()
    for key in d:
        for name in key.split("+"):
            base = name.split(".", 1)[0]
            if base not in fields:
                raise SpecError(f"{where}: {name!r} is not a training setting; valid ones: "
                                f"{sorted(fields)} (a grid key 'a+b' sets two, "
                                f"'rule_options.X' one rule option)")
            if "." in name and base != "rule_options":
                raise SpecError(f"{where}: only rule_options takes a dotted key, not {name!r}")


def _apply(settings: dict, key: str, value) -> None:
    for name in key.split("+"):
        if name.startswith("rule_options."):
            opts = dict(settings.get("rule_options") or {})
            opts[name.split(".", 1)[1]] = value
            settings["rule_options"] = opts
        else:
            settings[name] = value


def _seeds(value, where: str) -> list:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        raise SpecError(f"{where} must be a non-empty list of integer seeds, e.g. [0, 1, 2]")
    return list(dict.fromkeys(value))


def validate(spec: dict) -> dict:
    """Check a spec dict and return it normalised: every group has ``name``, ``set``, ``axes``
    (list of (key, values)), ``seeds``; ``select`` (or None) has all its keys."""
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise SpecError(f"sweep spec: unknown keys {unknown}; allowed: {sorted(SPEC_KEYS)}")
    base = dict(spec.get("base") or {})
    if not isinstance(base, dict):
        raise SpecError("sweep spec: [base] must be a table of training settings")
    _check_fields(base, "[base]")
    groups = spec.get("groups")
    if groups is None:
        groups = [{"name": spec.get("name", "sweep")}]
    if not isinstance(groups, list) or not groups:
        raise SpecError("sweep spec: 'groups' must be a non-empty list of tables ([[groups]])")
    select = spec.get("select")
    if select is not None:
        if not isinstance(select, dict):
            raise SpecError("sweep spec: [select] must be a table")
        bad = sorted(set(select) - SELECT_KEYS)
        if bad:
            raise SpecError(f"[select]: unknown keys {bad}; allowed: {sorted(SELECT_KEYS)}")
        select = {"metric": select.get("metric", "val_accuracy"),
                  "checkpoint": select.get("checkpoint", "lowest_val_loss"),
                  "search_seeds": _seeds(select.get("search_seeds", [0]), "[select] search_seeds"),
                  "final_seeds": _seeds(select.get("final_seeds", [0, 1, 2, 3, 4]),
                                        "[select] final_seeds")}
        if select["metric"] not in METRICS:
            raise SpecError(f"[select] metric {select['metric']!r}: choose one of {sorted(METRICS)}")
        if select["checkpoint"] not in CHECKPOINTS:
            raise SpecError(f"[select] checkpoint {select['checkpoint']!r}: choose one of "
                            f"{list(CHECKPOINTS)}")
        if spec.get("seeds") is not None:
            raise SpecError("sweep spec: with [select], give the seeds as search_seeds and "
                            "final_seeds there, not as 'seeds'")
    top_seeds = _seeds(spec.get("seeds", [0]), "'seeds'") if select is None else None
    out, names = [], set()
    for i, g in enumerate(groups):
        where = f"group {i + 1}"
        if not isinstance(g, dict):
            raise SpecError(f"{where} must be a table")
        bad = sorted(set(g) - GROUP_KEYS)
        if bad:
            raise SpecError(f"{where}: unknown keys {bad}; allowed: {sorted(GROUP_KEYS)}")
        name = str(g.get("name", f"group{i + 1}"))
        if name in names:
            raise SpecError(f"two groups are named {name!r}; give each a different name")
        names.add(name)
        where = f"group {name!r}"
        fixed = dict(g.get("set") or {})
        _check_fields(fixed, f"{where} set")
        axes = []
        for key, values in (g.get("grid") or {}).items():
            _check_fields({key: None}, f"{where} grid")
            if not isinstance(values, list) or not values:
                raise SpecError(f"{where} grid: {key!r} must be a non-empty list of values")
            axes.append((key, list(values)))
        if g.get("points") is not None:
            pts = g["points"]
            if not isinstance(pts, list) or not pts or not all(isinstance(p, dict) for p in pts):
                raise SpecError(f"{where}: 'points' must be a non-empty list of tables")
            for p in pts:
                _check_fields(p, f"{where} points")
            axes.append(("points", pts))
        if select is not None and g.get("seeds") is not None:
            raise SpecError(f"{where}: with [select] the seeds come from [select], not the group")
        seeds = _seeds(g["seeds"], f"{where} seeds") if g.get("seeds") is not None else top_seeds
        out.append({"name": name, "set": fixed, "axes": axes, "seeds": seeds})
    if select is not None and select["checkpoint"] != "lowest_val_loss":
        for g in out:
            if not {**base, **g["set"]}.get("track_test"):
                raise SpecError(f"[select] checkpoint {select['checkpoint']!r} needs every run "
                                f"recorded with track_test = true (group {g['name']!r} is not)")
    return {"name": str(spec.get("name", "sweep")), "description": spec.get("description", ""),
            "root": spec.get("root", "sweep"), "base": base, "groups": out, "select": select}


def settings_of(group: dict) -> list:
    """[(point, settings)] of a normalised group, in grid order: ``point`` is what varies (the
    grid values by key, for the tables), ``settings`` the group's full TrainConfig fields."""
    keys = [k for k, _ in group["axes"]]
    out = []
    for combo in itertools.product(*[v for _, v in group["axes"]]):
        point, settings = {}, dict(group["set"])
        for key, value in zip(keys, combo):
            if key == "points":
                for k, v in value.items():
                    point[k] = v
                    _apply(settings, k, v)
            else:
                point[key] = value
                _apply(settings, key, value)
        out.append((point, settings))
    return out


# --------------------------------------------------------------------------------------------
# Identity of a run
# --------------------------------------------------------------------------------------------

def canonical(config: dict) -> dict:
    """The part of a resolved config that identifies a run: ``NOT_HASHED`` fields, ``None``
    fields and fields equal to their ``TrainConfig`` default dropped (so a field added to
    TrainConfig later, at its default, leaves existing run ids unchanged), ints written as
    floats in float fields (TOML's ``1`` and JSON's ``1.0`` agree)."""
    fields = _train_fields()
    out = {}
    for k, v in config.items():
        if k in NOT_HASHED or v is None or k not in fields:
            continue
        f = fields[k]
        if "float" in str(f.type) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if v == default and type(v) is type(default):
            continue
        out[k] = v
    return out


def config_hash(config: dict) -> str:
    """First 12 hex digits of SHA-256 over the canonical JSON of a resolved config."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_settings(settings: dict) -> dict:
    """TrainConfig fields -> the resolved config as a dict (``out`` None)."""
    from . import train as T

    try:
        cfg = T.TrainConfig.from_dict({k: v for k, v in settings.items() if k != "out"})
        check = getattr(T, "validate", None)          # range checks, where train.py has them
        cfg = T.resolve(check(cfg) if check else cfg)
        if check:
            cfg = check(cfg)
    except (TypeError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        shown = {k: v for k, v in settings.items() if k not in ("out", "data_root")}
        raise SpecError(f"a run of the sweep has bad settings ({msg}); its settings: {shown}") from None
    d = dataclasses.asdict(cfg)
    d["out"] = None
    return d


# --------------------------------------------------------------------------------------------
# Reading a run folder
# --------------------------------------------------------------------------------------------

def read_metrics(run_dir) -> dict | None:
    """metrics.json of a run folder, or None when missing or unreadable."""
    f = Path(run_dir) / "metrics.json"
    try:
        m = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def run_status(metrics: dict | None) -> str:
    """'finished' | 'diverged' | 'interrupted' | 'missing' (no readable metrics.json)."""
    if metrics is None:
        return "missing"
    status = metrics.get("status")
    if status in DONE_STATUSES:
        return status
    if status is None and "test_accuracy" in metrics:
        return "finished"
    return str(status or "interrupted")


def is_done(run_dir) -> bool:
    return run_status(read_metrics(run_dir)) in DONE_STATUSES


def run_numbers(metrics: dict, checkpoint: str = "lowest_val_loss") -> dict:
    """{val_loss, val_accuracy, test_accuracy, epoch} of a finished run at ``checkpoint``;
    a diverged run gives the worst values (val loss inf, accuracies nan)."""
    if run_status(metrics) == "diverged" or "test_accuracy" not in metrics:
        return {"epoch": None, "val_loss": math.inf, "val_accuracy": math.nan,
                "test_accuracy": math.nan}
    if checkpoint == "lowest_val_loss":
        e = metrics["best_epoch"]
        h = metrics["history"][e - 1]
        return {"epoch": e, "val_loss": h["val_loss"], "val_accuracy": h["val_accuracy"],
                "test_accuracy": metrics["test_accuracy"]}
    sel = metrics.get("selections") or {}
    if checkpoint not in sel:
        raise SpecError(f"checkpoint {checkpoint!r} needs runs recorded with track_test")
    s = sel[checkpoint]
    return {k: s[k] for k in ("epoch", "val_loss", "val_accuracy", "test_accuracy")}


# --------------------------------------------------------------------------------------------
# The task every executor runs
# --------------------------------------------------------------------------------------------

def _strip(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def execute(config: dict, out: str, threads: int = 1, keep_checkpoint: bool = False) -> dict:
    """Run one training run into folder ``out`` with ``threads`` BLAS threads; return its
    metrics (as written to ``out/metrics.json``).

    - A folder holding a checkpoint of an unfinished run (``train.run`` writes one per epoch)
      is resumed from it (``run(resume=out)``); when that fails (an unreadable checkpoint) the
      run starts again from scratch.
    - Divergence is a result: ``train.run`` records ``status`` "diverged" in metrics.json and
      raises ``DivergenceError``; a version of train.py that raises without recording gets one
      written here, with the error message.
    - A finished run's checkpoint is deleted unless ``keep_checkpoint`` (its metrics.json is its
      result; a checkpoint of the paper MLP is a few MB)."""
    global _RUNNING
    _RUNNING = True
    try:
        return _execute(config, out, threads, keep_checkpoint)
    finally:
        _RUNNING = False


def _execute(config: dict, out: str, threads: int, keep_checkpoint: bool) -> dict:
    import inspect

    from . import train as T

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover  (pip install 'ccledu[sweep]' brings it)
        import contextlib

        def threadpool_limits(limits):
            return contextlib.nullcontext()

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    ckpt = out_dir / getattr(T, "CHECKPOINT", "checkpoint.npz")
    can_resume = "resume" in inspect.signature(T.run).parameters
    with threadpool_limits(limits=int(threads)):
        try:
            metrics = None
            if can_resume and ckpt.is_file() and run_status(read_metrics(out_dir)) not in DONE_STATUSES:
                try:
                    metrics = T.run(None, progress=False, resume=str(out_dir))
                except T.DivergenceError:
                    raise
                except Exception:  # noqa: BLE001  (a torn or foreign checkpoint: start again)
                    metrics = None
            if metrics is None:
                metrics = T.run(T.TrainConfig.from_dict({**config, "out": str(out_dir)}),
                                progress=False)
            metrics = _strip(metrics)
        except T.DivergenceError as e:
            m = read_metrics(out_dir)
            if m is not None and run_status(m) == "diverged":
                metrics = m
            else:
                from .backend import machine_info
                metrics = {"status": "diverged", "message": str(e), "config": config,
                           "machine": machine_info(config.get("backend", "numpy"))}
                (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1,
                                                                 default=T.json_default))
    if run_status(metrics) == "finished" and not keep_checkpoint and ckpt.is_file():
        ckpt.unlink()
    return json.loads(json.dumps(metrics, default=T.json_default))


_RUNNING = False          # in a pool worker: True while :func:`execute` trains a run


def _interrupt_once(signum, frame):
    """SIGINT / SIGTERM in a pool worker: one KeyboardInterrupt (``train.run`` records the run
    as interrupted); later signals are ignored so they cannot cut that record short."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _watch_parent(parent: int, period: float = 1.0, grace: float = 30.0):
    """A pool worker's daemon thread: when the sweep process that spawned it is gone (the
    worker's parent pid changes), stop the run in progress as SIGTERM would, or exit at once
    when idle; give up waiting after ``grace`` seconds."""
    import signal
    while os.getppid() == parent:
        time.sleep(period)
    if _RUNNING:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
    os._exit(1)


def _init_worker(threads: int, parent: int | None = None):
    import signal
    import threading
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt_once)
        signal.signal(signal.SIGTERM, _interrupt_once)
    if parent is not None:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=int(threads))
    except ImportError:  # pragma: no cover
        pass


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


class LocalPool:
    """``workers`` spawned processes, each limited to ``threads`` BLAS threads."""

    def __init__(self, workers: int, threads: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers, self.threads = workers, threads
        self.pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                                        initargs=(threads, os.getpid()),
                                        mp_context=multiprocessing.get_context("spawn"))

    def describe(self) -> str:
        return f"local process pool, {self.workers} worker(s) × {self.threads} BLAS thread(s)"

    def submit(self, fn, *args, key=None):
        return self.pool.submit(fn, *args)

    def as_completed(self, futures):
        from concurrent.futures import as_completed
        return as_completed(futures)

    def close(self, cancel=False):
        """Shut the pool down; ``cancel``: drop the queued runs and stop the running ones
        (SIGTERM to each worker: it records its run as interrupted, see :func:`_interrupt_once`)
        and wait for the workers to exit."""
        if cancel:
            import signal
            procs = list((getattr(self.pool, "_processes", None) or {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    try:
                        os.kill(p.pid, signal.SIGTERM)
                    except OSError:  # pragma: no cover  (exited meanwhile)
                        pass
            for p in procs:
                p.join(timeout=60)
            return
        self.pool.shutdown(wait=True)


@contextlib.contextmanager
def local_cluster_environment():
    """A context for starting a Dask ``LocalCluster`` whose workers run in this process's own
    environment, as the local pool's do, and which leaves that environment as it found it.

    Dask's nanny writes its ``distributed.nanny.pre-spawn-environ`` settings (glibc's
    ``MALLOC_TRIM_THRESHOLD_``, the BLAS thread variables) into the *parent's* ``os.environ``
    and leaves them there, so every process started later inherits them. That is not harmless
    here: measured on an AMD EPYC without AVX-512 (NumPy dispatching X86_V3), the same tiny
    float32 run gives a validation loss of 1.492165132002397 in a fresh process and
    1.4921653053977273 with ``MALLOC_TRIM_THRESHOLD_=65536`` alone changed (the allocator then
    places arrays differently; which float32 operation is sensitive to that was not isolated).
    ccledu sets the BLAS threads itself (``threadpoolctl``), so the nanny's settings are switched
    off and the environment restored."""
    import dask
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
            yield
    finally:
        for k in set(os.environ) - set(saved):
            del os.environ[k]
        os.environ.update(saved)


class DaskExecutor:
    """Runs go to a Dask distributed scheduler (``address``), or to a new ``LocalCluster`` of
    ``workers`` processes with one thread each when ``address == "local"``."""

    def __init__(self, address: str, workers: int, threads: int, timeout: float = 20):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise RuntimeError("--scheduler needs Dask distributed: pip install 'ccledu[sweep]' "
                               "(or pip install 'dask[distributed]')") from None
        self.threads, self.cluster = threads, None
        if address == "local":
            with local_cluster_environment():
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                            processes=True, dashboard_address=None)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(address, timeout=f"{timeout}s")
            except (OSError, TimeoutError) as e:
                raise RuntimeError(f"cannot reach the Dask scheduler at {address!r} ({e}); start "
                                   f"one with `dask scheduler` (or dask-jobqueue, see "
                                   f"docs/sweeps.md) and pass its tcp://host:port") from None
        self.address = address

    def describe(self) -> str:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        where = "Dask LocalCluster" if self.cluster is not None else f"Dask scheduler {self.address}"
        return (f"{where}, {len(workers)} worker(s), {threads} task thread(s), "
                f"{self.threads} BLAS thread(s) per run")

    def submit(self, fn, *args, key=None):
        return self.client.submit(fn, *args, pure=False,
                                  key=f"ccledu-run-{key}-{uuid.uuid4().hex[:8]}")

    def as_completed(self, futures):
        from distributed import as_completed
        return as_completed(futures)

    def close(self, cancel=False):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def make_executor(scheduler: str | None = None, workers: int | None = None,
                  threads: int | None = None, timeout: float = 20):
    """The executor for ``scheduler`` (None: local pool). Defaults: ``workers`` = cores //
    threads, ``threads`` = max(1, cores // workers); a warning when workers × threads > cores
    on the local machine."""
    cores = available_cores()
    if workers is not None and workers < 1:
        raise ValueError("--workers must be at least 1")
    if threads is not None and threads < 1:
        raise ValueError("--threads must be at least 1")
    if threads is None:
        threads = max(1, cores // workers) if workers else 1
    if workers is None:
        workers = max(1, cores // threads)
    if (scheduler in (None, "local")) and workers * threads > cores:
        print(f"ccledu sweep: warning: {workers} workers × {threads} BLAS threads > {cores} cores: "
              f"runs will compete for the CPU", file=sys.stderr)
    if scheduler:
        return DaskExecutor(scheduler, workers, threads, timeout)
    return LocalPool(workers, threads)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    group: str
    point: dict
    seed: int
    settings: dict          # TrainConfig fields as asked (before resolution)
    config: dict            # resolved
    hash: str
    dir: Path
    index: int = 0          # position of the setting in its group's grid order
    roles: set = dataclasses.field(default_factory=set)

    def label(self) -> str:
        return f"{self.group} {point_label(self.point)} seed {self.seed}"


def point_label(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "(one setting)"


class Sweep:
    """A validated spec with its runs. ``run()`` trains what is missing; ``tables()`` renders."""

    def __init__(self, spec: dict, root=None, data_root: str | None = None, groups=None,
                 keep_checkpoints: bool = False):
        self.spec = validate(spec)
        self.keep_checkpoints = keep_checkpoints
        self.only_groups = None          # run only these groups (the tables show every group)
        if groups:
            names = [g["name"] for g in self.spec["groups"]]
            unknown = sorted(set(groups) - set(names))
            if unknown:
                raise SpecError(f"no group named {unknown} in the spec; its groups: {names}")
            self.only_groups = set(groups)
        self.root = Path(root or self.spec["root"])
        self.data_root = data_root
        self.runs: dict[str, Run] = {}
        self.settings = {}      # group -> [(point, settings)]
        for g in self.spec["groups"]:
            pts = settings_of(g)
            self.settings[g["name"]] = pts
            seeds = self.spec["select"]["search_seeds"] if self.spec["select"] else g["seeds"]
            for i, (point, settings) in enumerate(pts):
                for seed in seeds:
                    self._add(g["name"], point, settings, seed, "search" if self.spec["select"]
                              else "grid", i)

    def _add(self, group, point, settings, seed, role, index) -> Run:
        full = {**self.spec["base"], **settings, "seed": seed}
        if self.data_root:
            full["data_root"] = self.data_root
        config = resolve_settings(full)
        h = config_hash(config)
        key = (group, h)
        run = self.runs.get(key)
        if run is None:
            run = Run(group, point, seed, full, config, h, self.root / "runs" / h, index)
            self.runs[key] = run
        run.roles.add(role)
        return run

    # ---------------------------------------------------------------- selection
    def selection(self) -> dict:
        """{group: {...}} the paper's protocol on whatever has finished: per setting the mean
        validation metric over the search seeds, the chosen setting, and its final runs."""
        sel = self.spec["select"]
        if sel is None:
            return {}
        out = {}
        for g in self.spec["groups"]:
            rows, complete = [], True
            for point, settings in self.settings[g["name"]]:
                vals, n_done, n_div = [], 0, 0
                for seed in sel["search_seeds"]:
                    run = self.runs[(g["name"], self._hash(settings, seed))]
                    m = read_metrics(run.dir)
                    if run_status(m) not in DONE_STATUSES:
                        continue
                    n_done += 1
                    num = run_numbers(m, sel["checkpoint"])
                    if run_status(m) == "diverged":
                        n_div += 1
                    vals.append(num[sel["metric"]])
                full = n_done == len(sel["search_seeds"])
                complete &= full
                rows.append({"point": point, "settings": settings, "n": n_done, "diverged": n_div,
                             "value": _worst_mean(vals, sel["metric"]) if vals else None,
                             "complete": full})
            ranked = [i for i, r in enumerate(rows) if r["complete"]]
            chosen = (ranked[choose([rows[i] for i in ranked], sel["metric"])]
                      if ranked else None)        # an index into rows (grid order)
            entry = {"settings": rows, "searched": len(ranked), "total": len(rows),
                     "complete": complete, "chosen": chosen, "final": []}
            if chosen is not None:
                for seed in sel["final_seeds"]:
                    h = self._hash(rows[chosen]["settings"], seed)
                    run = self.runs.get((g["name"], h))
                    m = read_metrics(run.dir) if run else read_metrics(self.root / "runs" / h)
                    entry["final"].append({"seed": seed, "hash": h, "status": run_status(m),
                                           **(run_numbers(m, sel["checkpoint"])
                                              if run_status(m) in DONE_STATUSES else {})})
            out[g["name"]] = entry
        return out

    def _hash(self, settings, seed) -> str:
        full = {**self.spec["base"], **settings, "seed": seed}
        return config_hash(resolve_settings(full))

    def add_final_runs(self) -> int:
        """Add the final-seed runs of every group whose search is complete; returns how many."""
        n = 0
        for name, entry in self.selection().items():
            if entry["complete"] and entry["chosen"] is not None:
                point, settings = self.settings[name][entry["chosen"]]
                for seed in self.spec["select"]["final_seeds"]:
                    before = len(self.runs)
                    self._add(name, point, settings, seed, "final", entry["chosen"])
                    n += len(self.runs) - before
        return n

    # ---------------------------------------------------------------- running
    def todo(self) -> list:
        """The runs without a result (of the ``groups`` asked for, when given)."""
        return [r for r in self.runs.values() if not is_done(r.dir)
                and (self.only_groups is None or r.group in self.only_groups)]

    def run(self, executor, *, only: str | None = None, progress: bool = True,
            log=print) -> dict:
        """Train every missing run (search, then final when ``only`` is not "search");
        returns {"ran": n, "failed": [(label, error)], "kept": n}."""
        self.root.mkdir(parents=True, exist_ok=True)
        report = {"ran": 0, "failed": [], "kept": 0, "executor": executor.describe()}
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        try:
            return self._run(executor, report, only, progress, log)
        finally:
            self._log_invocation(report, started, only)

    def _log_invocation(self, report, started, only):
        """Append one line per invocation to ``<root>/sweep_log.jsonl``: when, on what
        (executor, workers), what it did; the cost reports read the workers used from it."""
        entry = {"started": started,
                 "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                 "executor": report["executor"], "ran": report["ran"], "kept": report["kept"],
                 "failed": len(report["failed"]), "only": only or "all",
                 "groups": sorted(self.only_groups) if self.only_groups else "all"}
        try:
            with open(self.root / "sweep_log.jsonl", "a") as fh:
                fh.write(json.dumps(entry) + "\n")
        except OSError:  # pragma: no cover  (the results are in the run folders anyway)
            pass

    def _run(self, executor, report, only, progress, log) -> dict:
        bar = None
        phases = ["search", "final"] if self.spec["select"] and only != "search" else ["search"]
        for phase in phases:
            if phase == "final":
                self.add_final_runs()
            todo = self.todo()
            done = sum(is_done(r.dir) for r in self.runs.values())
            if phase == phases[0]:
                report["kept"] = done
                log(f"ccledu sweep {self.spec['name']}: {len(self.runs)} run(s) in {self.root}; "
                    f"{done} done already, {len(todo)} to run on {executor.describe()}")
            else:
                log(f"final seeds of the chosen settings: {len(todo)} run(s) to train")
            if progress and bar is None:
                try:
                    from tqdm.auto import tqdm
                    bar = tqdm(total=done + len(todo), initial=done, unit="run", desc="sweep",
                               dynamic_ncols=True)
                except ImportError:  # pragma: no cover
                    bar = None
            elif bar is not None:
                bar.total = bar.n + len(todo)
                bar.refresh()
            futures = {}
            for r in todo:
                futures[executor.submit(execute, r.config, str(r.dir), executor.threads,
                                        self.keep_checkpoints, key=r.hash)] = r
            try:
                for fut in executor.as_completed(list(futures)):
                    r = futures[fut]
                    try:
                        metrics = fut.result()
                    except Exception as e:  # noqa: BLE001  (a failed run is reported, not fatal)
                        report["failed"].append((r.label(), f"{type(e).__name__}: {e}"))
                        log(f"failed: {r.label()} ({r.dir}): {type(e).__name__}: {e}")
                    else:
                        report["ran"] += 1
                        if read_metrics(r.dir) is None:   # worker without the shared folder
                            r.dir.mkdir(parents=True, exist_ok=True)
                            (r.dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
                        num = run_numbers(metrics)
                        if bar is not None:
                            bar.set_postfix_str(f"{r.group} {point_label(r.point)} s{r.seed}: "
                                                f"val {100 * num['val_accuracy']:.2f} %")
                    if bar is not None:
                        bar.update(1)
                    self.write_tables(report)
            except KeyboardInterrupt:
                executor.close(cancel=True)
                raise
        if bar is not None:
            bar.close()
        self.write_tables(report)
        return report

    # ---------------------------------------------------------------- outputs
    def rows(self) -> list:
        """One dict per run of the sweep (CSV rows), in spec order."""
        varied = self.varied_keys()
        out = []
        ck = self.spec["select"]["checkpoint"] if self.spec["select"] else "lowest_val_loss"
        for r in self.runs.values():
            m = read_metrics(r.dir)
            status = run_status(m)
            num = run_numbers(m, ck) if status in DONE_STATUSES else {}
            row = {"run": r.hash, "group": r.group, "role": "+".join(sorted(r.roles)),
                   "seed": r.seed, **{k: _cell(r.point.get(k, "")) for k in varied},
                   "status": status, "epoch": num.get("epoch", ""),
                   "val_loss": _num(num.get("val_loss")),
                   "val_accuracy": _num(num.get("val_accuracy")),
                   "test_accuracy": _num(num.get("test_accuracy")),
                   "epochs_run": len(m.get("history", [])) if m else "",
                   "seconds": _num(m.get("total_seconds")) if m else ""}
            out.append(row)
        return out

    def varied_keys(self) -> list:
        keys = []
        for pts in self.settings.values():
            for point, _ in pts:
                keys += [k for k in point if k not in keys]
        return keys

    def write_tables(self, report: dict | None = None):
        rows = self.rows()
        self.root.mkdir(parents=True, exist_ok=True)
        if rows:
            with open(self.root / "results.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        sel = self.selection()
        if sel:
            (self.root / "selection.json").write_text(json.dumps(
                _jsonable(sel), indent=1, allow_nan=False) + "\n")
        (self.root / "results.md").write_text(self.markdown(rows, sel, report))

    def markdown(self, rows, sel, report) -> str:
        lines = [f"# Sweep {self.spec['name']}", ""]
        if self.spec["description"]:
            lines += [self.spec["description"].strip(), ""]
        done = [r for r in rows if r["status"] in DONE_STATUSES]
        secs = [float(r["seconds"]) for r in done if r["seconds"] not in ("", None)]
        lines += [f"{len(done)} of {len(rows)} runs done"
                  + (f" ({sum(r['status'] == 'diverged' for r in done)} diverged)" if done else "")
                  + (f"; wall time per run {_fmt_s(sum(secs) / len(secs))} (min {_fmt_s(min(secs))},"
                     f" max {_fmt_s(max(secs))}), {_fmt_s(sum(secs))} of run time in all"
                     if secs else "") + ".",
                  f"Runs: `{self.root}/runs/<hash>/metrics.json` (run id = first 12 hex digits of "
                  f"the SHA-256 of the resolved configuration); every run in `results.csv`. "
                  f"Resume or extend with `ccledu sweep SPEC` again.", ""]
        if report and report.get("executor"):
            lines += [f"Last invocation: {report['executor']}; {report['ran']} run(s) trained, "
                      f"{report['kept']} kept, {len(report['failed'])} failed.", ""]
        if sel:
            lines += self._selection_md(sel)
        lines += ["## Settings", ""]
        for g in self.spec["groups"]:
            lines += self._group_md(g, rows, sel)
        return "\n".join(lines) + "\n"

    def _selection_md(self, sel) -> list:
        s = self.spec["select"]
        lines = ["## Selection (the paper's protocol)", "",
                 f"Per group: the setting with the {'highest' if s['metric'] == 'val_accuracy' else 'lowest'} "
                 f"mean {s['metric']} over search seeds {s['search_seeds']} (checkpoint: "
                 f"{s['checkpoint']}), then the test accuracy of that setting over final seeds "
                 f"{s['final_seeds']} (mean ± std). Test numbers are not read while choosing.", "",
                 "| group | searched | chosen setting | search " + s["metric"] + " | final seeds done | "
                 "test accuracy (%) |", "|---|---|---|---|---|---|"]
        for name, e in sel.items():
            if e["chosen"] is None:
                lines.append(f"| {name} | {e['searched']} of {e['total']} | — | — | — | — |")
                continue
            c = e["settings"][e["chosen"]]
            acc = [f["test_accuracy"] for f in e["final"] if f["status"] == "finished"]
            partial = "" if e["complete"] else " (provisional: search incomplete)"
            lines.append(f"| {name} | {e['searched']} of {e['total']} | {point_label(c['point'])}"
                         f"{partial} | {_metric(c['value'], s['metric'])} | {len(acc)} of "
                         f"{len(e['final'])} | {mean_std(acc)} |")
        return lines + [""]

    def _group_md(self, g, rows, sel) -> list:
        s = self.spec["select"]
        keys = [k for k in self.varied_keys() if any(k in p for p, _ in self.settings[g["name"]])]
        lines = [f"### {g['name']}", "", f"Fixed: {_fixed_label(self.spec['base'], g['set'])}", "",
                 "| " + " | ".join(keys + ["seeds done", "val accuracy (%)", "val loss",
                                           "test accuracy (%)" + (" (not used to choose)" if s else ""),
                                           "diverged"]) + " |",
                 "|" + "---|" * (len(keys) + 5)]
        chosen = (sel.get(g["name"]) or {}).get("chosen") if s else None
        by_hash = {r["run"]: r for r in rows if r["group"] == g["name"]}
        for i, (point, settings) in enumerate(self.settings[g["name"]]):
            mine = [by_hash[r.hash] for r in self.runs.values()
                    if r.group == g["name"] and r.index == i]
            if s:   # the table of the search: search seeds only
                mine = [r for r in mine if r["seed"] in s["search_seeds"]]
            fin = [r for r in mine if r["status"] == "finished"]
            va = [float(r["val_accuracy"]) for r in fin]
            vl = [float(r["val_loss"]) for r in fin]
            te = [float(r["test_accuracy"]) for r in fin]
            mark = " **(chosen)**" if chosen == i else ""
            lines.append("| " + " | ".join([str(_cell(point.get(k, ""))) for k in keys]
                                           + [f"{len(fin)} of {len(mine)}{mark}", mean_std(va),
                                              f"{sum(vl) / len(vl):.4f}" if vl else "—",
                                              mean_std(te),
                                              str(sum(r["status"] == "diverged" for r in mine))])
                         + " |")
        return lines + [""]


def choose(rows: list, metric: str) -> int:
    """Index in ``rows`` of the best ``value`` (max for val_accuracy, min for val_loss); the
    first on a tie. Only validation numbers are passed in."""
    better = METRICS[metric]
    vals = [r["value"] for r in rows]
    best = better(vals)
    return next(i for i, r in enumerate(rows) if r["value"] == best) if rows else None


def _worst_mean(vals, metric):
    worst = -math.inf if metric == "val_accuracy" else math.inf
    if any(v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))) for v in vals):
        return worst
    return sum(vals) / len(vals)


def mean_std(fractions) -> str:
    """'mean ± std' in percent (ddof 1; one value: 'x (1 seed)'); '—' for none."""
    a = [100 * float(v) for v in fractions]
    if not a:
        return "—"
    m = sum(a) / len(a)
    if len(a) == 1:
        return f"{m:.2f} (1 seed)"
    sd = math.sqrt(sum((v - m) ** 2 for v in a) / (len(a) - 1))
    return f"{m:.2f} ± {sd:.2f}"


def _metric(v, metric):
    if v is None or (isinstance(v, float) and math.isinf(v)):
        return "diverged"
    return f"{100 * v:.2f} %" if metric == "val_accuracy" else f"{v:.4f}"


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _num(v):
    if v is None:
        return ""
    return v


def _cell(v):
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


def _fixed_label(base, fixed) -> str:
    d = {**base, **fixed}
    return ", ".join(f"{k}={v}" for k, v in d.items()) or "project defaults"


def _jsonable(sel):
    """The selection as strict JSON data (non-finite numbers, e.g. a diverged setting's value,
    as null)."""
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o if isinstance(o, (str, int, float, bool)) or o is None else str(o)

    out = {}
    for name, e in sel.items():
        out[name] = clean(e)
        if e["chosen"] is not None:
            out[name]["chosen_setting"] = clean(e["settings"][e["chosen"]]["point"])
    return out


def run_sweep(spec: dict, *, root=None, scheduler=None, workers=None, threads=None,
              only=None, progress=True, data_root=None, groups=None, timeout=20,
              keep_checkpoints=False, log=print) -> tuple:
    """Build the sweep of ``spec`` (a dict as ``load_spec`` returns), run what is missing and
    write its tables. Returns (sweep, report)."""
    sweep = Sweep(spec, root=root, data_root=data_root, groups=groups,
                  keep_checkpoints=keep_checkpoints)
    ex = make_executor(scheduler, workers, threads, timeout)
    try:
        report = sweep.run(ex, only=only, progress=progress, log=log)
    finally:
        ex.close()
    return sweep, report


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def add_parser(sub):
    p = sub.add_parser(
        "sweep", help="run a grid of trainings from a spec file (resumable, local or Dask)",
        description="Run every configuration of a sweep spec (.toml, .yaml, .json) that has no "
                    "result yet, each in <root>/runs/<config hash>/, then write results.csv, "
                    "results.md and (with [select]) the paper's protocol selection. "
                    "See docs/sweeps.md.")
    p.add_argument("spec", help="sweep spec file")
    p.add_argument("--out", help="root folder of the runs and tables (default: the spec's root)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs in parallel (default: cores // threads; with --scheduler local, the "
                        "number of Dask worker processes)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per run (default: max(1, cores // workers))")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786) to run on a cluster, or 'local' "
                        "for a Dask LocalCluster; default: a local process pool")
    p.add_argument("--connect-timeout", type=float, default=20,
                   help="seconds to wait for the Dask scheduler (default 20)")
    p.add_argument("--only", choices=["search", "all"], default="all",
                   help="'search': run the search phase of [select] only (default all)")
    p.add_argument("--data-root", default=None, help="folder holding <dataset>/ (not part of a "
                   "run's identity; default $CCLEDU_DATA, then the embedded data/)")
    p.add_argument("--groups", default=None,
                   help="comma-separated group names: train only these groups' runs (the "
                        "tables still show every group)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite the tables from the finished runs and list what "
                        "is missing")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the checkpoint.npz of finished runs (default: deleted; an "
                        "unfinished run's checkpoint is always kept and resumed from)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)
    return p


def cmd_sweep(args) -> int:
    spec = load_spec(args.spec)
    if args.report_only:
        sweep = Sweep(spec, root=args.out, data_root=args.data_root, groups=_groups(args))
        if sweep.spec["select"] and args.only != "search":
            sweep.add_final_runs()
        todo = sweep.todo()
        sweep.write_tables()
        print(f"{sum(is_done(r.dir) for r in sweep.runs.values())} of {len(sweep.runs)} runs "
              f"done; tables in "
              f"{sweep.root}/results.md")
        for r in todo:
            print(f"missing: {r.label()} -> {r.dir}")
        return 0
    try:
        sweep, report = _run_cli(spec, args)
    except KeyboardInterrupt:
        print(f"ccledu sweep: interrupted; finished runs are kept and unfinished ones resume from "
              f"their checkpoints: run `ccledu sweep {args.spec}` again", file=sys.stderr)
        return 130
    print(f"{report['ran']} run(s) trained, {report['kept']} kept, {len(report['failed'])} failed; "
          f"tables in {sweep.root}/results.md")
    return 1 if report["failed"] else 0


def _run_cli(spec, args):
    return run_sweep(spec, root=args.out, scheduler=args.scheduler, workers=args.workers,
                     threads=args.threads, only=args.only, progress=not args.quiet,
                     data_root=args.data_root, groups=_groups(args), timeout=args.connect_timeout,
                     keep_checkpoints=args.keep_checkpoints)


def _groups(args):
    return [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
