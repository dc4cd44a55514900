"""The package's shape (issue #16): no code outside a rule's own file compares with that rule's
name, and no import cycle, counting imports made inside functions."""
import ast
from pathlib import Path

import pytest

from ccledu.rules import RULES

PKG = Path(__file__).resolve().parent.parent / "ccledu"
RULE_FILES = {name: spec.split(":")[0].split(".")[-1] + ".py" for name, spec in RULES.items()}


def _sources():
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(p):
    return p.relative_to(PKG).as_posix()


def _names_in(node):
    """Rule names held by a string constant or a tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RULES:
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*[_names_in(e) for e in node.elts]) if node.elts else set()
    return set()


def rule_name_comparisons(path: Path, rel: str) -> list:
    """'rel:line rule' for every comparison (==, !=, in, not in) with a rule's name outside
    that rule's own file and the registry."""
    if rel == "rules/__init__.py":
        return []
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            names = set()
            for side in [node.left] + list(node.comparators):
                names |= _names_in(side)
            for name in sorted(names):
                if rel != f"rules/{RULE_FILES[name]}":
                    out.append(f"{rel}:{node.lineno} {name!r}")
    return out


def test_no_rule_name_comparisons_outside_the_rule():
    bad = [hit for p in _sources() for hit in rule_name_comparisons(p, _rel(p))]
    assert not bad, "code compares with a rule's name outside that rule's file: " + "; ".join(bad)


def test_the_scanner_catches_a_comparison(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("def f(rule, r):\n    if rule.name == 'ccl':\n        return 1\n"
                   "    return r in ('ff', 'other')\n")
    assert rule_name_comparisons(src, "train.py") == ["train.py:2 'ccl'", "train.py:4 'ff'"]
    assert rule_name_comparisons(src, "rules/ccl.py") == ["rules/ccl.py:4 'ff'"]


# ------------------------------------------------------------------------------------ imports

def _module_of(p: Path) -> str:
    parts = ["ccledu"] + list(p.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict:
    """module -> set of ccledu modules it imports, at any depth of the file (functions too),
    including ``importlib.import_module('ccledu....')`` with a literal name."""
    modules = {_module_of(p): p for p in _sources()}
    graph = {}
    for mod, p in modules.items():
        pkg = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")
                    up = up[:len(up) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            for t in targets:
                if t in modules and t != mod:
                    deps.add(t)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if d in path:
                return path[path.index(d):] + [d]
            if state.get(d) != 2:
                c = visit(d, path + [d])
                if c:
                    return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if state.get(m) != 2:
            c = visit(m, [m])
            if c:
                return c
    return None


def _package_parents(graph):
    """A package's __init__ importing its own submodules is not a cycle (Python loads the
    package first); drop child -> parent-package edges where the parent only re-exports."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_no_import_cycles():
    graph = _package_parents(import_graph())
    assert graph["ccledu.cli"] and "ccledu.tracing.verify" in graph["ccledu.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_imports_cli():
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "ccledu.cli" in deps and m != "ccledu.__main__")
    assert not users, f"these modules import ccledu.cli: {users}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_metrics_imports_no_rule():
    graph = import_graph()
    assert not [d for d in graph["ccledu.metrics"] if d.startswith("ccledu.rules")]


@pytest.mark.parametrize("rel", ["trace.py", "tracing/format.py", "tracing/record.py",
                                 "tracing/verify.py"])
def test_trace_code_never_names_a_rule(rel):
    assert rule_name_comparisons(PKG / rel, rel) == []


# ------------------------------------------------------------------------ rule options

def test_rule_options_are_attributes_of_the_same_name():
    """Every option of ``OPTIONS`` is stored under its own name (no clash with a method) and a
    rule built with no arguments holds the default the table (and so ``--help``) shows."""
    import inspect

    from ccledu.rules import rule_class
    bad = []
    for name in RULES:
        cls = rule_class(name)
        rule = cls()
        for opt, spec in cls.OPTIONS.items():
            value = getattr(rule, opt, AttributeError)
            if value is AttributeError or inspect.ismethod(value):
                bad.append(f"{name}.{opt}: {'a method' if value is not AttributeError else 'missing'}")
            elif value != spec[1]:
                bad.append(f"{name}.{opt}: holds {value!r}, OPTIONS says {spec[1]!r}")
    assert not bad, "; ".join(bad)
