"""Drop the coursework markers from the chapters' Markdown cells, for the book only.

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


def drop_coursework_markers(text: str) -> str:
    """Remove every ``<!-- BEGIN WITHHELD … -->`` / ``<!-- END WITHHELD -->`` from ``text``."""
    return _MARKER.sub("", text)


def _source_read(app, docname, source):
    if app.env.doc2path(docname).suffix != ".ipynb":
        return
    nb = json.loads(source[0])
    changed = False
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        new = drop_coursework_markers(text)
        if new != text:
            cell["source"] = new
            changed = True
    if changed:
        source[0] = json.dumps(nb)


def setup(app):
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
