"""Drop the coursework markers from the chapters' Markdown cells, for the book only.

Two kinds of marker are annotations for the coursework tools, not text:

* nbgrader's solution delimiters ``### BEGIN SOLUTION`` / ``### END SOLUTION``, which in a
  Markdown answer cell (the model answers to a chapter's questions) are also Markdown level-3
  headings: left alone they would appear as "BEGIN SOLUTION" / "END SOLUTION" sections in the
  page outline and the table of contents. The book replaces the BEGIN line by a short
  paragraph, *Model answers* (...), and drops the END line. Code cells are not touched: there
  the delimiters are Python comments, shown as code.
* the withheld-text comments described next.

``ccledu course make-student`` finds the text it withholds from students between the HTML
comments ``<!-- BEGIN WITHHELD task, ... -->`` and ``<!-- END WITHHELD -->``. They are
annotations for that tool, not text, but some stand where a Markdown renderer does not treat
them as invisible: inside a ``$$ … $$`` formula (MathJax then typesets the comment as symbols),
or at the start of a line followed by ``$$`` (CommonMark then reads the whole line as raw HTML
and the formula is left as raw TeX). The book removes exactly these markers from its copy of
each Markdown cell as it reads the notebook; the files are not touched, and other comments are
kept. (``$$ … $$`` that continues a paragraph, which JupyterLab accepts, is enabled in conf.py
with ``myst_dmath_double_inline``.)
"""
import json
import re

_MARKER = re.compile(r"<!--\s*(?:BEGIN WITHHELD\b[^>]*?|END WITHHELD\s*)-->")
# a whole line "### BEGIN SOLUTION" (any heading level, text after it allowed, as course.py does)
_SOLUTION_BEGIN = re.compile(r"^[ \t]*#*[ \t]*BEGIN SOLUTION\b.*$", re.MULTILINE)
_SOLUTION_END = re.compile(r"^[ \t]*#*[ \t]*END SOLUTION\b.*(?:\n|$)", re.MULTILINE)
#: what the book shows where a Markdown answer cell's ``### BEGIN SOLUTION`` line was
MODEL_ANSWERS = ("*Model answers* (a student copy made by `ccledu course make-student` has "
                 "YOUR ANSWER HERE in their place):")


def drop_coursework_markers(text: str) -> str:
    """Remove every ``<!-- BEGIN WITHHELD … -->`` / ``<!-- END WITHHELD -->`` from ``text``."""
    return _MARKER.sub("", text)


def drop_solution_headings(text: str) -> str:
    """Replace a Markdown cell's ``### BEGIN SOLUTION`` line by :data:`MODEL_ANSWERS` and drop
    its ``### END SOLUTION`` line, so neither becomes a heading."""
    text = _SOLUTION_BEGIN.sub(MODEL_ANSWERS + "\n", text)    # a paragraph of its own
    return _SOLUTION_END.sub("", text)


def book_markdown(text: str) -> str:
    """The book's copy of one Markdown cell: both kinds of coursework marker handled."""
    return drop_solution_headings(drop_coursework_markers(text))


def _source_read(app, docname, source):
    if app.env.doc2path(docname).suffix != ".ipynb":
        return
    nb = json.loads(source[0])
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new = book_markdown(text)
        if new != text:
            cell["source"] = new
            changed = True
    if changed:
        source[0] = json.dumps(nb)


def setup(app):
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
