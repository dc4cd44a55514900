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

Beyond the solution regions, the instructor's notebooks carry four more kinds of marks, all
removed from a student copy:

* **twins** — a notebook task whose solution is also a package task's says so on its task line,
  ``# Task 5.1: CCL MLP pair loss and its gradients (twins: 5.2)``. Handing out either hands out
  both (the relation is symmetric), so neither copy of the answer stays in the student copy;
* **hidden tests** — nbgrader's ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` in graded
  cells (the checks run again with an unseen seed); always dropped from student copies;
* **withheld results** — in markdown, ``<!-- BEGIN WITHHELD 5.1 -->`` … ``<!-- END WITHHELD -->``
  around the boxed result a task asks the student to derive; replaced by a note when one of the
  listed tasks is handed out; and code cells whose metadata has ``"ccledu": {"withhold_for":
  ["5.1", "5.2"]}`` (cells that display the source of a function a task asks for);
* **model answers** — markdown cells that are nbgrader "manually graded answer" cells
  (``solution`` and ``grade`` in their nbgrader metadata) hold the open questions' model answers
  between ``### BEGIN SOLUTION`` / ``### END SOLUTION``; a student copy gets "YOUR ANSWER HERE".

``ccledu course nbgrader`` writes the handed-out chapters into an nbgrader course's
``source/<assignment>/`` with the selected tasks' solutions and hidden tests left for
``nbgrader generate_assignment`` to strip (nbgrader's conventions), and everything else already
resolved; ``ccledu course key`` writes the instructor's answer key (solutions, withheld results,
model answers, points) as Markdown.

Python::

    from ccledu.course import make_student, find_tasks
    make_student("/path/to/ccledu", "/tmp/ccledu-student", tasks=["2.1", "2.2"])

Command line::

    ccledu course list SRC
    ccledu course make-student SRC DST [--tasks 2.1,2.3 | --tasks 2]
    ccledu course nbgrader SRC COURSE --assignment NAME [--tasks 5]
    ccledu course key SRC OUT.md [--tasks 5]
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
_TWINS_RE = re.compile(r"\s*\(twins?:\s*([0-9A-Za-z_.,\s]+)\)\s*$")
HIDDEN_BEGIN, HIDDEN_END = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"
_WITHHELD_BEGIN = re.compile(r"<!--\s*BEGIN WITHHELD\s+([0-9A-Za-z_.,\s]+?)\s*-->")
_WITHHELD_END = re.compile(r"<!--\s*END WITHHELD\s*-->")
TEXT_STUB = "YOUR ANSWER HERE"


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
    twins: tuple = ()

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
            twins = ()
            if m is not None:
                tid, desc = m.group(1), m.group(2).strip()
                t = _TWINS_RE.search(desc)
                if t:
                    twins = tuple(x.strip() for x in t.group(1).split(",") if x.strip())
                    desc = desc[:t.start()].rstrip()
            else:
                tid, desc = f"{prefix}.{counter[0]}", ""
            task = Task(tid, desc or f"fill in the solution in {rel}", rel, cell, i + 1, twins)
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
            if cell.get("cell_type") != "code":      # markdown regions are model answers
                out.append((c, lines, []))
                continue
            out.append((c, lines, _scan(lines, rel, c, prefix, counter)))
        return nb, out
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    return None, [(None, lines, _scan(lines, rel, None, prefix, counter, _comment_lines(text)))]


def _repository_root(src) -> Path:
    """``src`` resolved, or FileNotFoundError saying why it is not a repository to read tasks
    from (a missing folder used to give an empty task list and exit status 0)."""
    root = Path(src).resolve()
    if not root.exists():
        raise FileNotFoundError(f"{src}: no such folder; give the root of a ccledu repository "
                                f"(the folder that holds chapters/ and ccledu/)")
    if not root.is_dir():
        raise FileNotFoundError(f"{src} is a file, not a folder; give the root of a ccledu "
                                f"repository (the folder that holds chapters/ and ccledu/)")
    if not (root / "chapters").is_dir() and not (root / "ccledu").is_dir():
        raise FileNotFoundError(f"{src} holds neither chapters/ nor ccledu/: it is not a ccledu "
                                f"repository; give the root of one (e.g. `ccledu course list .` "
                                f"from the repository's root)")
    return root


def find_tasks(src) -> list[Task]:
    """Every solution region under ``src`` (chapters first, then the package), in file order.

    Raises FileNotFoundError when ``src`` is not a folder, or holds neither ``chapters/`` nor
    ``ccledu/`` (not a ccledu repository); ValueError on malformed regions or on two regions with
    the same task id.
    """
    root = _repository_root(src)
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


def selected_ids(tasks, all_tasks) -> set:
    """The ids handed out for ``tasks`` (None: all; a list or '2.1,2' text of task ids or chapter
    numbers), closed under the twin relation: a task and its twins go together."""
    known = {t.id for t in all_tasks}
    if tasks is None:
        ids = set(known)
    else:
        if isinstance(tasks, str):
            tasks = tasks.split(",")
        wanted = [str(w).strip() for w in tasks if str(w).strip()]
        for w in wanted:
            if w not in known and not any(k.startswith(w + ".") for k in known):
                raise ValueError(f"no task {w!r}; the tasks are: {', '.join(t.id for t in all_tasks)}")
        ids = {k for k in known if any(k == w or k.startswith(w + ".") for w in wanted)}
    links = {}
    for t in all_tasks:
        for o in t.twins:
            if o not in known:
                raise ValueError(f"task {t.id} ({t.path}) names twin {o}, which is no task")
            links.setdefault(t.id, set()).add(o)
            links.setdefault(o, set()).add(t.id)
    todo = list(ids)
    while todo:
        for o in links.get(todo.pop(), ()):
            if o not in ids:
                ids.add(o)
                todo.append(o)
    return ids


def _selector(tasks, all_tasks):
    """Turn ``tasks`` (None, a list, or '2.1,2' text) into a predicate over Task."""
    ids = selected_ids(tasks, all_tasks)
    return lambda t: t.id in ids


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


def _drop_region(lines, begin_word, end_word, where):
    """Remove the lines from a ``begin_word`` comment line to its ``end_word`` line (inclusive)."""
    out, inside = [], False
    for i, line in enumerate(lines):
        if begin_word in line:
            if inside:
                raise ValueError(f"{where}: nested '{begin_word}'")
            inside = True
        elif end_word in line:
            if not inside:
                raise ValueError(f"{where}: '{end_word}' without a BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '{begin_word}' is never closed")
    return out


def _withhold_markdown(text, ids, where):
    """Resolve ``<!-- BEGIN WITHHELD 5.1 -->`` regions: a note if a listed task is in ``ids``,
    else the content without the markers."""
    out, pos = [], 0
    while True:
        m = _WITHHELD_BEGIN.search(text, pos)
        if m is None:
            out.append(text[pos:])
            return "".join(out)
        e = _WITHHELD_END.search(text, m.end())
        if e is None:
            raise ValueError(f"{where}: '<!-- BEGIN WITHHELD -->' is never closed")
        listed = [x.strip() for x in m.group(1).split(",") if x.strip()]
        out.append(text[pos:m.start()])
        if any(t in ids for t in listed):
            names = " / ".join(f"Task {t}" for t in listed)
            if text[:m.start()].count("$$") % 2:          # inside a display formula
                out.append(f"\\boxed{{\\;\\text{{withheld: deriving this is part of {names}}}\\;}}")
            else:
                out.append(f"*[Withheld in this copy: deriving this result is part of {names}.]*")
        else:
            out.append(text[m.end():e.start()])
        pos = e.end()


def _answer_stub(lines):
    """A model-answer cell in a student copy: its solution regions (or all of it) become the
    text stub."""
    if not any(BEGIN in line for line in lines):
        return TEXT_STUB
    out, inside = [], False
    for line in lines:
        if BEGIN in line:
            inside = True
            out.append(TEXT_STUB + "\n")
        elif END in line:
            inside = False
        elif not inside:
            out.append(line)
    return "".join(out).rstrip("\n")


def _nbgrader_meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def _task_functions(nb, parts):
    """{task id: names the task's solution cell defines (``def name``)}."""
    out = {}
    for c, lines, regions in parts:
        names = re.findall(r"^def\s+(\w+)", "".join(lines), re.M)
        for t, _, _ in regions:
            out.setdefault(t.id, set()).update(names)
    return out


def grade_cell_tasks(source: str, functions: dict) -> set:
    """The tasks a graded cell grades: those whose solution functions it calls."""
    return {tid for tid, names in functions.items()
            if any(re.search(rf"\b{re.escape(n)}\b", source) for n in names)}


def _student_notebook(nb, parts, rel, ids, keep_selected=False):
    """Rewrite a parsed chapter notebook in place for a student copy (``keep_selected``: for
    nbgrader's source folder, where the handed-out tasks keep their solutions and hidden tests
    and everything else loses its nbgrader metadata)."""
    functions = _task_functions(nb, parts)
    for c, lines, regions in parts:
        cell = nb["cells"][c]
        where = f"{rel} (cell {c})"
        meta = _nbgrader_meta(cell)
        if cell.get("cell_type") == "markdown":
            text = _cell_source(cell)
            if meta.get("solution"):
                if not keep_selected:
                    text = _answer_stub(text.splitlines(keepends=True))
            text = _withhold_markdown(text, ids, where)
            cell["source"] = text
            continue
        if cell.get("cell_type") != "code":
            continue
        withhold = cell.get("metadata", {}).get("ccledu", {}).get("withhold_for", [])
        if any(t in ids for t in withhold):
            names = " / ".join(f"Task {t}" for t in withhold)
            kept = [line for line in lines if re.match(r"(from|import)\s", line)]
            cell["source"] = "".join(kept) + (
                f"# Withheld in this copy: this cell displayed the source of code that "
                f"{names} asks you to write.")
            continue
        mine = {t.id for t, _, _ in regions}
        if keep_selected and mine & ids:
            out = lines                                  # nbgrader strips these itself
        else:
            out = _rewrite(lines, regions, lambda t: t.id in ids) if regions else lines
        graded = grade_cell_tasks(_cell_source(cell), functions) if meta.get("grade") else set()
        keep_hidden = keep_selected and meta.get("grade") and bool(graded & ids)
        if not keep_hidden:
            out = _drop_region(out, HIDDEN_BEGIN, HIDDEN_END, where)
        if keep_selected and meta and not (mine & ids) and not (graded & ids):
            cell["metadata"].pop("nbgrader", None)       # not part of this assignment
        if out is not lines or regions:
            text = "".join(out)
            if not "".join(lines).endswith("\n"):
                text = text.rstrip("\n")
            cell["source"] = text
    strip_notebook(nb)
    return nb


def make_student(src, dst, tasks=None) -> list[Task]:
    """Write a student copy of the repository ``src`` into the new directory ``dst``.

    Everything is copied except version-control and build leftovers (``IGNORE``); then in every
    chapter notebook and every ``ccledu/**/*.py`` file the selected solution regions become
    ``raise NotImplementedError("Task N.k: ...")`` and the delimiters of the other regions are
    dropped (their reference code stays). In the notebooks, hidden tests and model answers are
    removed, and the withheld results and source cells of the handed-out tasks are replaced by a
    note (see the module docstring). Notebook outputs are stripped.

    ``tasks``: None (every task), or task ids / chapter numbers, as a list or comma-separated
    text ("2.1,2.3", or "2" for all of chapter 2's tasks); twins of a selected task are selected
    too.

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
    ids = selected_ids(tasks, all_tasks)
    selected = lambda t: t.id in ids  # noqa: E731
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*IGNORE), dirs_exist_ok=True)
    done = []
    for path in _source_files(src):
        rel = path.relative_to(src)
        nb, parts = _file_regions(path, src)
        target = dst / rel
        if nb is not None:
            _student_notebook(nb, parts, rel.as_posix(), ids)
            done += [t for _, _, regions in parts for t, _, _ in regions if selected(t)]
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


NBGRADER_CONFIG = """\
# nbgrader configuration written by `ccledu course nbgrader` (edit freely).
c = get_config()
c.CourseDirectory.course_id = "ccledu"
# chapters in full mode train for minutes; quick mode (CCLEDU_QUICK=1) for seconds
c.Execute.timeout = 1800
"""


def export_nbgrader(src, course, assignment: str, tasks=None) -> list[Path]:
    """Write the chapters of the handed-out notebook tasks into the nbgrader course directory
    ``course`` as ``source/<assignment>/<chapter>.ipynb`` (and a ``nbgrader_config.py`` when the
    course has none). Returns the notebooks written.

    The handed-out tasks keep their solution regions and hidden tests, for
    ``nbgrader generate_assignment`` to replace and remove; the other tasks of the chapter are
    resolved (their code given, their cells no longer graded); withheld results and source cells
    are replaced already; model answers stay in nbgrader's manually graded answer cells.
    """
    src, course = Path(src).resolve(), Path(course).resolve()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", assignment):
        raise ValueError(f"assignment name {assignment!r}: use letters, digits, '.', '_', '-'")
    all_tasks = find_tasks(src)
    ids = selected_ids(tasks, all_tasks)
    chapters = sorted({t.path for t in all_tasks if t.id in ids and t.path.endswith(".ipynb")})
    if not chapters:
        raise ValueError("the selected tasks include no notebook task; nbgrader grades notebooks "
                         "(grade package tasks with `pytest -m chNN`, see docs/teaching.md)")
    out_dir = course / "source" / assignment
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (course / "nbgrader_config.py").exists():
        (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG, encoding="utf-8")
    written = []
    for rel in chapters:
        nb, parts = _file_regions(src / rel, src)
        _student_notebook(nb, parts, rel, ids, keep_selected=True)
        target = out_dir / Path(rel).name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------
# The instructor's answer key
# --------------------------------------------------------------------------------------------

def _region_text(lines, begin=BEGIN, end=END):
    out, inside = [], False
    for line in lines:
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line)
    return "".join(out)


def answer_key(src, tasks=None) -> str:
    """The instructor's key as Markdown: per chapter its graded cells and points, each task's
    reference solution, the results withheld from students, and the model answers."""
    src = Path(src).resolve()
    all_tasks = find_tasks(src)
    ids = selected_ids(tasks, all_tasks)
    by_id = {t.id: t for t in all_tasks}
    out = ["# ccledu — instructor's answer key", "",
           "Generated by `ccledu course key` from the instructor's notebooks; do not hand out.", ""]
    for path in sorted((src / "chapters").glob("[0-9][0-9]_*.ipynb")):
        nb, parts = _file_regions(path, src)
        chapter_tasks = [t for _, _, regions in parts for t, _, _ in regions]
        if tasks is not None and not any(t.id in ids for t in chapter_tasks):
            continue
        cells = nb["cells"]
        title = next((l.lstrip("# ").strip() for l in _cell_source(cells[0]).splitlines()
                      if l.startswith("#")), path.stem)
        out += [f"## {title}", ""]
        functions = _task_functions(nb, parts)
        rows = []
        for c, cell in enumerate(cells):
            meta = _nbgrader_meta(cell)
            if meta.get("grade"):
                kind = "manual (written answers)" if cell.get("cell_type") == "markdown" else "autograded"
                graded = sorted(grade_cell_tasks(_cell_source(cell), functions))
                rows.append(f"| `{meta.get('grade_id')}` | {kind} | {', '.join(graded) or '—'} | "
                            f"{meta.get('points', 0)} |")
        if rows:
            out += ["| graded cell | kind | tasks | points |", "|---|---|---|---|", *rows, ""]
        for c, lines, regions in parts:
            cell = cells[c]
            for t, b, e in regions:
                twins = set(t.twins) | {o.id for o in all_tasks if t.id in o.twins}
                extra = f" (twin of {', '.join(f'Task {x}' for x in sorted(twins))})" if twins else ""
                out += [f"### Task {t.id}: {t.description}{extra}", "", "```python",
                        "".join(lines[b + 1:e]).rstrip("\n"), "```", ""]
            if cell.get("cell_type") == "markdown":
                text = _cell_source(cell)
                for m in _WITHHELD_BEGIN.finditer(text):
                    e = _WITHHELD_END.search(text, m.end())
                    listed = ", ".join(f"Task {x.strip()}" for x in m.group(1).split(","))
                    body = text[m.end():e.start()].strip()
                    if text[:m.start()].count("$$") % 2:           # part of a display formula
                        body = f"$$\n{body}\n$$"
                    out += [f"**Withheld from students ({listed}):**", "", body, ""]
                if _nbgrader_meta(cell).get("solution"):
                    out += ["### Model answers to the questions", "",
                            _region_text(lines).strip() or text.strip(), ""]
        pkg = [t for t in all_tasks if t.path.startswith("ccledu/") and t.chapter == str(int(path.name[:2]))]
        for t in pkg:
            out += [f"*Package task {t.id}* ({t.description}): reference in `{t.path}` "
                    f"line {t.line}; graded by `pytest -m ch{int(t.chapter):02d}`.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


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


def _cmd_nbgrader(args) -> int:
    written = export_nbgrader(args.src, args.course, args.assignment, tasks=args.tasks)
    print(f"wrote {len(written)} notebook(s) to {Path(args.course) / 'source' / args.assignment}:")
    for p in written:
        print(f"  {p.name}")
    print(f"next: cd {args.course} && nbgrader generate_assignment {args.assignment}")
    return 0


def _cmd_key(args) -> int:
    text = answer_key(args.src, tasks=args.tasks)
    if args.out == "-":
        print(text, end="")
    else:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote the answer key to {args.out}")
    return 0


def add_parser(sub):
    """Add ``ccledu course list|make-student|nbgrader|key`` to the CLI's sub-parsers."""
    p = sub.add_parser("course", help="coursework tools: list tasks, make a student copy, nbgrader, key",
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
    q = csub.add_parser("nbgrader", help="write the handed-out chapters into an nbgrader course's "
                                         "source/<assignment>/")
    q.add_argument("src", help="the instructor's repository (with solutions)")
    q.add_argument("course", help="the nbgrader course directory (created if missing)")
    q.add_argument("--assignment", required=True, help="the nbgrader assignment name, e.g. ch05")
    q.add_argument("--tasks", default=None, help="task ids or chapter numbers (default: every task)")
    q.set_defaults(func=_cmd_nbgrader)
    q = csub.add_parser("key", help="write the instructor's answer key (Markdown)")
    q.add_argument("src", help="the instructor's repository (with solutions)")
    q.add_argument("out", help="output file (.md), or - for standard output")
    q.add_argument("--tasks", default=None, help="only the chapters of these tasks (default: all)")
    q.set_defaults(func=_cmd_key)
    return p
