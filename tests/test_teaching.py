"""docs/teaching.md: the workflow's commands run as written, and its table of graded cells and
points is the notebooks' own metadata.

The ```bash blocks of the section "The whole workflow, step by step" run in order in one bash
shell (``set -e``), from the root of a temporary copy of the repository, with the current Python
environment (where ``pip install -e ".[test]"`` put ccledu, pytest and nbgrader).
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "teaching.md"


def _section(text, title):
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _workflow_script():
    sec = _section(DOC.read_text(encoding="utf-8"), "The whole workflow, step by step")
    blocks = re.findall(r"```bash\n(.*?)```", sec, re.S)
    assert len(blocks) >= 5, "the workflow section lost its command blocks"
    return "set -e\n" + "\n".join(blocks)


def test_workflow_commands_run_as_written(tmp_path):
    pytest.importorskip("nbgrader")
    repo = tmp_path / "ccledu"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", "runs", ".git",
                                    "*.egg-info", "build", "dist", "results")
    for name in ["ccledu", "chapters", "tests", "examples", "benchmarks", "docs"]:
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, repo / name, ignore=ignore)
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy2(ROOT / name, repo / name)
    (repo / "data").symlink_to(ROOT / "data", target_is_directory=True)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
               MPLBACKEND="Agg")
    env.pop("CCLEDU_QUICK", None)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    res = subprocess.run(["bash", "-c", _workflow_script()], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=900)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    # what the text says happens
    student = tmp_path / "ccl-student"
    assert "raise NotImplementedError('Task 5.1" in (student / "chapters" / "05_ccl_mlp.ipynb").read_text()
    assert "raise NotImplementedError('Task 5.2" in (student / "ccledu" / "rules" / "ccl.py").read_text()
    course = tmp_path / "ccl-course"
    assert (course / "release" / "ch05" / "05_ccl_mlp.ipynb").exists()
    rows = (course / "grades.csv").read_text().splitlines()
    header = rows[0].split(",")
    alice = dict(zip(header, next(r for r in rows[1:] if ",alice," in f",{r},").split(",")))
    assert float(alice["raw_score"]) == 0.0, alice
    assert "the student copy fails, as it should" in out
    assert re.search(r"\d+ passed", out)
    key = (tmp_path / "answer-key.md").read_text()
    assert "### Task 5.1" in key and "Model answers" in key and "Withheld from students" in key


def test_points_table_matches_the_notebooks():
    sec = _section(DOC.read_text(encoding="utf-8"), "Tasks, points and checks")
    table = {m.group(1): int(m.group(2))
             for m in re.finditer(r"^\| \d+ \| `(check-[\d-]+)` \| [^|]+ \| (\d+) \|", sec, re.M)}
    cells = {}
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        for c in json.loads(path.read_text())["cells"]:
            meta = c.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade") and c["cell_type"] == "code":
                cells[meta["grade_id"]] = meta["points"]
    assert table == cells
    answers = re.search(r"Model answers \(manually graded, one point per question\): (.*?)\.\n", sec, re.S).group(1)
    listed = {int(a): int(b) for a, b in re.findall(r"(?:chapter )?(\d+) (\d+)", answers)}
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        for c in json.loads(path.read_text())["cells"]:
            meta = c.get("metadata", {}).get("nbgrader", {})
            if meta.get("grade") and c["cell_type"] == "markdown":
                assert listed.get(int(path.name[:2])) == meta["points"], path.name
