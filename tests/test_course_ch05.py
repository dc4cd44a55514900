"""Coursework checks for the counter-current learning chapters (05–07), as ``test_course.py`` does
for chapters 01–02:

(a) a student copy with the chapter's notebook tasks handed out runs in quick mode up to the
    first exercise and stops there with that task's NotImplementedError;
(b) ``pytest -m chNN`` on the chapter's exercise tests fails in a student copy with the package
    tasks handed out (naming the task) and passes on the reference;
(c) the reference solutions pass every check cell.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ccledu.course import find_tasks, make_student

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chapters import execute_notebook, kernel_env  # noqa: E402
from test_course import reference  # noqa: E402,F401  (the module-scoped copy of the repository)

CHAPTERS = {"05": "05_ccl_mlp", "06": "06_ccl_cnn", "07": "07_ccl_autoencoder"}


@pytest.mark.parametrize("num", sorted(CHAPTERS))
def test_student_notebook_stops_at_its_first_exercise(reference, tmp_path, num):  # noqa: F811
    chapter = CHAPTERS[num]
    nb_tasks = [t for t in find_tasks(reference) if t.path == f"chapters/{chapter}.ipynb"]
    assert nb_tasks, f"{chapter} has no notebook exercise"
    dst = tmp_path / "student"
    make_student(reference, dst, tasks=[t.id for t in nb_tasks])
    with pytest.raises(AssertionError) as info:
        execute_notebook(dst / "chapters" / f"{chapter}.ipynb", kernel_env(dst, quick=True))
    msg = str(info.value)
    assert "NotImplementedError" in msg and nb_tasks[0].message in msg, msg[-2000:]


def _pytest_marker(repo: Path, marker: str, test_file: str):
    env = dict(os.environ, PYTHONPATH=str(repo),
               OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider",
                           test_file], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("num", sorted(CHAPTERS))
def test_marker_tests_fail_in_student_copy_and_pass_on_reference(reference, tmp_path, num):  # noqa: F811
    package_tasks = [t for t in find_tasks(reference)
                     if t.path.startswith("ccledu/") and t.chapter == str(int(num))]
    assert package_tasks, f"chapter {num} has no package exercise"
    test_file = f"tests/test_exercises_ch{num}.py"
    dst = tmp_path / "student"
    make_student(reference, dst, tasks=[t.id for t in package_tasks])
    res = _pytest_marker(dst, f"ch{num}", test_file)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "NotImplementedError" in out, out[-3000:]
    for t in package_tasks:
        assert t.message in out, f"no test names {t.message!r}:\n{out[-3000:]}"
    res = _pytest_marker(reference, f"ch{num}", test_file)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert " passed" in res.stdout


def _imports(src: str) -> list:
    """The top-level import statements of a cell, whole (they may span several lines)."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    return [ast.get_source_segment(src, node) for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize("num", sorted(CHAPTERS))
def test_reference_solutions_pass_the_checks(reference, num):  # noqa: F811
    """Run the chapter's setup cell, its imports, and everything from its first exercise on,
    in-process: the reference solutions satisfy every check cell."""
    chapter = CHAPTERS[num]
    nb = json.loads((reference / "chapters" / f"{chapter}.ipynb").read_text())
    code = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]
    graded = [i for i, src in enumerate(code) if "BEGIN SOLUTION" in src]
    assert graded, chapter
    ns = {"display": lambda *a, **k: None}
    exec(compile(code[0], f"{chapter}[setup]", "exec"), ns)
    for src in code[1:graded[0]]:
        for stmt in _imports(src):
            exec(stmt, ns)
    for i, src in enumerate(code[graded[0]:], graded[0]):
        exec(compile(src, f"{chapter}[cell {i}]", "exec"), ns)
