"""Coursework checks for chapters 03 (feedback alignment), 04 (direct feedback alignment) and 09
(comparing the rules), as ``test_course.py`` does for chapters 01–02:

(a) a student copy with the chapter's notebook tasks handed out runs in quick mode up to the first
    exercise and stops there with that task's NotImplementedError;
(b) the reference solutions pass every check cell of the chapter.

These chapters have notebook tasks only; their grading tests for the package code they rely on
(``pytest -m ch03|ch04|ch09``) are in ``tests/test_exercises_ch03.py`` etc.
"""
import json
import sys
from pathlib import Path

import pytest

from ccledu.course import find_tasks, make_student

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chapters import execute_notebook, kernel_env  # noqa: E402
from test_course import reference  # noqa: E402,F401  (the module-scoped copy of the repository)

CHAPTERS = {"03": "03_feedback_alignment", "04": "04_direct_feedback_alignment", "09": "09_comparing_rules"}


def _code_cells(path: Path):
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("num", sorted(CHAPTERS))
def test_student_notebook_stops_at_its_first_exercise(reference, tmp_path, num):  # noqa: F811
    chapter = CHAPTERS[num]
    nb_tasks = [t for t in find_tasks(reference) if t.path == f"chapters/{chapter}.ipynb"]
    assert nb_tasks, f"{chapter} has no notebook exercise"
    assert all(t.chapter == str(int(num)) for t in nb_tasks)
    dst = tmp_path / "student"
    make_student(reference, dst, tasks=[t.id for t in nb_tasks])
    with pytest.raises(AssertionError) as info:
        execute_notebook(dst / "chapters" / f"{chapter}.ipynb", kernel_env(dst, quick=True))
    msg = str(info.value)
    assert "NotImplementedError" in msg and nb_tasks[0].message in msg, msg[-2000:]


@pytest.mark.parametrize("num", sorted(CHAPTERS))
def test_reference_solutions_pass_the_checks(reference, num):  # noqa: F811
    """Run the chapter's setup cell, its imports, and everything from its first exercise on,
    in-process: the reference solutions satisfy every check cell."""
    chapter = CHAPTERS[num]
    code = _code_cells(reference / "chapters" / f"{chapter}.ipynb")
    graded = [i for i, src in enumerate(code) if "BEGIN SOLUTION" in src]
    assert graded, chapter
    ns = {"display": lambda *a, **k: None}
    exec(compile(code[0], f"{chapter}[setup]", "exec"), ns)
    for src in code[1:graded[0]]:
        for line in src.splitlines():
            if line.startswith(("from ", "import ")):
                exec(line, ns)
    for i, src in enumerate(code[graded[0]:], graded[0]):
        exec(compile(src, f"{chapter}[cell {i}]", "exec"), ns)


def test_every_check_cell_follows_its_task():
    """Each task cell is followed by a check cell that calls ccledu.check (nbgrader metadata)."""
    for chapter in CHAPTERS.values():
        nb = json.loads((Path(__file__).resolve().parent.parent / "chapters" / f"{chapter}.ipynb").read_text())
        cells = nb["cells"]
        for i, c in enumerate(cells):
            meta = c.get("metadata", {}).get("nbgrader", {})
            if meta.get("solution"):
                nxt = next(d for d in cells[i + 1:] if d["cell_type"] == "code")
                assert nxt["metadata"]["nbgrader"]["grade"] is True, f"{chapter} cell {i}"
                assert "check." in "".join(nxt["source"]), f"{chapter} cell {i}"
