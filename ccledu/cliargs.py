"""Command-line building blocks shared by every sub-command (``ccledu.cli`` and the modules
that add a sub-command: course, sweep, book): the one-line-error parser, range-checked
argument types, and the rule-option flags. Nothing here imports ``ccledu.cli``."""
from __future__ import annotations

import argparse
import math

from .rules import RULES, rule_class


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
    """All rules' OPTIONS, merged: option name -> [type, {rule: default}, help, [rules], range
    or None]."""
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
                merged[opt][1][name] = default
            else:
                merged[opt] = [tp, {name: default}, helptext, [name], rng]
    return merged


def add_rule_option_flags(p):
    group = p.add_argument_group("rule options (each applies to the rules named in brackets)")
    for opt, (tp, defaults, helptext, rules, rng) in sorted(_rule_options().items()):
        flag = "--" + opt.replace("_", "-")
        distinct = set(map(repr, defaults.values()))
        shown = (distinct.pop() if len(distinct) == 1
                 else ", ".join(f"{r} {v!r}" for r, v in defaults.items()))
        text = f"[{', '.join(rules)}] {helptext} (default {shown}"
        text += f"; {rng.describe()})" if rng is not None else ")"
        if tp is bool:
            group.add_argument(flag, dest="ropt_" + opt, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            metavar = {int: "N", float: "X"}.get(tp, opt.upper())
            group.add_argument(flag, dest="ropt_" + opt, type=_none_or(tp, rng), metavar=metavar,
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
