"""The coursework through a real nbgrader course, end to end.

For every chapter: ``ccledu course nbgrader`` writes it into ``source/chNN/`` of a course in a
temporary folder, ``nbgrader generate_assignment`` makes the release version, and
``nbgrader autograde`` grades these submissions (scores read back from nbgrader's gradebook):

* ``reference`` — the instructor's notebook with every solution: full marks on every autograded
  cell, no autograde error, no error output in any cell (the whole chapter runs in quick mode),
  and the model answers waiting for manual grading;
* ``unchanged`` — the release version as a student receives it: 0 on every cell;
* ``replace`` — the release version plus a cell that replaces every ``ccledu.check`` function by
  one that prints "✓" (and the ``ccledu.check`` module in ``sys.modules``): still 0;
* ``cheat-package`` / ``cheat-oracle`` — the reference, except that every task's solution calls
  ccledu's own implementation (the package function) or the check's oracle
  (``ccledu.check.chNN._...``): 0 on every autograded cell, and each task's own graded cell
  shows the message naming the call;
* ``lite`` — the reference with the chapter's body cells cut down to their imports (what the
  cheap submissions above use): full marks, so the zeros of the cheat submissions are not an
  artefact of the cut.

Quick mode (``CCLEDU_QUICK=1``) and one BLAS thread keep it affordable; every chapter has its own
course and two chapters are graded at a time (two worker processes). Most of the time goes into
the two full runs of every chapter (reference and unchanged); the other four submissions run the
setup cell, the imports and the graded cells only.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

nbgrader = pytest.importorskip("nbgrader")

from ccledu.course import export_nbgrader, find_tasks, grade_cell_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.stem for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))

#: per notebook task: the body of a solution that calls ccledu's own implementation, and one
#: that calls the check's oracle
CHEATS = {
    "1.1": ("from ccledu.layers import Linear\n"
            "layer = Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)\n"
            "layer.params['weight'] = W\nlayer.forward(x)\ndx = layer.backward(dy)\n"
            "return layer.grads['weight'], dx",
            "from ccledu.check.ch01 import _fd_linear_backward\nreturn _fd_linear_backward(x, W, dy)"),
    "1.2": ("from ccledu.layers import activate, activation_grad\n"
            "return activation_grad('elu', z, activate('elu', z))",
            "from ccledu.check.ch01 import _fd_elu_grad\nreturn _fd_elu_grad(z)"),
    "2.1": ("from ccledu.im2col import im2col\nreturn im2col(x, kh, kw, stride, pad)",
            "from ccledu.check.ch02 import _loop_im2col\nreturn _loop_im2col(x, kh, kw, stride, pad)"),
    "2.2": ("from ccledu.im2col import col2im\nreturn col2im(cols, x_shape, kh, kw, stride, pad)",
            "from ccledu.check.ch02 import _loop_col2im\n"
            "return _loop_col2im(cols, x_shape, kh, kw, stride, pad)"),
    "2.6": ("from ccledu.layers import Conv2d\n"
            "layer = Conv2d(W.shape[1], W.shape[0], W.shape[2], stride, pad, bias=False, dtype=W.dtype)\n"
            "layer.params['weight'] = W\nlayer.forward(x)\ndx = layer.backward(dy)\n"
            "return layer.grads['weight'], dx",
            "from ccledu.check.ch02 import _fd_conv_backward\nreturn _fd_conv_backward(x, W, dy, stride, pad)"),
    "3.1": ("from ccledu.layers import Activation, Linear\nact = Activation('elu')\na = act.forward(z)\n"
            "upper = Linear(B.shape[1], B.shape[0], dtype=B.dtype)\nupper.forward(a)\n"
            "return act.backward(upper.backward(delta_next, weight=B))",
            "from ccledu.check.ch03 import _fd_fa_delta\nreturn _fd_fa_delta(delta_next, B, z)"),
    "3.2": ("from ccledu.rules.fa import FA\nrule = FA().setup(model, seed=0)\n"
            "rule.set_feedback({f'fixed.{l}.weight': B[l] for l in range(1, len(model.blocks))})\n"
            "return dict(rule.step(model, x, y).grads)",
            "from ccledu.check.ch03 import _fd_fa_gradients\nreturn _fd_fa_gradients(model, B, x, y)"),
    "3.3": ("from ccledu.layers import Linear\nlayer = Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)\n"
            "delta = np.random.default_rng(0).standard_normal((256, W.shape[0]))\n"
            "layer.forward(np.zeros((256, W.shape[1])))\n"
            "u = layer.backward(delta, weight=W).ravel()\nv = layer.backward(delta, weight=np.sign(W)).ravel()\n"
            "return float(u @ v / np.sqrt((u @ u) * (v @ v)))",
            "from ccledu.check.ch03 import _measured_sign_cos\nreturn _measured_sign_cos(W, 0)"),
    "4.1": ("from ccledu.layers import Activation\nact = Activation('elu')\nact.forward(a_prev @ W.T)\n"
            "return act.backward(e @ D.T).T @ a_prev",
            "from ccledu.check.ch04 import _fd_dfa_update\nreturn _fd_dfa_update(e, D, a_prev, W)"),
    "5.1": ("from ccledu.rules.ccl import MLP_WIDTH_REF, match_loss\n"
            "return match_loss(A, S, Y, lam * MLP_WIDTH_REF / A.shape[1])",
            "from ccledu.check.ch05 import _fd_ccl_mlp_pair\nreturn _fd_ccl_mlp_pair(A, S, Y, lam)"),
    "6.1": ("from ccledu.rules.ccl import normalize_rows, normalize_rows_backward\n"
            "U, r = normalize_rows(X, eps)\nreturn normalize_rows_backward(dU, U, r, eps)",
            "from ccledu.check.ch06 import _fd_row_normalize_backward\n"
            "return _fd_row_normalize_backward(X, dU, eps)"),
    "6.2": ("from ccledu.rules.ccl import CCL\n"
            "terms, dA, dS = CCL(form='cnn', scale=s_c, ssl_scale=s_ssl)._pair_cnn(0, A, S, Y, None)\n"
            "return terms['pair/0'], dA, dS",
            "from ccledu.check.ch06 import _fd_ccl_cnn_pair\nreturn _fd_ccl_cnn_pair(A, S, Y, s_c, s_ssl)"),
    "7.1": ("from ccledu.rules.autoencoder import pair_loss\n"
            "total, _, dA, dB = pair_loss(A, B, scale_c, scale_d)\nreturn total, dA, dB",
            "from ccledu.check.ch07 import _fd_ae_pair\nreturn _fd_ae_pair(A, B, scale_c, scale_d)"),
    "8.1": ("from ccledu.rules.ff import FF\nN = len(h) // 2\n"
            "g = (h.reshape(len(h), -1) ** 2).sum(axis=1)\n"
            "loss, dg = FF(theta=theta).pair_loss(g, sign, N)\n"
            "return loss, 2 * dg.reshape((-1,) + (1,) * (h.ndim - 1)) * h",
            "from ccledu.check.ch08 import _fd_ff_layer_grad\nreturn _fd_ff_layer_grad(h, sign, theta)"),
    "9.1": ("from ccledu.metrics import linear_cka\nreturn linear_cka(X, Y)",
            "from ccledu.check.ch09 import _gram_cka\nreturn _gram_cka(X, Y)"),
    "9.2": ("from ccledu.metrics import angle\nreturn angle(a, b)",
            "from ccledu.check.ch09 import _atan2_angle\nreturn _atan2_angle(a, b)"),
    "10.1": ("from ccledu.losses import softmax\nreturn softmax(z)",
             "from ccledu.check.ch10 import _lse_softmax\nreturn _lse_softmax(z)"),
    "12.1": ("from ccledu.rules.dtp import difference_targets\n"
             "z = acts[-1]\np = np.exp(z - z.max(axis=1, keepdims=True))\np /= p.sum(axis=1, keepdims=True)\n"
             "t_top = z - beta * (p - np.eye(z.shape[1])[y])\n"
             "inverses = [None] + [lambda a, Q=Q: np.tanh(a @ Q.T) for Q in Qs[1:]]\n"
             "return difference_targets(acts, t_top, inverses)",
             "from ccledu.check.ch12 import _def_targets\nreturn _def_targets(acts, y, Qs, beta)"),
    "12.2": ("from ccledu.layers import Activation\nact = Activation('tanh')\nh = act.forward(a_prev @ W.T)\n"
             "return act.backward(2 * (h - t) / a_prev.shape[0]).T @ a_prev",
             "from ccledu.check.ch12 import _fd_local\nreturn _fd_local(a_prev, W, t)"),
    "12.3": ("from ccledu.layers import Activation\nact = Activation('tanh')\nact.forward(a_prev @ W.T)\n"
             "return act.backward(Y @ D.T / a_prev.shape[0]).T @ a_prev",
             "from ccledu.check.ch12 import _fd_drtp\nreturn _fd_drtp(Y, D, a_prev, W)"),
    "11.1": ("from ccledu.trace import compare\n"
             "rows = [tuple(compare(k, theirs[k], v, rtol, atol)) for k, v in ours.items() if k in theirs]\n"
             "return rows, next((r[0] for r in rows if not r[3]), None)",
             "from ccledu.check.ch11 import _ref_trace_compare\n"
             "return _ref_trace_compare(theirs, ours, rtol, atol)"),
    # (no package code computes 11.2: the "package" cheat simulates with the check's own sum)
    "11.2": ("from ccledu.check.ch11 import _sequential_sums\nimport math\n"
             "return abs(float(_sequential_sums(x[None, :])[0]) - math.fsum(x.astype(float).tolist()))",
             "from ccledu.check.ch11 import _measured_sd\nreturn _measured_sd(x[None, :])"),
}

REPLACE_CHECKS = '''import sys, types
import ccledu.check as _c
_fake = lambda *a, **k: print("✓ all cases match")
for _name in list(_c.CHECKS):
    setattr(_c, _name, _fake)
    for _mod in [m for n, m in sys.modules.items() if n.startswith("ccledu.check.")]:
        if hasattr(_mod, _name):
            setattr(_mod, _name, _fake)
_fm = types.ModuleType("ccledu.check")
_fm.__dict__.update({n: _fake for n in _c.CHECKS}, CHECKS=_c.CHECKS)
sys.modules["ccledu.check"] = _fm'''


def _src(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def _imports_only(src: str) -> str:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return ""
    return "\n".join(ast.get_source_segment(src, n) for n in tree.body
                     if isinstance(n, (ast.Import, ast.ImportFrom)))


#: body cells a graded cell needs beyond imports (defining a value), kept by ``_lite``
KEEP = {"11_validating": ["WORK ="]}


def _lite(nb: dict, chapter: str) -> dict:
    """The notebook with its ungraded code cells (after the setup cell) cut to their imports."""
    nb = json.loads(json.dumps(nb))
    first = True
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or _meta(cell):
            continue
        if first:
            first = False
            continue
        src = _src(cell)
        if not any(k in src for k in KEEP.get(chapter, [])):
            cell["source"] = _imports_only(src)
    return nb


def _with_cheat(nb: dict, task_id: str, body: str) -> dict:
    """``nb`` with the solution region of ``task_id`` replaced by ``body``."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        src = _src(cell)
        if f"# Task {task_id}:" not in src or "BEGIN SOLUTION" not in src:
            continue
        lines = src.split("\n")
        b = next(i for i, l in enumerate(lines) if "BEGIN SOLUTION" in l)
        e = next(i for i, l in enumerate(lines) if "END SOLUTION" in l)
        indent = re.match(r"\s*", lines[b]).group(0)
        cell["source"] = "\n".join(lines[:b] + [indent + l for l in body.split("\n")] + lines[e + 1:])
        return nb
    raise AssertionError(f"no solution cell for task {task_id}")


def _grade_chapter(args):
    """Build a one-chapter nbgrader course under ``base``, submit and autograde; returns
    {student: (autograde success, error, {grade_id: (score, max, needs manual, cell type)})}.
    Runs in a worker process (one per chapter, two at a time)."""
    base, chapter = args
    from nbgrader.api import Gradebook
    from nbgrader.apps import NbGraderAPI
    from traitlets.config import Config

    root = Path(base) / f"course-{chapter[:2]}"
    a = f"ch{chapter[:2]}"
    os.environ.update(CCLEDU_QUICK="1", MPLBACKEND="Agg",
                      OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
                      PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    export_nbgrader(ROOT, root, a, tasks=chapter[:2].lstrip("0"))
    os.chdir(root)
    cfg = Config()
    cfg.CourseDirectory.root = str(root)
    cfg.Execute.timeout = 600
    api = NbGraderAPI(config=cfg)
    res = api.generate_assignment(a, force=True)
    if not res["success"]:
        return {"<generate>": (False, res.get("error") or res.get("log"), {})}
    source = json.loads((root / "source" / a / f"{chapter}.ipynb").read_text())
    release = json.loads((root / "release" / a / f"{chapter}.ipynb").read_text())
    subs = {"reference": source, "unchanged": release, "lite": _lite(source, chapter)}
    rep = _lite(release, chapter)
    rep["cells"].insert(2, {"cell_type": "code", "execution_count": None, "id": "cheatrep",
                            "metadata": {}, "outputs": [], "source": REPLACE_CHECKS})
    subs["replace"] = rep
    tasks = [t for t in find_tasks(ROOT) if t.path == f"chapters/{chapter}.ipynb"]
    for k, kind in enumerate(("package", "oracle")):
        nb = _lite(source, chapter)
        for t in tasks:                      # every task of the chapter cheats, each its own way
            nb = _with_cheat(nb, t.id, CHEATS[t.id][k])
        subs[f"cheat-{kind}"] = nb
    for student, nb in subs.items():
        d = root / "submitted" / student / a
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{chapter}.ipynb").write_text(json.dumps(nb))
    out = {}
    results = {st: api.autograde(a, st, force=True, create=True) for st in subs}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
        for st in subs:
            sub = gb.find_submission_notebook(chapter, a, st)
            out[st] = (results[st]["success"], results[st].get("error"),
                       {g.name: (g.score, g.max_score, g.needs_manual_grade, g.cell.cell_type)
                        for g in sub.grades})
    return out


@pytest.fixture(scope="module")
def course(tmp_path_factory, request):
    """Every selected chapter graded in its own nbgrader course, two chapters at a time; returns
    (base folder, {(chapter, student): grades}, {(chapter, student): (success, error)}). Only the
    chapters of the selected tests are graded (``-k 11_validating`` grades chapter 11 alone)."""
    import multiprocessing
    selected = {item.callspec.params["chapter"] for item in request.session.items
                if getattr(item, "module", None) is sys.modules[__name__]
                and "chapter" in getattr(getattr(item, "callspec", None), "params", {})}
    chapters = [ch for ch in CHAPTERS if ch in selected]
    base = tmp_path_factory.mktemp("nbgrader")
    missing = [t.id for t in find_tasks(ROOT) if t.path.endswith(".ipynb") and t.id not in CHEATS]
    assert not missing, f"add cheat solutions for tasks {missing} to CHEATS"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        per = pool.map(_grade_chapter, [(str(base), ch) for ch in chapters], chunksize=1)
    grades, results = {}, {}
    for ch, out in zip(chapters, per):
        assert "<generate>" not in out, f"{ch}: generate_assignment failed: {out['<generate>'][1]}"
        for st, (ok, err, g) in out.items():
            grades[ch, st] = g
            results[ch, st] = {"success": ok, "error": err}
    return base, grades, results


def _auto(grades):
    return {k: v for k, v in grades.items() if v[3] == "code"}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_reference_gets_full_marks_and_runs_cleanly(course, chapter):
    base, grades, results = course
    res = results[chapter, "reference"]
    assert res["success"], res.get("error")
    g = grades[chapter, "reference"]
    auto = _auto(g)
    assert auto, f"{chapter}: no autograded cell"
    for name, (score, mx, _, _) in auto.items():
        assert score == mx > 0, f"{chapter} {name}: {score} of {mx}"
    manual = {k: v for k, v in g.items() if v[3] == "markdown"}
    assert all(v[2] for v in manual.values()), f"{chapter}: a model-answer cell is not waiting for a grader"
    root = base / f"course-{chapter[:2]}"
    nb = json.loads((root / "autograded" / "reference" / f"ch{chapter[:2]}" / f"{chapter}.ipynb").read_text())
    errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{chapter}: cells raised {errors}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_lite_reference_gets_full_marks(course, chapter):
    _, grades, _ = course
    for name, (score, mx, _, _) in _auto(grades[chapter, "lite"]).items():
        assert score == mx, f"{chapter} {name}: {score} of {mx} (a cut body cell is needed)"


@pytest.mark.parametrize("student", ["unchanged", "replace"])
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_release_and_replaced_checks_get_zero(course, chapter, student):
    _, grades, results = course
    assert results[chapter, student]["success"], results[chapter, student].get("error")
    for name, (score, mx, _, _) in grades[chapter, student].items():
        assert score == 0, f"{chapter} {student}: {name} scored {score} of {mx}"


@pytest.mark.parametrize("kind", ["package", "oracle"])
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_solution_that_calls_the_reference_gets_zero(course, chapter, kind):
    """Every task of the chapter calls ccledu's implementation (or the check's oracle): every
    autograded cell scores 0, and each task's own graded cell says which function was called."""
    base, grades, results = course
    assert results[chapter, f"cheat-{kind}"]["success"]
    g = _auto(grades[chapter, f"cheat-{kind}"])
    for name, (score, mx, _, _) in g.items():
        assert score == 0, f"{chapter} cheat-{kind}: {name} scored {score} of {mx}"
    root = base / f"course-{chapter[:2]}"
    out = json.loads((root / "autograded" / f"cheat-{kind}" / f"ch{chapter[:2]}" / f"{chapter}.ipynb").read_text())
    for t in [t for t in find_tasks(ROOT) if t.path == f"chapters/{chapter}.ipynb"]:
        own = next(c for c in out["cells"] if _meta(c).get("grade_id") == f"check-{t.id.replace('.', '-')}")
        text = json.dumps(own.get("outputs", []))
        assert "your function calls" in text, f"{chapter} cheat-{kind}, task {t.id}: {text[-600:]}"
