"""Serve MathJax from the built site: copy MathJax 3 (the SVG-output bundle ``tex-svg.js`` and
the components it may load on demand) from the PyPI package ``django-static-mathjax`` into
``<site>/_static/mathjax/``.

``conf.py`` points ``mathjax_path`` at that copy, so a page renders its maths with no network
(the book's browser check runs Chromium with every outside host unresolvable to prove it). The
SVG output draws glyphs as paths, so no web font has to load either.
"""
import shutil
from pathlib import Path

from sphinx.errors import ExtensionError

#: what is copied from MathJax's es5/ folder (about 4.5 MB); the rest is not loaded by tex-svg
PARTS = ("tex-svg.js", "input", "ui", "a11y")


def mathjax_source() -> Path:
    try:
        import mathjax
    except ImportError:
        raise ExtensionError("the book serves MathJax from the package django-static-mathjax, "
                             "which is not installed: pip install -e '.[book]'") from None
    src = Path(mathjax.__file__).resolve().parent / "static" / "mathjax"
    if not (src / "es5" / "tex-svg.js").is_file():
        raise ExtensionError(f"no es5/tex-svg.js under {src}: reinstall django-static-mathjax")
    return src


def _copy(app):
    if app.builder.format != "html":
        return
    src = mathjax_source()
    dest = Path(app.outdir) / "_static" / "mathjax"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for part in PARTS:
        s = src / "es5" / part
        if s.is_dir():
            shutil.copytree(s, dest / part, dirs_exist_ok=True)
        else:
            shutil.copy2(s, dest / part)
    shutil.copy2(src / "LICENSE", dest / "LICENSE")


def setup(app):
    app.connect("builder-inited", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
