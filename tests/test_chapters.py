"""The chapter notebooks: committed without outputs, and each runs top to bottom in quick mode.

Every ``chapters/NN_*.ipynb`` found is tested, so chapters added later are picked up.
"""
import json
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _ids(paths):
    return [p.stem for p in paths]


def kernel_env(repo_root: Path, quick: bool = True) -> dict:
    """Environment for a chapter's kernel: quick mode, the repository importable first, a
    non-interactive matplotlib. The chapters are dominated by small matrix products, so unless
    the caller chose otherwise one BLAS thread is used: that keeps them fast and predictable when
    other processes share the CPU."""
    env = {"CCLEDU_QUICK": "1" if quick else "0", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = os.environ.get(var, "1")
    return env


def execute_notebook(path: Path, env: dict, timeout: int = CELL_TIMEOUT):
    """Run a notebook with nbclient in its own directory; returns the executed notebook.

    Raises AssertionError naming the failing cell (index and source) and the error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the test process's environment
    try:
        client.execute()
    except CellExecutionError as e:
        failed = [(i, c, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if not failed:
            raise AssertionError(f"{path.name}: {_ANSI.sub('', str(e))}") from None
        i, cell, out = failed[0]
        trace = _ANSI.sub("", "\n".join(out.get("traceback", [])))
        raise AssertionError(f"{path.name}: cell {i} failed with {out['ename']}: {out['evalue']}\n"
                             f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace}") from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/NN_title.ipynb found"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_committed_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb.get("nbformat") == 4
    assert nb.get("metadata", {}).get("kernelspec", {}).get("name") == "python3", \
        f"{path.name}: kernelspec name must be 'python3'"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name}: cell {i} has outputs; strip them"
        assert cell.get("execution_count") is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_valid_nbformat(path):
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(str(path), as_version=4))


_EXECUTED: dict = {}


def executed_quick(path: Path):
    """The chapter executed in quick mode, run once per test session: test_runs_in_quick_mode and
    tests/test_chapter_claims.py (which reads the numbers the text relies on) share it. A failed
    run is remembered too and raises the same error again instead of executing twice."""
    key = Path(path).resolve()
    if key not in _EXECUTED:
        try:
            _EXECUTED[key] = execute_notebook(key, kernel_env(ROOT, quick=True))
        except AssertionError as e:
            _EXECUTED[key] = e
    got = _EXECUTED[key]
    if isinstance(got, AssertionError):
        raise got
    return got


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_runs_in_quick_mode(path):
    executed_quick(path)
