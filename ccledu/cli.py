"""Command line: ``ccledu train | trace | verify | course | bench`` (also ``python -m ccledu``).

Exit status and messages:

* 0: done; 1: ``verify`` found a tensor that differs;
* 2: an error in what was asked for (a flag outside its range, an unknown name, missing or
  damaged data, a bad file, an unusable ``--out``): one ``ccledu: error: ...`` line, never a
  traceback. Any other exception is caught by the top-level guard of :func:`main` and printed
  the same way with a hint; ``--debug`` (anywhere on the line, or ``CCLEDU_DEBUG=1``) shows
  the traceback instead;
* 3: the training run diverged; 130: interrupted (Ctrl-C), with one line saying where the
  checkpoint is and how to resume.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import signal
import sys
import traceback

from .cliargs import (Parser, UsageError, add_rule_option_flags, collect_rule_options,  # noqa: F401
                      ranged, ranged_type)
from .rules import RULES

TRAIN_FIELDS = [
    # (flag, TrainConfig field, type, help)
    ("--epochs", "epochs", int, "number of epochs (default 100, the paper's)"),
    ("--batch-size", "batch_size", int, "mini-batch size (default 256; CCL CNN on CIFAR: 128)"),
    ("--lr-forward", "lr_forward", float, "learning rate of the forward weights (default 1.0)"),
    ("--lr-feedback", "lr_feedback", float, "learning rate of the feedback weights, CCL (default 1.0)"),
    ("--momentum-forward", "momentum_forward", float, "SGD momentum, forward group (default 0)"),
    ("--momentum-feedback", "momentum_feedback", float, "SGD momentum, feedback group (default 0)"),
    ("--weight-decay-forward", "weight_decay_forward", float, "weight decay, forward group (default 0)"),
    ("--weight-decay-feedback", "weight_decay_feedback", float, "weight decay, feedback group (default 0)"),
    ("--clip-forward", "clip_forward", float, "global-norm clip of the forward group's gradient, 0 = off (default 1)"),
    ("--clip-feedback", "clip_feedback", float, "global-norm clip of the feedback group's gradient (default 1)"),
    ("--warmup", "warmup", int, "warm-up steps: the loss is scaled by (step+1)/warmup (default 0)"),
    ("--cosine-tmax", "cosine_tmax", int, "cosine schedule period in epochs, 0 = constant lr (default 0)"),
    ("--eta-min", "eta_min", float, "final learning rate of the cosine schedule (default 1e-3)"),
    ("--optimizer", "optimizer", str, "sgd or adam (torch.optim.Adam semantics; default sgd)"),
    ("--activation", "activation", str, "hidden activation: relu, elu, tanh, leaky_relu, sigmoid (default elu)"),
    ("--limit-train", "limit_train", int, "use only the first N (shuffled) training examples"),
    ("--limit-test", "limit_test", int, "use only the first N test examples"),
    ("--data-root", "data_root", str, "directory holding <dataset>/ folders (default: $CCLEDU_DATA, then the embedded data/)"),
    ("--preset", "preset", str, "named configuration of the rule: ff cpu, cnn, paper; the public "
                                "implementations' loewex, mpezeshki (ff), biotorch (fa, dfa), "
                                "public (ccl); ccl-ae / bp-ae paper (docs/validating.md)"),
    ("--warmup-mode", "warmup_mode", str, "global: warm-up factor (t+1)/warmup over all steps t "
                                          "(default); epoch: the batch index within the epoch, as "
                                          "the public CCL scripts count it"),
    ("--cooldown", "cooldown", str, "none (default) or linear: the learning rates stay constant "
                                    "for the first half of the epochs, then fall linearly "
                                    "(loeweX/Forward-Forward's schedule, preset loewex)"),
    ("--inputs", "inputs", str, "normalized (default: (x/255 - mean)/std) or pixels (x/255 in "
                                "[0, 1], as loeweX/Forward-Forward feeds its network)"),
    ("--eval-every", "eval_every", int, "evaluate (validation, test with --track-test, "
                                        "diagnostics) after every k-th epoch and the last "
                                        "(default 1); the checkpoint is chosen among those"),
    ("--val-fraction", "val_fraction", float, "share of the training set held out for "
                                              "validation (default 0.1)"),
    ("--out", "out", str, "folder for metrics.json and checkpoint.npz (checked and locked before "
                          "training; an earlier metrics.json is moved to metrics.previous.json)"),
]


def _help_context(argv) -> dict | None:
    """For ``ccledu train ... --help``: the settings as :func:`ccledu.train.resolve` would
    resolve them for the flags on the line (--rule, --model, --data, --preset, ...), and where each comes from
    (shown in the help); None when not asking for help or when those flags are unusable."""
    if not argv or argv[0] != "train" or not ({"-h", "--help"} & set(argv)):
        return None
    fields = [("--rule", "rule", str), ("--model", "model", str), ("--data", "data", str)]
    fields += [(flag, dest, tp) for flag, dest, tp, _ in TRAIN_FIELDS]
    given = {}
    from .train import TrainConfig, resolve, sources

    try:
        for flag, dest, tp in fields:
            for i, a in enumerate(argv[:-1]):
                if a == flag:
                    given[dest] = tp(argv[i + 1])
            given.update({dest: tp(a.split("=", 1)[1]) for a in argv if a.startswith(flag + "=")})
        config = TrainConfig(**given)
        return {"given": given, "config": resolve(config), "sources": sources(config)}
    except (ValueError, KeyError, TypeError):
        return None


def _resolved_note(context, dest) -> str:
    if context is None or not hasattr(context["config"], dest):
        return ""
    where = context["sources"].get(dest, "project defaults")
    where = "you" if where == "user" else f"the {where}"
    return f" [resolved: {getattr(context['config'], dest)!r}, from {where}]"


def _add_train(sub, context=None):
    p = sub.add_parser("train", help="train a network with a learning rule",
                       description="Train a network with a learning rule and report the test accuracy "
                                   "of the epoch with the lowest validation loss.")
    p.add_argument("--rule", default="bp", choices=sorted(RULES), help="learning rule (default bp)")
    p.add_argument("--model", default="mlp",
                   help="mlp | cnn (paper architectures for --data), a preset (mlp-mnist, cnn-cifar10, ...) "
                        "or a spec: mlp:784-256-10, cnn:1x28x28-c8-c16-10; autoencoder[:16-32] "
                        "(encoder channels) for --rule ccl-ae / bp-ae (default mlp, or the rule's)")
    p.add_argument("--data", default="mnist", help="mnist | fashion-mnist | cifar10 | cifar100 (default mnist)")
    p.add_argument("--seed", type=ranged("seed"), default=0,
                   help="seed of weights, split, shuffling, an integer >= 0 (default 0)")
    p.add_argument("--lr", type=ranged("lr_forward"), default=None,
                   help="set --lr-forward and --lr-feedback together (> 0)")
    from .train import RANGES
    for flag, dest, tp, helptext in TRAIN_FIELDS:
        if dest in RANGES:
            helptext = f"{helptext}; {RANGES[dest].describe()}"
            tp = ranged(dest, tp)
        p.add_argument(flag, dest=dest, type=tp, default=None,
                       help=helptext + _resolved_note(context, dest))
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run whose --out was DIR from its last checkpoint, with its "
                        "settings (only --epochs may be given, to extend it); it ends bit for bit "
                        "as the uninterrupted run would have")
    p.add_argument("--centralize", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient centralization of weight gradients")
    p.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None, help="use biases (default off)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (pad 4) + horizontal flip")
    p.add_argument("--track-alignment", "--diagnostics", dest="diagnostics",
                   action=argparse.BooleanOptionalAction, default=None,
                   help="record the rule's diagnostics (alignment angles with BP, goodness, ...) every epoch")
    p.add_argument("--track-test", dest="track_test", action=argparse.BooleanOptionalAction,
                   default=None, help="also evaluate the test set every epoch and record the test "
                   "accuracy under three checkpoint choices (only recorded: the checkpoint is "
                   "still chosen on the validation loss)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="floating-point type of weights and data (default float32)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"],
                   help="array library: numpy (CPU) or cupy (GPU) (default numpy)")
    p.add_argument("--config", help="JSON file of training settings (command-line flags win)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    add_rule_option_flags(p)
    p.set_defaults(func=cmd_train)


def _explicit_train_flags(args) -> list:
    given = [flag for flag, dest, _, _ in TRAIN_FIELDS
             if dest not in ("epochs", "eval_every") and getattr(args, dest) is not None]
    given += [f"--{k.replace('_', '-')}" for k in ("centralize", "bias", "augment", "diagnostics",
                                                  "track_test") if getattr(args, k) is not None]
    given += ["--" + k for k in ("config", "lr") if getattr(args, k) is not None]
    given += [f"--{k}" for k, v in _DEFAULTS.items() if getattr(args, k) != v]
    given += ["--" + k[5:].replace("_", "-") for k in vars(args) if k.startswith("ropt_")]
    return given


def cmd_train(args) -> int:
    from .train import TrainConfig, run

    if args.resume is not None:
        others = _explicit_train_flags(args)
        if others:
            raise ValueError(f"--resume continues the run with the settings of its checkpoint; "
                             f"drop {', '.join(others)} (only --epochs may be given, to extend it, and "
                             f"--eval-every)")
        overrides = {k: getattr(args, k) for k in ("epochs", "eval_every")
                     if getattr(args, k) is not None} or None
        return _train_and_report(lambda: run(overrides, progress=not args.quiet,
                                             resume=args.resume), args.quiet)
    settings = {}
    if args.config:
        try:
            with open(args.config) as fh:
                loaded = json.load(fh)
        except OSError as e:
            raise ValueError(f"cannot read --config {args.config}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"--config {args.config} is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config} must hold a JSON object of settings")
        settings.update(loaded)
    for key in ("rule", "model", "data", "seed", "dtype", "backend"):
        if args.config is None or key not in settings or getattr(args, key) != _DEFAULTS.get(key):
            settings[key] = getattr(args, key)
    for _, dest, _, _ in TRAIN_FIELDS:
        if getattr(args, dest) is not None:
            settings[dest] = getattr(args, dest)
    for dest in ("centralize", "bias", "augment", "diagnostics", "track_test"):
        if getattr(args, dest) is not None:
            settings[dest] = getattr(args, dest)
    if args.lr is not None:
        settings.setdefault("lr_forward", args.lr)
        settings.setdefault("lr_feedback", args.lr)
    if not isinstance(settings.get("rule_options", {}) or {}, dict):
        raise ValueError(f"rule_options in --config must be an object of the rule's options, got "
                         f"{settings['rule_options']!r}")
    opts = dict(settings.get("rule_options", {}) or {})
    opts.update(collect_rule_options(args, settings["rule"]))
    settings["rule_options"] = opts
    return _train_and_report(lambda: run(TrainConfig.from_dict(settings), progress=not args.quiet),
                             args.quiet)


def _train_and_report(train, quiet: bool) -> int:
    """Run ``train()``; exit 3 on divergence and 130 on Ctrl-C (one line each), else 0."""
    from .train import DivergenceError, Interrupted

    try:
        metrics = train()
    except DivergenceError as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 130
    if quiet:
        if "test_accuracy" in metrics:
            print(f"test_accuracy {metrics['test_accuracy']:.4f}")
        else:                                   # an autoencoder: the reconstruction MSE
            print(f"test_loss {metrics['test_loss']:.6f}")
    return 0


_DEFAULTS = {"rule": "bp", "model": "mlp", "data": "mnist", "seed": 0, "dtype": "float32",
             "backend": "numpy"}

# ------------------------------------------------------------------------------------------------
# ccledu trace / ccledu verify
# ------------------------------------------------------------------------------------------------

def cmd_trace(args) -> int:
    import numpy as np

    from .tracing.record import OPT_FIELDS, write_trace

    from .presets import named

    preset = {}
    if args.preset:                      # a named preset: its model, options and optimiser
        presets = named(args.rule)
        if args.preset not in presets:
            raise ValueError(f"rule {args.rule!r} has no preset {args.preset!r}; available: "
                             f"{', '.join(sorted(presets)) or 'none'}")
        preset = presets[args.preset]
    model = args.model or preset.get("model")
    if model is None:
        raise ValueError("--model is needed (e.g. --model mlp:784-32-10), unless --preset names one")
    opts = {**preset.get("rule_options", {}), **collect_rule_options(args, args.rule)}
    optimizer = {k: preset[k] for k in OPT_FIELDS if k in preset}
    optimizer.update({k: getattr(args, k) for k in ("lr",) + OPT_FIELDS
                      if getattr(args, k, None) is not None})
    meta = write_trace(args.out, args.rule, model, args.batch_size, seed=args.seed,
                       dtype=args.dtype, activation=args.activation or preset.get("activation", "elu"),
                       data=args.data, rule_options=opts, optimizer=optimizer,
                       bias=bool(args.bias or preset.get("bias", False)))
    with np.load(args.out, allow_pickle=False) as z:
        n = len(z.files) - 1
    print(f"wrote {args.out}: rule {meta['rule']}, {len(meta['layers'])} blocks, batch "
          f"{meta['batch_size']}, {meta['dtype']}, {n} arrays")
    return 0


def cmd_verify(args) -> int:
    from .tracing.verify import format_report, verify_trace

    report = verify_trace(args.file, rtol=args.rtol, atol=args.atol)
    print(format_report(report))
    if report.ok:
        print(f"OK: {report.summary()}")
        return 0
    print(f"MISMATCH: {report.summary()}")
    return 1


def _add_trace(sub) -> None:
    """Register ``ccledu trace`` and ``ccledu verify``."""
    from .tracing.record import OPT_FIELDS

    p = sub.add_parser("trace", help="write a trace file: one training step, every tensor",
                       description="Run one step of a learning rule on a fresh network and write "
                                   "every tensor (parameters, activations, signals, losses, "
                                   "gradients, parameters after the update) to an .npz trace file "
                                   "(format: docs/trace-format.md).")
    p.add_argument("--rule", required=True, choices=sorted(RULES), help="learning rule")
    p.add_argument("--model", default=None,
                   help="a preset (mlp-mnist, cnn-cifar10, ...) or a spec: mlp:20-16-12-10, "
                        "cnn:3x8x8-c4-c6-10 (needed unless --preset names a model)")
    p.add_argument("--preset", default=None,
                   help="a named preset of the rule (as for ccledu train, e.g. ff loewex): its "
                        "model, activation, bias, rule options and optimiser settings; flags win")
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
    p.add_argument("--activation", default=None, help="hidden activation (default elu, or the preset's)")
    p.add_argument("--bias", action="store_true", help="give every layer a bias (default off, or the preset's)")
    p.add_argument("--data", default=None,
                   help="take the first N training examples of this dataset (mnist, fashion-mnist, "
                        "cifar10, cifar100) instead of random normal inputs")
    g = p.add_argument_group("optimiser (default: the rule's training defaults for the model kind)")
    g.add_argument("--lr", type=ranged_type(ranges["lr"]), default=None,
                   help="learning rate of every group, a finite number >= 0")
    for f in OPT_FIELDS:
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
    from .tracing.verify import check_tolerance

    try:
        return check_tolerance(text, "the tolerance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _guarded(fn):
    """Turn any error while reading or recomputing a file into one ``ccledu: error:`` line."""
    from .tracing.format import TraceError

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


#: optional sub-commands living in other modules: name -> module with ``add_parser(sub)``
EXTRA_COMMANDS = ["ccledu.course", "ccledu.sweep", "ccledu.book"]


def build_parser(argv=None):
    """The ``ccledu`` parser; with ``argv`` (the command line) ``train --help`` shows each
    setting's value resolved for the rule, model and dataset given there, and its source."""
    parser = Parser(prog="ccledu", description="Counter-current learning and its "
                    "neighbours, every matrix operation written out.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (also accepted after the "
                             "sub-command, or set CCLEDU_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub, _help_context(argv))
    _add_trace(sub)
    for mod in EXTRA_COMMANDS:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, "add_parser"):
            m.add_parser(sub)
    return parser


#: exceptions that mean "what was asked for is wrong": their message is the whole story
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def describe_error(e: BaseException) -> str:
    """One line for any exception: the message of a user error, or the kind of failure with
    a hint for anything else."""
    if isinstance(e, MemoryError):
        return ("out of memory: the model, batch or dataset does not fit; try a smaller "
                "--batch-size, a smaller --model, or --limit-train/--limit-test")
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        hint = {errno.ENOSPC: "the disk is full: free some space or choose another --out",
                errno.EACCES: "permission denied: choose a folder you can write to",
                errno.EROFS: "the file system is read-only: choose another folder",
                errno.EISDIR: "a folder stands where a file was expected"}.get(e.errno, "")
        return _one_line(f"{e.strerror or e}{where}" + (f"; {hint}" if hint else ""))
    if isinstance(e, KeyError) and e.args:
        return _one_line(e.args[0])
    if isinstance(e, USER_ERRORS):
        return _one_line(e)
    return _one_line(f"unexpected {type(e).__name__}: {e} (this is a bug or an unsupported input; "
                     f"run again with --debug to see the traceback)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("CCLEDU_DEBUG", "").strip() not in ("", "0", "false", "no")
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        debug = True
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
    except UsageError as e:
        print(_one_line(e), file=sys.stderr)
        return 2
    except SystemExit as e:                               # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    previous = _stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        print(f"ccledu: {_one_line(e) or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the top-level guard: one line, never a traceback
        if debug:
            traceback.print_exc()
        print(f"ccledu: error: {describe_error(e)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm(signum, frame):
    raise KeyboardInterrupt("stopped by SIGTERM")


def _stop_on_sigterm():
    """SIGTERM (``kill PID``, a batch system's time limit) stops a command the way Ctrl-C does:
    a training run records itself as interrupted beside its checkpoint, a sweep stops its
    workers. Returns the previous handler (restored when the command ends), or None when the
    handler was left alone (not the main thread, or someone else already handles SIGTERM)."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _sigterm)
    return previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
