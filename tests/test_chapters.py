"""The chapter notebooks: committed without outputs, each runs top to bottom in quick mode, and
every figure it shows passes ``ccledu.plotting.layout_faults`` (checked in the kernel while the
chapter runs, by a setup cell added at execution time only: see :data:`FIGURE_CHECK`).

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


#: Code run in the chapter's kernel before its first cell (at execution time only; never saved
#: into the notebook). It checks every figure the chapter shows with
#: ``ccledu.plotting.layout_faults``: at ``plt.show()``, and at the end of each cell for figures
#: still open (the inline back-end of JupyterLab and of the book shows those too). Checked figures
#: are closed, as the inline back-end closes them. Each cell that showed figures gets one extra
#: output whose metadata ``ccledu_figures`` lists, per figure, its faults (and
#: ``ccledu_figure_seconds`` the time the checks took).
FIGURE_CHECK = r"""
def _ccledu_install_figure_check():
    import time

    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from IPython.display import publish_display_data
    from ccledu.plotting import layout_faults

    checked = []                 # one list of faults per figure shown by the running cell
    spent = [0.0]                # seconds the checks took in the running cell

    def check_open_figures():
        t0 = time.perf_counter()
        for num in plt.get_fignums():
            fig = plt.figure(num)
            try:
                checked.append(layout_faults(fig))
            except Exception as e:          # a check that cannot run is a fault too
                checked.append([f"layout_faults failed: {type(e).__name__}: {e}"])
            plt.close(fig)
        spent[0] += time.perf_counter() - t0

    def show(*args, **kwargs):
        check_open_figures()

    def after_cell(result):
        check_open_figures()
        if checked:
            publish_display_data({"text/plain": f"[{len(checked)} figure(s) checked]"},
                                 metadata={"ccledu_figures": list(checked),
                                           "ccledu_figure_seconds": spent[0]})
            checked.clear()
        spent[0] = 0.0

    plt.show = show
    get_ipython().events.register("post_run_cell", after_cell)

_ccledu_install_figure_check()
del _ccledu_install_figure_check
"""


def execute_notebook(path: Path, env: dict, timeout: int = CELL_TIMEOUT, check_figures: bool = True):
    """Run a notebook with nbclient in its own directory; returns the executed notebook.

    With ``check_figures``, :data:`FIGURE_CHECK` runs first in the kernel (the cell is removed
    again before the notebook is returned, so cell indices are the file's); read its findings with
    :func:`figure_faults`. Raises AssertionError naming the failing cell (index and source) and
    the error."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(str(path), as_version=4)
    if check_figures:
        nb.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_CHECK))
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the test process's environment
    error = None
    try:
        client.execute()
    except CellExecutionError as e:
        error = e
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if check_figures:
        setup = nb.cells.pop(0)
        if setup.get("outputs"):          # it prints nothing when it works
            raise AssertionError(f"{path.name}: the figure-check setup cell failed: "
                                 f"{_ANSI.sub('', str(setup.outputs))}")
    if error is not None:
        failed = [(i, c, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if not failed:
            raise AssertionError(f"{path.name}: {_ANSI.sub('', str(error))}") from None
        i, cell, out = failed[0]
        trace = _ANSI.sub("", "\n".join(out.get("traceback", [])))
        raise AssertionError(f"{path.name}: cell {i} failed with {out['ename']}: {out['evalue']}\n"
                             f"--- cell source ---\n{cell.source}\n--- traceback ---\n{trace}") from None
    return nb


def figure_faults(nb) -> tuple[int, dict]:
    """``(figures checked, {cell index: [fault, ...]})`` of a notebook executed with
    ``check_figures``: what :data:`FIGURE_CHECK` recorded, cell by cell."""
    n, faults = 0, {}
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            figs = out.get("metadata", {}).get("ccledu_figures")
            if figs is None:
                continue
            n += len(figs)
            found = [f"figure {k + 1}: {f}" for k, fs in enumerate(figs) for f in fs]
            if found:
                faults.setdefault(i, []).extend(found)
    return n, faults


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


_SHOWS = re.compile(r"\bplt\.show\(\)")


@pytest.mark.parametrize("path", CHAPTERS, ids=_ids(CHAPTERS))
def test_figures_pass_layout_faults(path):
    """Every figure a chapter shows in quick mode passes ``ccledu.plotting.layout_faults``: no
    clipped or colliding text, axis labels present, whole-epoch ticks, every labelled line in a
    legend. Uses the same quick-mode run as test_runs_in_quick_mode."""
    nb = executed_quick(path)
    n, faults = figure_faults(nb)
    showing = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _SHOWS.search(c.source)]
    unchecked = [i for i in showing if not any("ccledu_figures" in o.get("metadata", {})
                                               for o in nb.cells[i].get("outputs", []))]
    assert not unchecked, f"{path.name}: cells {unchecked} call plt.show() but no figure was checked"
    assert not faults, f"{path.name}: figure faults\n" + "\n".join(
        f"cell {i}: {f}" for i, fs in sorted(faults.items()) for f in fs)


def test_figure_check_finds_faults_in_shown_and_open_figures(tmp_path):
    """The check injected into the chapters' kernels can fail: it reports a figure shown with
    ``plt.show()`` and one left open at the end of its cell, under the right cell index, passes a
    figure drawn with the helpers, closes what it checked, and never touches the file."""
    nbformat = pytest.importorskip("nbformat")
    v4 = nbformat.v4
    cells = [v4.new_markdown_cell("# figure-check demo"),
             v4.new_code_cell("import matplotlib.pyplot as plt\nfrom ccledu import plotting as P"),
             # 2: shown, epoch ticks at 1.2, 1.4, ... and no y label
             v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1, 2], [0.5, 0.3])\n"
                              "ax.set_xlabel('epoch')\nplt.show()"),
             # 3: not shown explicitly (the inline back-end shows it): a line missing from a legend
             v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1, 2, 3], [1, 2, 3], label='loss')\n"
                              "P.epoch_axis(ax); ax.set_ylabel('loss')"),
             # 4: drawn with the helpers
             v4.new_code_cell("fig, ax = plt.subplots(figsize=P.size(1))\n"
                              "ax.plot([1, 2, 3], [3, 2, 1], label='loss')\n"
                              "P.epoch_axis(ax); ax.set_ylabel('loss'); P.legend(ax); P.finish(fig)\n"
                              "plt.show()"),
             v4.new_code_cell("print('open figures:', len(plt.get_fignums()))")]
    nb = v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                               "display_name": "Python 3",
                                                               "language": "python"}})
    path = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, str(path))
    before = path.read_bytes()
    done = execute_notebook(path, kernel_env(ROOT, quick=True))
    assert path.read_bytes() == before
    assert [c.source for c in done.cells] == [c.source for c in cells]     # setup cell removed
    n, faults = figure_faults(done)
    assert n == 3, (n, faults)
    assert sorted(faults) == [2, 3], faults
    assert any("axes 0 has no y label" in f for f in faults[2]), faults[2]
    assert any("epoch ticks at non-whole epochs [1.2" in f for f in faults[2]), faults[2]
    assert faults[3] == ["figure 1: axes 0: labelled lines not in any legend: ['loss']"], faults[3]
    assert "open figures: 0" in done.cells[5].outputs[0]["text"]            # checked ones closed
