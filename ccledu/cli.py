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
import sys
import traceback

from .rules import RULES, rule_class

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
    ("--preset", "preset", str, "named configuration of the rule (e.g. ff: cpu, paper)"),
    ("--out", "out", str, "folder for metrics.json and checkpoint.npz (checked and locked before "
                          "training; an earlier metrics.json is moved to metrics.previous.json)"),
]


class UsageError(Exception):
    """A command-line error found by the parser (printed as one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (no usage block) raised as :class:`UsageError`."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def ranged_type(rng, optional: bool = False):
    """argparse type checking a :class:`ccledu.train.Range` at parse time; with ``optional``,
    ``none``/``off``/``all`` give None (no limit)."""
    def parse(text):
        if optional and str(text).lower() in ("none", "off", "all"):
            return None
        try:
            return rng.check(text, "value", text=True)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {rng.describe()}, got {text!r}") from None
    parse.__name__ = rng.kind.__name__
    return parse


def ranged(field: str, tp=None):
    """argparse type for the TrainConfig field ``field`` (:data:`ccledu.train.RANGES`)."""
    from .train import RANGES

    return ranged_type(RANGES[field], optional=field in ("limit_train", "limit_test"))


def _none_or(tp, rng=None):
    """argparse type of a rule option: ``none``/``null``/``off`` give None; floats must be
    finite; ``rng`` (a :class:`ccledu.train.Range` a rule may give as the 4th entry of an
    OPTIONS spec) is checked too."""
    import math

    def parse(v):
        if isinstance(v, str) and v.lower() in ("none", "null", "off"):
            return None
        if rng is not None:
            try:
                return rng.check(v, "value", text=True)
            except ValueError:
                raise argparse.ArgumentTypeError(f"must be {rng.describe()}, got {v!r}") from None
        out = tp(v)
        if isinstance(out, float) and not math.isfinite(out):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {v!r}")
        return out
    parse.__name__ = tp.__name__
    return parse


def _rule_options():
    """All rules' OPTIONS, merged: option name -> [type, default, help, [rules], range or None]."""
    merged = {}
    for name in RULES:
        try:
            cls = rule_class(name)
        except ImportError:
            continue
        for opt, spec in (getattr(cls, "OPTIONS", {}) or {}).items():
            tp, default, helptext = spec[:3]
            rng = spec[3] if len(spec) > 3 else None
            if opt in merged:
                merged[opt][3].append(name)
            else:
                merged[opt] = [tp, default, helptext, [name], rng]
    return merged


def add_rule_option_flags(p):
    group = p.add_argument_group("rule options (each applies to the rules named in brackets)")
    for opt, (tp, default, helptext, rules, rng) in sorted(_rule_options().items()):
        flag = "--" + opt.replace("_", "-")
        text = f"[{', '.join(rules)}] {helptext} (default {default!r})"
        if tp is bool:
            group.add_argument(flag, dest="ropt_" + opt, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, dest="ropt_" + opt, type=_none_or(tp, rng),
                               default=argparse.SUPPRESS, help=text)


def collect_rule_options(args, rule: str) -> dict:
    cls = rule_class(rule)
    allowed = set(getattr(cls, "OPTIONS", {}) or {})
    out = {}
    for k, v in vars(args).items():
        if k.startswith("ropt_"):
            name = k[5:]
            if name not in allowed:
                raise ValueError(f"option --{name.replace('_', '-')} does not apply to rule {rule!r}"
                                 f" (its options: {sorted(allowed) or 'none'})")
            out[name] = v
    return out


def _add_train(sub):
    p = sub.add_parser("train", help="train a network with a learning rule",
                       description="Train a network with a learning rule and report the test accuracy "
                                   "of the epoch with the lowest validation loss.")
    p.add_argument("--rule", default="bp", choices=sorted(RULES), help="learning rule (default bp)")
    p.add_argument("--model", default="mlp",
                   help="mlp | cnn (paper architectures for --data), a preset (mlp-mnist, cnn-cifar10, ...) "
                        "or a spec: mlp:784-256-10, cnn:1x28x28-c8-c16-10 (default mlp)")
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
        p.add_argument(flag, dest=dest, type=tp, default=None, help=helptext)
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
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    p.add_argument("--config", help="JSON file of training settings (command-line flags win)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    add_rule_option_flags(p)
    p.set_defaults(func=cmd_train)


def _explicit_train_flags(args) -> list:
    given = [flag for flag, dest, _, _ in TRAIN_FIELDS
             if dest != "epochs" and getattr(args, dest) is not None]
    given += [f"--{k.replace('_', '-')}" for k in ("centralize", "bias", "augment", "diagnostics",
                                                  "track_test") if getattr(args, k) is not None]
    given += ["--" + k for k in ("config", "lr") if getattr(args, k) is not None]
    given += [f"--{k}" for k, v in _DEFAULTS.items() if getattr(args, k) != v]
    given += ["--" + k[5:].replace("_", "-") for k in vars(args) if k.startswith("ropt_")]
    return given


def cmd_train(args) -> int:
    from .train import DivergenceError, Interrupted, TrainConfig, run

    if args.resume is not None:
        others = _explicit_train_flags(args)
        if others:
            raise ValueError(f"--resume continues the run with the settings of its checkpoint; "
                             f"drop {', '.join(others)} (only --epochs may be given, to extend it)")
        overrides = {"epochs": args.epochs} if args.epochs is not None else None
        try:
            metrics = run(overrides, progress=not args.quiet, resume=args.resume)
        except DivergenceError as e:
            print(f"ccledu: {e}", file=sys.stderr)
            return 3
        except Interrupted as e:
            print(f"ccledu: {e}", file=sys.stderr)
            return 130
        if args.quiet:
            print(f"test_accuracy {metrics['test_accuracy']:.4f}")
        return 0
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
    try:
        metrics = run(TrainConfig.from_dict(settings), progress=not args.quiet)
    except DivergenceError as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 3
    except Interrupted as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 130
    if args.quiet:
        print(f"test_accuracy {metrics['test_accuracy']:.4f}")
    return 0


_DEFAULTS = {"rule": "bp", "model": "mlp", "data": "mnist", "seed": 0, "dtype": "float32",
             "backend": "numpy"}

#: optional sub-commands living in other modules: name -> module with ``add_parser(sub)``
EXTRA_COMMANDS = ["ccledu.trace", "ccledu.course", "ccledu.autoencoder", "ccledu.sweep",
                  "ccledu.book"]


def build_parser():
    parser = Parser(prog="ccledu", description="Counter-current learning and its "
                    "neighbours, every matrix operation written out.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (also accepted after the "
                             "sub-command, or set CCLEDU_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_train(sub)
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
        parser = build_parser()
        args = parser.parse_args(argv)
    except UsageError as e:
        print(_one_line(e), file=sys.stderr)
        return 2
    except SystemExit as e:                               # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
