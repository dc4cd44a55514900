"""Shared fixtures. ``xp`` runs a test on NumPy and, where a GPU is usable, on CuPy."""
import os

import numpy as np
import pytest

from ccledu.backend import cupy_available

BACKENDS = [pytest.param("numpy", id="numpy"),
            pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(
                not cupy_available(), reason="CuPy not installed or no usable GPU (cupy.is_available() is False)")])]


@pytest.fixture(params=BACKENDS)
def backend_name(request):
    return request.param


@pytest.fixture
def xp(backend_name):
    """The array module of the back-end under test (numpy or cupy)."""
    from ccledu.backend import get_backend, use
    with use(backend_name):
        yield get_backend(backend_name)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True, scope="session")
def _data_env():
    """Point CCLEDU_DATA at the shared official files when they are beside the checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.abspath(os.path.join(here, "..", "..", "shared", "data"))
    if "CCLEDU_DATA" not in os.environ and os.path.isdir(shared):
        os.environ["CCLEDU_DATA"] = shared
    yield


_SOLUTIONS = {}


def load_solutions(chapter: str) -> dict:
    """The namespace of a chapter's reference solutions: its first (setup) cell, every top-level
    import of its other code cells, then each task (solution) cell, executed in-process. Keys are
    the notebook's names, e.g. ``load_solutions("03_feedback_alignment")["my_fa_delta"]``."""
    import ast
    import json
    from pathlib import Path
    if chapter not in _SOLUTIONS:
        path = Path(__file__).resolve().parent.parent / "chapters" / f"{chapter}.ipynb"
        cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
                 if c["cell_type"] == "code"]
        srcs = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
        ns = {"display": lambda *a, **k: None}
        exec(compile(srcs[0], f"{chapter}[setup]", "exec"), ns)
        for src in srcs[1:]:
            try:
                tree = ast.parse(src)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    exec(ast.get_source_segment(src, node), ns)
        for cell, src in zip(cells, srcs):
            if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                exec(compile(src, f"{chapter}[task]", "exec"), ns)
        _SOLUTIONS[chapter] = ns
    return _SOLUTIONS[chapter]
