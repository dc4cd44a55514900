"""Coursework tooling: ``make_student`` on small synthetic repositories and on a copy of this one.

(a) a student copy holds no solution text, only stubs naming the tasks;
(b) a student copy of chapters 01–02 runs in quick mode up to the first exercise and stops there
    with that task's NotImplementedError;
(c) ``pytest -m ch02`` fails in a student copy (naming the task) and passes on the reference;
(d) the reference solutions pass the checks.
"""
import ast
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ccledu import check
from ccledu.course import Task, find_tasks, make_student

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chapters import execute_notebook, kernel_env  # noqa: E402


# --------------------------------------------------------------------------------------------
# Synthetic repositories: the marker grammar
# --------------------------------------------------------------------------------------------

def _notebook(*sources):
    cells = [{"cell_type": "code", "execution_count": 3, "id": f"c{i}", "metadata": {},
              "outputs": [{"output_type": "stream", "name": "stdout", "text": "old output\n"}],
              "source": s} for i, s in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def tiny_repo(tmp_path):
    src = tmp_path / "src"
    (src / "ccledu").mkdir(parents=True)
    (src / "chapters").mkdir()
    (src / "ccledu" / "mod.py").write_text(
        'def f(x):\n'
        '    """A docstring that quotes the markers:\n'
        '    ### BEGIN SOLUTION\n'
        '    """\n'
        '    y = x + 1\n'
        '    ### BEGIN SOLUTION  Task 9.5: add two\n'
        '    y = y + 2\n'
        '    ### END SOLUTION\n'
        '    return y\n'
        '\n'
        'class A:\n'
        '    def g(self):\n'
        '        ### BEGIN SOLUTION\n'
        '        return "secret-g"\n'
        '        ### END SOLUTION\n')
    nb = _notebook("x = 1\nprint(x)",
                   "def h(a):\n    # Task 9.1: the h function\n    ### BEGIN SOLUTION\n    return 'secret-h'\n"
                   "    ### END SOLUTION",
                   "def k():\n    ### BEGIN SOLUTION\n    return 'secret-k'\n    ### END SOLUTION")
    (src / "chapters" / "09_demo.ipynb").write_text(json.dumps(nb))
    (src / "README.md").write_text("hello\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    return src


def test_find_tasks_reads_ids_descriptions_and_numbers_the_rest(tiny_repo):
    tasks = {t.id: t for t in find_tasks(tiny_repo)}
    assert set(tasks) == {"9.1", "9.2", "9.5", "mod.2"}
    assert tasks["9.1"].description == "the h function" and tasks["9.1"].cell == 1
    assert tasks["9.5"].description == "add two" and tasks["9.5"].path == "ccledu/mod.py"
    assert tasks["9.2"].path == "chapters/09_demo.ipynb"     # automatic: chapter 9, 2nd region
    assert tasks["mod.2"].message.startswith("Task mod.2: fill in the solution")


def test_make_student_replaces_regions_and_strips_outputs(tiny_repo, tmp_path):
    dst = tmp_path / "student"
    done = make_student(tiny_repo, dst)
    assert {t.id for t in done} == {"9.1", "9.2", "9.5", "mod.2"}
    assert not (dst / ".git").exists() and (dst / "README.md").read_text() == "hello\n"
    mod = (dst / "ccledu" / "mod.py").read_text()
    assert "y = y + 2" not in mod and "secret-g" not in mod
    assert "    raise NotImplementedError('Task 9.5: add two')\n" in mod
    assert "        raise NotImplementedError('Task mod.2: fill in the solution in ccledu/mod.py')" in mod
    assert '    ### BEGIN SOLUTION\n    """' in mod                  # the docstring is untouched
    ns = {}
    exec(compile(mod, "mod.py", "exec"), ns)
    assert ns["f"].__doc__ is not None
    with pytest.raises(NotImplementedError, match="Task 9.5: add two"):
        ns["f"](1)
    nb = json.loads((dst / "chapters" / "09_demo.ipynb").read_text())
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in nb["cells"])
    text = json.dumps(nb)
    assert "secret-h" not in text and "secret-k" not in text and "BEGIN SOLUTION" not in text
    assert "# Task 9.1: the h function" in nb["cells"][1]["source"]
    assert "raise NotImplementedError('Task 9.1: the h function')" in nb["cells"][1]["source"]


def test_selected_tasks_only(tiny_repo, tmp_path):
    done = make_student(tiny_repo, tmp_path / "s1", tasks="9.5")
    assert [t.id for t in done] == ["9.5"]
    mod = (tmp_path / "s1" / "ccledu" / "mod.py").read_text()
    assert "secret-g" in mod and "SOLUTION\n        return" not in mod   # kept, delimiters dropped
    nb = (tmp_path / "s1" / "chapters" / "09_demo.ipynb").read_text()
    assert "secret-h" in nb and "BEGIN SOLUTION" not in nb
    done = make_student(tiny_repo, tmp_path / "s2", tasks=["9"])        # a whole chapter
    assert sorted(t.id for t in done) == ["9.1", "9.2", "9.5"]
    with pytest.raises(ValueError, match="no task '4.1'"):
        make_student(tiny_repo, tmp_path / "s3", tasks="4.1")


@pytest.mark.parametrize("body,error", [
    ("    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n", "nested"),
    ("    ### BEGIN SOLUTION\n    pass\n", "never closed"),
    ("    ### END SOLUTION\n", "without a BEGIN"),
])
def test_malformed_regions_are_reported(tmp_path, body, error):
    (tmp_path / "r" / "ccledu").mkdir(parents=True)
    (tmp_path / "r" / "ccledu" / "bad.py").write_text("def f():\n" + body)
    with pytest.raises(ValueError, match=error):
        find_tasks(tmp_path / "r")


def test_refuses_unsafe_destinations(tiny_repo, tmp_path):
    with pytest.raises(ValueError, match="outside"):
        make_student(tiny_repo, tiny_repo / "student")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        make_student(tiny_repo, tmp_path / "full")


def test_cli(tiny_repo, tmp_path, capsys):
    from ccledu.cli import main
    assert main(["course", "list", str(tiny_repo)]) == 0
    assert "Task 9.1" in capsys.readouterr().out
    assert main(["course", "make-student", str(tiny_repo), str(tmp_path / "s"), "--tasks", "9.1,9.2"]) == 0
    out = capsys.readouterr().out
    assert "2 task(s)" in out and "Task 9.2" in out


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_cli_list_of_a_folder_that_is_not_a_repository_fails_in_one_line(tmp_path, what):
    """``ccledu course list DIR`` of a missing folder (a typo) used to print nothing and exit
    0; now: exit status 2, one line on stderr saying what is wrong, no traceback."""
    target = tmp_path / "no-such-folder"
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, "-m", "ccledu", "course", "list", str(target)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(target) in lines[0] and "ccledu repository" in lines[0]
    assert {"missing": "no such folder", "empty": "neither chapters/ nor ccledu/",
            "file": "not a folder"}[what] in lines[0]
    with pytest.raises(FileNotFoundError, match="ccledu repository"):
        find_tasks(target)


# --------------------------------------------------------------------------------------------
# This repository
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A copy of what a course needs: chapters, package, tests, pyproject, data."""
    src = tmp_path_factory.mktemp("course") / "reference"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ["ccledu", "chapters", "tests"]:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(ROOT / name, src / name)
    for name in ["examples", "benchmarks"]:          # read by chapters 10 and 11
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    (src / "data").symlink_to(ROOT / "data", target_is_directory=True)
    return src


def _repo_tasks():
    return find_tasks(ROOT)


def test_repository_tasks_are_well_formed():
    tasks = _repo_tasks()
    ids = [t.id for t in tasks]
    assert len(ids) == len(set(ids))
    for t in tasks:
        assert t.description and not t.description.startswith("fill in"), f"task {t.id} has no description"
        chapter = t.id.split(".")[0]
        assert chapter.isdigit(), f"task {t.id}: ids are <chapter>.<k>"
        if t.path.endswith(".ipynb"):
            assert Path(t.path).name.startswith(f"{int(chapter):02d}_"), f"task {t.id} sits in {t.path}"


def _solution_lines(path: Path, task: Task):
    """The non-blank lines inside a task's region that occur nowhere else in the file/cell."""
    if path.suffix == ".ipynb":
        cell = json.loads(path.read_text())["cells"][task.cell]
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    else:
        src = path.read_text()
    lines = src.splitlines()
    b = task.line - 1
    e = next(i for i in range(b + 1, len(lines)) if "END SOLUTION" in lines[i])
    inside = [l.strip() for l in lines[b + 1:e] if l.strip()]
    outside = {l.strip() for l in lines[:b] + lines[e + 1:]}
    return [l for l in inside if l not in outside and len(l) > 8]


def test_student_copy_has_no_solutions(reference, tmp_path):
    dst = tmp_path / "student"
    done = make_student(reference, dst)
    tasks = find_tasks(reference)
    assert {t.id for t in done} == {t.id for t in tasks} and len(tasks) >= 5
    for t in tasks:
        text = (dst / t.path).read_text()
        if t.path.endswith(".ipynb"):
            text = "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                             for c in json.loads(text)["cells"])
        assert f"raise NotImplementedError({t.message!r})" in text, f"no stub for task {t.id}"
        for line in _solution_lines(reference / t.path, t):
            assert line not in text, f"task {t.id}: solution line {line!r} is still in {t.path}"
    assert find_tasks(dst) == []                 # no delimiter is left anywhere
    for p in (dst / "chapters").glob("*.ipynb"):
        text = p.read_text()
        assert "HIDDEN TESTS" not in text and "BEGIN WITHHELD" not in text, p.name
        ref_cells = json.loads((reference / "chapters" / p.name).read_text())["cells"]
        for c, r in zip(json.loads(text)["cells"], ref_cells):
            meta = r.get("metadata", {}).get("nbgrader", {})
            if r["cell_type"] == "markdown" and meta.get("solution"):
                assert "".join(c["source"]).strip().endswith("YOUR ANSWER HERE"), p.name
            if r.get("metadata", {}).get("ccledu", {}).get("withhold_for"):
                assert "show(" not in "".join(c["source"]), f"{p.name}: a source cell is still shown"
    for p in (dst / "chapters").glob("*.ipynb"):
        for c in json.loads(p.read_text())["cells"]:
            assert c.get("outputs", []) == [] and c.get("execution_count") is None


#: every chapter with a notebook exercise, and every chapter with a package exercise
NOTEBOOK_CHAPTERS = sorted({Path(t.path).stem for t in _repo_tasks() if t.path.endswith(".ipynb")})
PACKAGE_CHAPTERS = sorted({int(t.chapter) for t in _repo_tasks() if t.path.startswith("ccledu/")})


def _code_cells(path: Path) -> list:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def _imports(src: str) -> list:
    """The top-level import statements of a cell, whole (they may span several lines)."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    return [ast.get_source_segment(src, node) for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_every_chapter_is_covered():
    assert len(NOTEBOOK_CHAPTERS) == len(list((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")))


@pytest.mark.parametrize("chapter", NOTEBOOK_CHAPTERS)
def test_student_notebook_stops_at_a_handed_out_task(reference, tmp_path, chapter):
    """A student copy of a chapter's notebook tasks (and so of their package twins) runs in quick
    mode until the first cell that needs one of them, and stops with that task's stub."""
    nb_tasks = [t for t in find_tasks(reference) if t.path == f"chapters/{chapter}.ipynb"]
    dst = tmp_path / "student"
    done = make_student(reference, dst, tasks=[t.id for t in nb_tasks])
    with pytest.raises(AssertionError) as info:
        execute_notebook(dst / "chapters" / f"{chapter}.ipynb", kernel_env(dst, quick=True))
    msg = str(info.value)
    assert "NotImplementedError" in msg and any(t.message in msg for t in done), msg[-2000:]


@pytest.mark.parametrize("chapter", NOTEBOOK_CHAPTERS)
def test_reference_solutions_pass_the_checks(reference, chapter):
    """Run the chapter's setup cell, its imports, and everything from its first exercise on,
    in-process: the reference solutions satisfy every check cell."""
    code = _code_cells(reference / "chapters" / f"{chapter}.ipynb")
    graded = [i for i, src in enumerate(code) if "BEGIN SOLUTION" in src]
    ns = {"display": lambda *a, **k: None}
    exec(compile(code[0], f"{chapter}[setup]", "exec"), ns)
    for src in code[1:graded[0]]:
        for stmt in _imports(src):
            exec(stmt, ns)
    saved = {k: v for k, v in sys.modules.items() if k.startswith(("ccledu.check", "ccledu.testing"))}
    try:
        for i, src in enumerate(code[graded[0]:], graded[0]):
            exec(compile(src, f"{chapter}[cell {i}]", "exec"), ns)
    finally:                       # graded cells re-import the checks: give the session its own back
        for k in [k for k in sys.modules if k.startswith(("ccledu.check", "ccledu.testing"))]:
            del sys.modules[k]
        sys.modules.update(saved)
        import ccledu
        ccledu.check, ccledu.testing = saved["ccledu.check"], saved["ccledu.testing"]


@pytest.mark.parametrize("chapter", NOTEBOOK_CHAPTERS)
def test_every_task_cell_is_followed_by_a_check_cell(chapter):
    """nbgrader metadata: each solution cell is followed by a graded cell that imports the check
    afresh (after dropping ccledu.check from sys.modules), has hidden tests or calls the task's
    check first, and leaves no value as its last expression."""
    cells = json.loads((ROOT / "chapters" / f"{chapter}.ipynb").read_text())["cells"]
    for i, c in enumerate(cells):
        if c["cell_type"] == "code" and c.get("metadata", {}).get("nbgrader", {}).get("solution"):
            nxt = next(d for d in cells[i + 1:] if d["cell_type"] == "code")
            meta = nxt["metadata"]["nbgrader"]
            assert meta["grade"] is True and meta["points"] >= 1, f"{chapter} cell {i}"
            src = "".join(nxt["source"])
            assert "del sys.modules[_m]" in src and "from ccledu.check import" in src, f"{chapter} cell {i}"
            last = ast.parse(src).body[-1]
            assert isinstance(last, ast.Expr) and isinstance(last.value, ast.Call), \
                f"{chapter} cell {i}: the last statement must be a check call (which returns None)"


def _pytest_marker(repo: Path, marker: str, junit: Path | None = None):
    """Run the grading tests of ``marker`` (the tests/test_exercises*.py files) in ``repo``."""
    env = dict(os.environ, PYTHONPATH=str(repo), OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    files = sorted(str(p.relative_to(repo)) for p in (repo / "tests").glob("test_exercises*.py"))
    extra = [f"--junitxml={junit}"] if junit else []
    return subprocess.run([sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider",
                           *extra, *files], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def _failed_tests(junit: Path) -> set:
    import xml.etree.ElementTree as ET
    return {f"{c.get('classname')}::{c.get('name')}" for c in ET.parse(junit).getroot().iter("testcase")
            if c.find("failure") is not None or c.find("error") is not None}


#: a constant "solution" for each package task, replacing its ``raise NotImplementedError(...)``
ZERO_STUBS = {
    "1.3": ('self.grads["weight"] = 0 * self.params["weight"]\n'
            'if self.has_bias:\n    self.grads["bias"] = 0 * self.params["bias"]\n'
            'return None if not need_dx else 0 * (dy @ self.params["weight"])'),
    "1.4": "return xp.zeros_like(a)",
    "2.3": "col[...] = 0",
    "2.4": "pass",
    "2.5": "dx[...] = 0",
    "5.2": "return 0.0, 0 * A, 0 * S",
    "6.3": "return xp.zeros_like(dU)",
    "6.4": "return 0.0, xp.zeros_like(X)",
    "7.2": "return xp.zeros_like(g)",
}


@pytest.mark.parametrize("num", PACKAGE_CHAPTERS)
def test_marker_tests_fail_in_student_copy_and_pass_on_reference(reference, tmp_path, num):
    """``pytest -m chNN`` fails in a student copy, naming every package task of the chapter, and
    passes on the reference. No partial credit for a stub: every test that fails while the tasks
    raise ``NotImplementedError`` (every test that exercises them) still fails when each task
    returns zeros of the right shape."""
    tasks = [t for t in find_tasks(reference) if t.path.startswith("ccledu/") and t.chapter == str(num)]
    assert all(t.id in ZERO_STUBS for t in tasks), "add a constant stub for every package task"
    dst = tmp_path / "student"
    make_student(reference, dst, tasks=[t.id for t in tasks])
    zero = tmp_path / "zero"
    shutil.copytree(dst, zero, symlinks=True)
    res = _pytest_marker(dst, f"ch{num:02d}", tmp_path / "stub.xml")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    for t in tasks:
        assert t.message in out, f"no test names {t.message!r}:\n{out[-3000:]}"
    for t in tasks:
        path = zero / t.path
        text = path.read_text()
        line = next(l for l in text.splitlines() if f"NotImplementedError({t.message!r})" in l)
        indent = line[:len(line) - len(line.lstrip())]
        path.write_text(text.replace(line, "\n".join(indent + l for l in ZERO_STUBS[t.id].split("\n"))))
    res_zero = _pytest_marker(zero, f"ch{num:02d}", tmp_path / "zero.xml")
    for bad in ("NameError", "NotImplementedError", "SyntaxError", "IndentationError"):
        assert bad not in res_zero.stdout, f"the constant stub itself is broken:\n{res_zero.stdout[-3000:]}"
    passed_by_stub = sorted(_failed_tests(tmp_path / "stub.xml") - _failed_tests(tmp_path / "zero.xml"))
    assert not passed_by_stub, f"a constant stub passes {passed_by_stub}"
    res = _pytest_marker(reference, f"ch{num:02d}")
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert " passed" in res.stdout


def test_every_check_returns_none():
    """nbgrader reads a grade cell's last value as a partial score: no check returns one."""
    import inspect
    for name, fn in check.CHECKS.items():
        assert inspect.signature(fn).return_annotation in (None, "None"), name


def test_twins_go_together_and_their_sources_are_withheld(reference, tmp_path):
    """Handing out the package task 5.2 also stubs its notebook twin 5.1, withholds the cells
    showing match_loss and the boxed gradients; handing out 5.1 stubs 5.2 in the package."""
    for asked in ("5.2", "5.1"):
        dst = tmp_path / f"s{asked}"
        done = {t.id for t in make_student(reference, dst, tasks=asked)}
        assert done == {"5.1", "5.2"}
        nb = (dst / "chapters" / "05_ccl_mlp.ipynb").read_text()
        assert "raise NotImplementedError('Task 5.1" in nb and "show(match_loss)" not in nb
        assert "withheld: deriving this is part of Task 5.1" in nb
        assert "raise NotImplementedError('Task 5.2" in (dst / "ccledu" / "rules" / "ccl.py").read_text()
        other = (dst / "chapters" / "09_comparing_rules.ipynb").read_text()
        assert "show(metrics.linear_cka)" in other            # a task not handed out keeps its cells


def test_nbgrader_export_keeps_only_the_assignment(reference, tmp_path):
    from ccledu.course import export_nbgrader
    written = export_nbgrader(reference, tmp_path / "course", "hw", tasks="9.2")
    assert [p.name for p in written] == ["09_comparing_rules.ipynb"]
    assert (tmp_path / "course" / "nbgrader_config.py").exists()
    cells = json.loads(written[0].read_text())["cells"]
    graded = {c["metadata"]["nbgrader"]["grade_id"] for c in cells if "nbgrader" in c.get("metadata", {})}
    assert graded == {"task-9-2", "check-9-2", "check-9-3", "answers-9"}
    text = json.dumps(cells)
    assert "### BEGIN SOLUTION" in text and "BEGIN HIDDEN TESTS" in text   # for nbgrader to strip
    assert "Task 9.1: linear CKA" in text and "raise NotImplementedError" not in text  # 9.1 given
    with pytest.raises(ValueError, match="no notebook task"):
        export_nbgrader(reference, tmp_path / "c2", "hw", tasks="2.5")   # no notebook twin


def test_answer_key_covers_every_task_and_question():
    from ccledu.course import answer_key
    key = answer_key(ROOT)
    for t in find_tasks(ROOT):
        if t.path.endswith(".ipynb"):
            assert f"### Task {t.id}:" in key, t.id
        else:
            assert f"*Package task {t.id}*" in key, t.id
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        if any(c["cell_type"] == "markdown" and c.get("metadata", {}).get("nbgrader", {}).get("solution")
               for c in cells):
            title = "".join(cells[0]["source"]).splitlines()[0].lstrip("# ").strip()
            part = key.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
            assert "### Model answers to the questions" in part and "1. " in part, path.name


@pytest.mark.parametrize("chapter", [f"{n:02d}" for n in range(1, 12)])
def test_chapters_have_objectives_times_answers_and_a_summary(chapter):
    path = next((ROOT / "chapters").glob(f"{chapter}_*.ipynb"))
    cells = json.loads(path.read_text())["cells"]
    md = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert "**Learning objectives.**" in md[1] and "**Prerequisites.**" in md[1] and "| part | time | points |" in md[1]
    assert md[-1].startswith("## Summary")
    answers = [c for c in cells if c["cell_type"] == "markdown"
               and c.get("metadata", {}).get("nbgrader", {}).get("solution")]
    assert len(answers) == 1
    questions = next(m for m in md if "**Questions.**" in m)
    n_questions = len(re.findall(r"^\d+\. ", questions, re.M))
    n_answers = len(re.findall(r"^\d+\. ", "".join(answers[0]["source"]), re.M))
    assert n_answers == n_questions == answers[0]["metadata"]["nbgrader"]["points"], path.name
