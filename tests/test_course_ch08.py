"""Coursework checks for chapters 08 (forward-forward), 10 (GPU) and 11 (validating), the way
``tests/test_course.py`` checks chapters 01–02:

* a student copy of each chapter runs in quick mode up to its first exercise and stops there
  with that task's NotImplementedError;
* the reference solutions pass every check cell (setup cell, the chapter's imports, then every
  cell from the first exercise on, in-process);
* the chapters' tasks are listed by ``find_tasks`` with ids of their chapter.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

from ccledu.course import find_tasks, make_student

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chapters import execute_notebook, kernel_env  # noqa: E402
from test_course import reference as _course_copy  # noqa: E402  (a copy of the repository)

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = {"08_forward_forward": "8", "10_gpu": "10", "11_validating": "11"}
PRESENT = [c for c in CHAPTERS if (ROOT / "chapters" / f"{c}.ipynb").exists()]


@pytest.fixture(scope="module")
def reference(_course_copy):
    """test_course's copy, plus what chapters 10 and 11 read: the examples and benchmarks."""
    for name in ("examples", "benchmarks"):
        if (ROOT / name).is_dir() and not (_course_copy / name).exists():
            shutil.copytree(ROOT / name, _course_copy / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return _course_copy


@pytest.mark.parametrize("chapter", PRESENT)
def test_chapter_tasks_are_listed(chapter):
    tasks = [t for t in find_tasks(ROOT) if t.path == f"chapters/{chapter}.ipynb"]
    assert tasks, f"{chapter} has no exercise"
    assert all(t.chapter == CHAPTERS[chapter] for t in tasks), [t.id for t in tasks]


@pytest.mark.parametrize("chapter", PRESENT)
def test_student_notebook_stops_at_its_first_exercise(reference, tmp_path, chapter):
    nb_tasks = [t for t in find_tasks(reference) if t.path == f"chapters/{chapter}.ipynb"]
    assert nb_tasks, f"{chapter} has no notebook exercise"
    dst = tmp_path / "student"
    make_student(reference, dst, tasks=[t.id for t in nb_tasks])
    with pytest.raises(AssertionError) as info:
        execute_notebook(dst / "chapters" / f"{chapter}.ipynb", kernel_env(dst, quick=True))
    msg = str(info.value)
    assert "NotImplementedError" in msg and nb_tasks[0].message in msg, msg[-2000:]


@pytest.mark.parametrize("chapter", PRESENT)
def test_reference_solutions_pass_the_checks(reference, chapter):
    nb = json.loads((reference / "chapters" / f"{chapter}.ipynb").read_text())
    code = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]
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
