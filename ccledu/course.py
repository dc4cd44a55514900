"""Coursework tooling: turn the instructor's repository into a student copy.

Solutions are marked in place, in the package sources (``ccledu/*.py``) and in the chapter
notebooks' code cells, with nbgrader's delimiters::

    # Task 2.1: im2col tap loop          <- optional task line (notebooks: keep it on its own line)
    ### BEGIN SOLUTION
    ...reference code...
    ### END SOLUTION

The task may also sit on the BEGIN line itself (``### BEGIN SOLUTION  Task 2.3: im2col tap
loop``), the form the package sources use. ``make_student`` replaces each region by

    # YOUR CODE HERE
    raise NotImplementedError("Task 2.1: im2col tap loop")

at the BEGIN line's indentation, so a student who runs the code before filling it in is told
which task is missing. A region without a task line is numbered per file: ``<chapter>.<k>``
for a notebook ``NN_title.ipynb``, ``<file stem>.<k>`` otherwise.

nbgrader compatibility: the delimiter lines are exactly nbgrader's (older nbgrader versions
compare the whole stripped line with ``### BEGIN SOLUTION``, which is why notebooks put the
task on the line above), and exercise cells carry nbgrader's cell metadata, so
``nbgrader generate_assignment`` accepts the same notebooks.

Python::

    from ccledu.course import make_student, find_tasks
    make_student("/path/to/ccledu", "/tmp/ccledu-student", tasks=["2.1", "2.2"])

Command line::

    ccledu course list SRC
    ccledu course make-student SRC DST [--tasks 2.1,2.3 | --tasks 2]
"""
from __future__ import annotations

import io
import json
import re
import shutil
import tokenize
from dataclasses import dataclass
from pathlib import Path

BEGIN = "BEGIN SOLUTION"
END = "END SOLUTION"

#: repository entries never copied into a student copy
IGNORE = (".git", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints",
          "runs", "build", "dist")

_TASK_RE = re.compile(r"Task\s+([0-9A-Za-z_]+(?:\.[0-9A-Za-z_]+)*)\s*[:\-—]?\s*(.*)$")
_TASK_LINE_RE = re.compile(r"^\s*#+\s*Task\s+([0-9A-Za-z_]+(?:\.[0-9A-Za-z_]+)*)\s*[:\-—]?\s*(.*)$")
_CHAPTER_RE = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class Task:
    """One solution region: ``id`` ('2.1'), ``description``, the file (relative to the
    repository root), the cell index for notebooks (None for .py files) and the BEGIN line
    (1-based, within the file or the cell)."""
    id: str
    description: str
    path: str
    cell: int | None
    line: int

    @property
    def message(self) -> str:
        """The text of the NotImplementedError that replaces the solution."""
        return f"Task {self.id}: {self.description}"

    @property
    def chapter(self) -> str:
        return self.id.split(".")[0]


def _is_delim(line: str, word: str) -> bool:
    s = line.strip()
    return s.startswith("#") and word in s


def _comment_lines(text: str):
    """0-based indices of the lines of Python source ``text`` that hold only a comment (so a
    delimiter quoted in a docstring is not taken for one)."""
    out = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT and not tok.line[:tok.start[1]].strip():
                out.add(tok.start[0] - 1)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return out


def _auto_prefix(path: Path) -> str:
    m = _CHAPTER_RE.match(path.name)
    return str(int(m.group(1))) if m else path.stem


def _scan(lines: list[str], rel: str, cell, prefix: str, counter: list[int], comments=None):
    """Find the solution regions in ``lines``: [(task, begin_index, end_index)].

    ``comments``: when given, only these line indices may hold a delimiter."""
    regions, begin, task = [], None, None
    for i, line in enumerate(lines):
        if comments is not None and i not in comments:
            continue
        if _is_delim(line, BEGIN):
            if begin is not None:
                raise ValueError(f"{rel}{_where(cell, i)}: nested '### {BEGIN}'")
            begin = i
            counter[0] += 1
            m = _TASK_RE.search(line.split(BEGIN, 1)[1])
            if m is None:
                # the nearest non-blank line above may name the task
                j = i - 1
                while j >= 0 and not lines[j].strip():
                    j -= 1
                m = _TASK_LINE_RE.match(lines[j]) if j >= 0 else None
            if m is not None:
                tid, desc = m.group(1), m.group(2).strip()
            else:
                tid, desc = f"{prefix}.{counter[0]}", ""
            task = Task(tid, desc or f"fill in the solution in {rel}", rel, cell, i + 1)
        elif _is_delim(line, END):
            if begin is None:
                raise ValueError(f"{rel}{_where(cell, i)}: '### {END}' without a BEGIN")
            regions.append((task, begin, i))
            begin = None
    if begin is not None:
        raise ValueError(f"{rel}{_where(cell, begin)}: '### {BEGIN}' is never closed")
    return regions


def _where(cell, i) -> str:
    return f" (cell {cell}, line {i + 1})" if cell is not None else f":{i + 1}"


def _rewrite(lines: list[str], regions, selected) -> list[str]:
    """Replace the selected regions by a stub; drop only the delimiters of the others."""
    out, pos = [], 0
    for task, b, e in regions:
        out.extend(lines[pos:b])
        if selected(task):
            indent = re.match(r"\s*", lines[b]).group(0)
            nl = "\n" if lines[b].endswith("\n") else ""
            out.append(f"{indent}# YOUR CODE HERE\n")
            out.append(f"{indent}raise NotImplementedError({task.message!r}){nl}")
        else:
            out.extend(lines[b + 1:e])
        pos = e + 1
    out.extend(lines[pos:])
    return out


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


# --------------------------------------------------------------------------------------------
# Finding tasks
# --------------------------------------------------------------------------------------------

def _source_files(root: Path):
    """The files that may hold solutions: chapters/*.ipynb and ccledu/**/*.py."""
    files = sorted((root / "chapters").glob("*.ipynb")) if (root / "chapters").is_dir() else []
    if (root / "ccledu").is_dir():
        files += sorted(p for p in (root / "ccledu").rglob("*.py") if "__pycache__" not in p.parts)
    return files


def _file_regions(path: Path, root: Path):
    """[(cell_index or None, lines, regions)] for one file."""
    rel = path.relative_to(root).as_posix()
    prefix = _auto_prefix(path)
    counter = [0]
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        out = []
        for c, cell in enumerate(nb.get("cells", [])):
            lines = _cell_source(cell).splitlines(keepends=True)
            out.append((c, lines, _scan(lines, rel, c, prefix, counter)))
        return nb, out
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    return None, [(None, lines, _scan(lines, rel, None, prefix, counter, _comment_lines(text)))]


def find_tasks(src) -> list[Task]:
    """Every solution region under ``src`` (chapters first, then the package), in file order.

    Raises ValueError on malformed regions or on two regions with the same task id.
    """
    root = Path(src).resolve()
    tasks = []
    for path in _source_files(root):
        _, parts = _file_regions(path, root)
        tasks += [t for _, _, regions in parts for t, _, _ in regions]
    seen = {}
    for t in tasks:
        if t.id in seen:
            o = seen[t.id]
            raise ValueError(f"task id {t.id} is used twice: {o.path} line {o.line} and "
                             f"{t.path} line {t.line}")
        seen[t.id] = t
    return tasks


def _selector(tasks, all_tasks):
    """Turn ``tasks`` (None, a list, or '2.1,2' text) into a predicate over Task."""
    if tasks is None:
        return lambda t: True
    if isinstance(tasks, str):
        tasks = [s for s in tasks.split(",")]
    wanted = [str(s).strip() for s in tasks if str(s).strip()]
    known = {t.id for t in all_tasks}
    for w in wanted:
        if w not in known and not any(k.startswith(w + ".") for k in known):
            raise ValueError(f"no task {w!r}; the tasks are: {', '.join(t.id for t in all_tasks)}")
    return lambda t: any(t.id == w or t.id.startswith(w + ".") for w in wanted)


# --------------------------------------------------------------------------------------------
# The student copy
# --------------------------------------------------------------------------------------------

def strip_notebook(nb: dict) -> dict:
    """Remove outputs, execution counts and execution metadata, in place; returns ``nb``."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for k in ("execution", "collapsed", "scrolled"):
            meta.pop(k, None)
    return nb


def make_student(src, dst, tasks=None) -> list[Task]:
    """Write a student copy of the repository ``src`` into the new directory ``dst``.

    Everything is copied except version-control and build leftovers (``IGNORE``); then in every
    chapter notebook and every ``ccledu/**/*.py`` file the selected solution regions become
    ``raise NotImplementedError("Task N.k: ...")`` and the delimiters of the other regions are
    dropped (their reference code stays). Notebook outputs are stripped.

    ``tasks``: None (every task), or task ids / chapter numbers, as a list or comma-separated
    text ("2.1,2.3", or "2" for all of chapter 2's tasks).

    Returns the list of tasks replaced. A rewritten ``.py`` file is compiled to make sure the
    stubs leave valid Python.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"source repository {src} does not exist")
    if dst == src or src in dst.parents:
        raise ValueError(f"the student copy {dst} must lie outside the source {src}")
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"{dst} exists and is not empty; choose a new directory")
    all_tasks = find_tasks(src)
    selected = _selector(tasks, all_tasks)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*IGNORE), dirs_exist_ok=True)
    done = []
    for path in _source_files(src):
        rel = path.relative_to(src)
        nb, parts = _file_regions(path, src)
        target = dst / rel
        if nb is not None:
            for c, lines, regions in parts:
                if regions:
                    text = "".join(_rewrite(lines, regions, selected))
                    if not "".join(lines).endswith("\n"):
                        text = text.rstrip("\n")
                    nb["cells"][c]["source"] = text
                    done += [t for t, _, _ in regions if selected(t)]
            strip_notebook(nb)
            target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        else:
            _, lines, regions = parts[0]
            if not regions:
                continue
            text = "".join(_rewrite(lines, regions, selected))
            try:
                compile(text, str(rel), "exec")
            except SyntaxError as e:
                raise ValueError(f"{rel}: the student version is not valid Python ({e}); check "
                                 f"where the solution delimiters sit") from None
            target.write_text(text, encoding="utf-8")
            done += [t for t, _, _ in regions if selected(t)]
    return done


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def task_sort_key(task: Task):
    """Order task ids naturally: 1.2 < 1.10 < 2.1 < layers.1."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in task.id.split("."))


def _cmd_list(args) -> int:
    for t in sorted(find_tasks(args.src), key=task_sort_key):
        where = f"{t.path} cell {t.cell}" if t.cell is not None else f"{t.path}:{t.line}"
        print(f"Task {t.id:6s} {t.description}  [{where}]")
    return 0


def _cmd_make_student(args) -> int:
    done = make_student(args.src, args.dst, tasks=args.tasks)
    print(f"wrote a student copy to {args.dst} with {len(done)} task(s) to do:")
    for t in sorted(done, key=task_sort_key):
        print(f"  Task {t.id:6s} {t.description}  [{t.path}]")
    return 0


def add_parser(sub):
    """Add ``ccledu course list|make-student`` to the CLI's sub-parsers."""
    p = sub.add_parser("course", help="coursework tools: list tasks, make a student copy",
                       description="Coursework tools. Solutions live between '### BEGIN SOLUTION' "
                                   "and '### END SOLUTION' lines (nbgrader's delimiters).")
    csub = p.add_subparsers(dest="course_command", metavar="ACTION")
    csub.required = True
    q = csub.add_parser("list", help="list every task (solution region) of a repository")
    q.add_argument("src", help="the instructor's repository (with solutions)")
    q.set_defaults(func=_cmd_list)
    q = csub.add_parser("make-student", help="write a copy with the solutions replaced by stubs")
    q.add_argument("src", help="the instructor's repository (with solutions)")
    q.add_argument("dst", help="a new directory for the student copy")
    q.add_argument("--tasks", default=None,
                   help="comma-separated task ids or chapter numbers to hand out, e.g. 2.1,2.3 "
                        "or 2 (default: every task)")
    q.set_defaults(func=_cmd_make_student)
    return p
