"""Learning rules: one file each. ``get_rule(name, **options)`` builds one by name."""
from __future__ import annotations

import importlib

from .base import Rule, StepResult

#: rule name -> "module:Class" (imported on demand)
RULES = {
    "bp": "ccledu.rules.bp:BP",
    "fa": "ccledu.rules.fa:FA",
    "dfa": "ccledu.rules.dfa:DFA",
    "ccl": "ccledu.rules.ccl:CCL",
    "ff": "ccledu.rules.ff:FF",
    "drtp": "ccledu.rules.drtp:DRTP",
    "dtp": "ccledu.rules.dtp:DTP",
    "drl": "ccledu.rules.drl:DRL",
    "ldrl": "ccledu.rules.ldrl:LDRL",
    "fwdtp": "ccledu.rules.fwdtp:FWDTP",
    "sign": "ccledu.rules.sign_symmetry:SignSymmetry",
    "kp": "ccledu.rules.kolen_pollack:KolenPollack",
    "ccl-ae": "ccledu.rules.autoencoder:CCLAutoencoder",
    "bp-ae": "ccledu.rules.autoencoder:BPAutoencoder",
}


def rule_class(name: str):
    if name not in RULES:
        raise ValueError(f"unknown learning rule {name!r}; choose one of {sorted(RULES)}")
    mod, cls = RULES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def get_rule(name: str, **options) -> Rule:
    """Instantiate the rule called ``name`` with its options (see each rule's docstring)."""
    return rule_class(name)(**options)


__all__ = ["Rule", "StepResult", "RULES", "get_rule", "rule_class"]
