"""Valid ranges of numeric settings (:class:`Range`): training settings (``train.RANGES``),
rule options (the 4th entry of a rule's ``OPTIONS`` spec), command-line flags. A leaf module:
it imports nothing of ccledu, so rules, the trainer and the command line can all use it."""
from __future__ import annotations

import math


class Range:
    """A numeric setting's valid range: ``kind`` int or float, bounds ``lo``/``hi`` (None: open
    ended), ``lo_open``/``hi_open`` for strict bounds. Floats must be finite."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {self.hi:g}")
        return what + (" " + " and ".join(parts) if parts else "")

    def check(self, value, name: str, text: bool = False):
        """``value`` converted to ``kind``; ValueError "<name> must be ..., got ..." otherwise.
        Strings are parsed only with ``text`` (command-line flags), never in a config."""
        bad = ValueError(f"{name} must be {self.describe()}, got {value!r}")
        if isinstance(value, bool) or (isinstance(value, str) and not text):
            raise bad
        try:
            if self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise bad
                v = int(value) if not isinstance(value, str) else int(value.strip())
            else:
                v = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if self.kind is float and not math.isfinite(v):
            raise bad
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            raise bad
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            raise bad
        return v
