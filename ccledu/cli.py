"""Command line: ``ccledu train | trace | verify | course | bench`` (also ``python -m ccledu``).

Errors in what the user asked for (unknown names, missing data, bad files) are printed as one
``ccledu: error: ...`` line with exit status 2; a diverged run exits with status 3.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

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
    ("--out", "out", str, "directory for metrics.json"),
]


def _none_or(tp):
    def parse(v):
        if isinstance(v, str) and v.lower() in ("none", "null", "off"):
            return None
        return tp(v)
    parse.__name__ = tp.__name__
    return parse


def _rule_options():
    """All rules' OPTIONS, merged: option name -> (type, default, help, [rules])."""
    merged = {}
    for name in RULES:
        try:
            cls = rule_class(name)
        except ImportError:
            continue
        for opt, spec in (getattr(cls, "OPTIONS", {}) or {}).items():
            tp, default, helptext = spec
            if opt in merged:
                merged[opt][3].append(name)
            else:
                merged[opt] = [tp, default, helptext, [name]]
    return merged


def add_rule_option_flags(p):
    group = p.add_argument_group("rule options (each applies to the rules named in brackets)")
    for opt, (tp, default, helptext, rules) in sorted(_rule_options().items()):
        flag = "--" + opt.replace("_", "-")
        text = f"[{', '.join(rules)}] {helptext} (default {default!r})"
        if tp is bool:
            group.add_argument(flag, dest="ropt_" + opt, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, dest="ropt_" + opt, type=_none_or(tp), default=argparse.SUPPRESS,
                               help=text)


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
    p.add_argument("--seed", type=int, default=0, help="seed of weights, split, shuffling (default 0)")
    p.add_argument("--lr", type=float, default=None, help="set --lr-forward and --lr-feedback together")
    for flag, dest, tp, helptext in TRAIN_FIELDS:
        p.add_argument(flag, dest=dest, type=tp, default=None, help=helptext)
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


def cmd_train(args) -> int:
    from .train import DivergenceError, TrainConfig, run

    settings = {}
    if args.config:
        with open(args.config) as fh:
            settings.update(json.load(fh))
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
    opts = dict(settings.get("rule_options", {}) or {})
    opts.update(collect_rule_options(args, settings["rule"]))
    settings["rule_options"] = opts
    try:
        metrics = run(TrainConfig.from_dict(settings), progress=not args.quiet)
    except DivergenceError as e:
        print(f"ccledu: {e}", file=sys.stderr)
        return 3
    if args.quiet:
        print(f"test_accuracy {metrics['test_accuracy']:.4f}")
    return 0


_DEFAULTS = {"rule": "bp", "model": "mlp", "data": "mnist", "seed": 0, "dtype": "float32",
             "backend": "numpy"}

#: optional sub-commands living in other modules: name -> module with ``add_parser(sub)``
EXTRA_COMMANDS = ["ccledu.trace", "ccledu.course", "ccledu.autoencoder", "ccledu.sweep",
                  "ccledu.book"]


def build_parser():
    parser = argparse.ArgumentParser(prog="ccledu", description="Counter-current learning and its "
                                     "neighbours, every matrix operation written out.")
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"ccledu: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
