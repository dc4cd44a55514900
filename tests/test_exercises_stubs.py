"""Package tasks give no partial credit to a stub: in a student copy of a chapter's package
tasks, every grading test (``pytest -m chNN``) that fails while the tasks raise their
``NotImplementedError`` — i.e. every test that exercises them — also fails when each task is
"solved" by a constant stub that returns zeros of the right shape.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ccledu.course import find_tasks, make_student

ROOT = Path(__file__).resolve().parent.parent

#: the line replacing each package task's ``raise NotImplementedError(...)``: a constant result
ZERO = {
    "1.3": ('self.grads["weight"] = xp.zeros_like(self.params["weight"])\n'
            'if self.has_bias:\n    self.grads["bias"] = xp.zeros_like(self.params["bias"])\n'
            'return None if not need_dx else xp.zeros_like(x)'),
    "1.4": "return xp.zeros_like(a)",
    "2.3": "col[...] = 0",
    "2.4": "pass",
    "2.5": "pass",
    "5.2": "return 0.0, xp.zeros_like(A), xp.zeros_like(S)",
    "6.3": "return xp.zeros_like(dU)",
    "6.4": "return 0.0, xp.zeros_like(X)",
    "7.2": "return xp.zeros_like(g)",
}

PACKAGE = {}
for _t in find_tasks(ROOT):
    if _t.path.startswith("ccledu/"):
        PACKAGE.setdefault(int(_t.chapter), []).append(_t)


def _failures(repo: Path, marker: str, tmp: Path) -> tuple:
    xml = tmp / f"{repo.name}.xml"
    env = dict(os.environ, PYTHONPATH=str(repo), OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider",
                          f"--junitxml={xml}", "tests"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=600)
    cases = ET.parse(xml).getroot().iter("testcase")
    failed, ran = set(), set()
    for c in cases:
        name = f"{c.get('classname')}::{c.get('name')}"
        if c.find("skipped") is not None:
            continue
        ran.add(name)
        if c.find("failure") is not None or c.find("error") is not None:
            failed.add(name)
    return failed, ran, res.stdout + res.stderr


@pytest.mark.parametrize("chapter", sorted(PACKAGE))
def test_a_constant_stub_fails_every_test_of_its_task(tmp_path, chapter):
    tasks = PACKAGE[chapter]
    assert all(t.id in ZERO for t in tasks), "add a constant stub for every package task to ZERO"
    src = tmp_path / "src"
    src.mkdir()
    import shutil
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in ["ccledu", "tests", "chapters"]:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    (src / "data").symlink_to(ROOT / "data", target_is_directory=True)
    stub = tmp_path / "stub"
    make_student(src, stub, tasks=[t.id for t in tasks])
    zero = tmp_path / "zero"
    shutil.copytree(stub, zero, symlinks=True)
    for t in tasks:
        path = zero / t.path
        text = path.read_text()
        line = next(l for l in text.splitlines() if f"NotImplementedError({t.message!r})" in l)
        indent = line[:len(line) - len(line.lstrip())]
        body = "\n".join(indent + l for l in ZERO[t.id].split("\n"))
        path.write_text(text.replace(line, body))
    marker = f"ch{chapter:02d}"
    f_stub, ran, out_stub = _failures(stub, marker, tmp_path)
    f_zero, _, out_zero = _failures(zero, marker, tmp_path)
    assert f_stub, out_stub[-2000:]
    passed_by_zero = sorted(f_stub - f_zero)
    assert not passed_by_zero, f"a constant stub passes {passed_by_zero}"
