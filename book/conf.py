"""Sphinx configuration of the ccledu book (MyST-NB renders the chapter notebooks).

The source directory is the repository root, so the chapters, docs/ and the package are read
where they live (nothing is copied or edited) and every relative link between them keeps
working. Build it with ``ccledu book build`` (see docs/book.md); that command sets the
environment variables read here:

- ``CCLEDU_QUICK``: "1" runs the chapters in quick mode (CI), otherwise full mode;
- ``CCLEDU_BOOK_CACHE``: the jupyter-cache directory holding the executed notebooks. A chapter
  whose code cells are unchanged is taken from it instead of being run again. Quick and full
  builds use different directories (the cache key is the code, not the environment).
"""
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))            # autodoc imports the checkout's ccledu
sys.path.insert(0, str(HERE / "_ext"))

QUICK = os.environ.get("CCLEDU_QUICK", "0") not in ("", "0")

project = "ccledu: a textbook of biologically motivated credit assignment"
author = "the ccledu authors"
copyright = "the ccledu authors (MIT licence)"
root_doc = "book/index"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "ccledu_links",
    "notebook_markdown",
    "offline_mathjax",
]

# Only these files form the book; everything else in the repository is ignored.
include_patterns = ["book/*.md", "chapters/*.ipynb", "chapters/README.md", "docs/*.md"]
exclude_patterns = ["book/_build", "**/.ipynb_checkpoints", ".git", "runs", "student",
                    "data", "benchmarks", "build", "dist"]

# --- notebooks -------------------------------------------------------------------------
nb_execution_mode = "cache"
nb_execution_cache_path = os.environ.get(
    "CCLEDU_BOOK_CACHE", str(HERE / "_build" / ("quick" if QUICK else "full") / "jupyter_cache"))
nb_execution_timeout = 600 if QUICK else 3600      # per cell, seconds
# A failing chapter fails the build, unless CCLEDU_BOOK_ALLOW_ERRORS=1 (ccledu book build
# --allow-errors: a draft in which the error is shown on the page).
ALLOW_ERRORS = os.environ.get("CCLEDU_BOOK_ALLOW_ERRORS", "0") not in ("", "0")
nb_execution_raise_on_error = not ALLOW_ERRORS
nb_execution_allow_errors = ALLOW_ERRORS
nb_execution_show_tb = True
nb_execution_in_temp = False                       # run in chapters/, as a reader would


def _not_cached(cache_path):
    """Chapters without a cached execution of their current code (CCLEDU_BOOK_CACHED_ONLY=1,
    ``ccledu book build --cached-only``: they are shown without outputs, nothing is run)."""
    from jupyter_cache import get_cache
    cache = get_cache(cache_path)
    missing = []
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        try:
            cache.match_cache_file(str(path))
        except KeyError:
            missing.append(f"chapters/{path.name}")
    return missing


NOT_EXECUTED = (_not_cached(nb_execution_cache_path)
                if os.environ.get("CCLEDU_BOOK_CACHED_ONLY", "0") not in ("", "0") else [])
nb_execution_excludepatterns = NOT_EXECUTED
nb_merge_streams = True
nb_render_markdown_format = "myst"                 # Markdown outputs (report tables) as MyST
nb_output_stderr = "remove-warn"                   # progress bars on stderr are not content

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True                    # "text\n$$ x $$" as JupyterLab renders it

# --- maths: MathJax 3 served from the site itself (no CDN) ----------------------------
# offline_mathjax copies MathJax 3.2.2 (SVG output, shipped by the PyPI package
# django-static-mathjax, which has no dependencies) into _static/mathjax/.
mathjax_path = "mathjax/tex-svg.js"
mathjax3_config = {
    "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
            "processEscapes": True, "processEnvironments": True},
    "options": {"processHtmlClass": "tex2jax_process|mathjax_process|math|output_area",
                "ignoreHtmlClass": "tex2jax_ignore|mathjax_ignore|document"},
    "svg": {"fontCache": "global"},
}
myst_update_mathjax = False                        # the configuration above is complete

# --- API ------------------------------------------------------------------------------
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"


_LITERAL = re.compile(r"(``.+?``)")


def _escape_plain_text(text: str) -> str:
    """Outside ``literals``: a bar is text, not a substitution (|a - b|), a trailing
    underscore is part of a name (clip_grad_norm_), not a link, and so is a star that starts a
    name ((N, *shape)), not emphasis."""
    parts = _LITERAL.split(text)
    for i in range(0, len(parts), 2):
        part = re.sub(r"(\w)_(?=\W|$)", r"\1\\_", parts[i].replace("|", "\\|"))
        # a star that opens no emphasis, as in (N, *input_shape): plain text
        parts[i] = re.sub(r"\*(?=\w)(?![^*\s]*\*)", r"\\*", part)
    return "".join(parts)


def _docstring_fixups(app, what, name, obj, options, lines):
    """The docstrings are reStructuredText-like prose (``code``, :class:`X`) with plain-text
    equations; keep the markup, escape what plain text means differently in reST."""
    lines[:] = [_escape_plain_text(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _docstring_fixups)

# --- HTML -----------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "ccledu"
html_static_path = []
html_extra_path = [str(HERE / "_extra")]           # /index.html -> book/index.html
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
}
html_last_updated_fmt = None
html_copy_source = True
suppress_warnings = ["myst.header", "misc.highlighting_failure"]
