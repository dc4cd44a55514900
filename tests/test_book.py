"""The rendered book: a quick-mode build, its execution cache, and a real headless browser.

``ccledu book build --quick`` is run for real (Sphinx + MyST-NB executing every chapter with
``CCLEDU_QUICK=1``), then ``ccledu.book.check_site`` visits every internal page of the result in
Debian's Chromium through Selenium, with every outside host unresolvable: pages load, MathJax
typeset every formula (served from the site: no CDN), no raw TeX is left, every image loaded
(naturalWidth > 0), every internal link and #anchor resolves, nothing was requested from
another host. The checker itself is shown to catch each of those faults on a small broken site.

Needs the ``book`` extra and ``chromium`` + ``chromium-driver`` (see docs/book.md). Where they
are missing the tests skip with the install command, except under CI (``CI`` set), where a
missing browser or package is a failure, so the check cannot silently not run.
"""
import os
import re
import struct
import warnings
from pathlib import Path

import pytest

from ccledu import book

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
DOCS = sorted((ROOT / "docs").glob("*.md"))

pytestmark = pytest.mark.slow

#: faults in the chapters' own content that the browser check finds today, tolerated here until
#: the chapter is fixed (each still shows as a warning in the test summary). Add an entry only
#: with the issue that will fix it, and remove it once its chapter is fixed. Empty: every figure
#: of every chapter must load (chapter 9's report figures, once linked relative to the report
#: file, are now embedded by the chapter itself).
KNOWN_CHAPTER_DEFECTS: list[str] = []


def _unavailable(msg):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the book tests, but {msg}")
    pytest.skip(msg)


def _need_build():
    try:
        book._require_book_packages()
    except book.BookError as e:
        _unavailable(str(e))


def _need_browser():
    try:
        book.find_browser()
    except book.BrowserMissing as e:
        _unavailable(str(e))


@pytest.fixture(scope="module")
def quick_book(tmp_path_factory):
    """Two quick builds sharing one execution cache: the second re-reads every page (-E)."""
    _need_build()
    tmp = tmp_path_factory.mktemp("book")
    cache = book.default_dirs(quick=True)["cache"]     # kept between runs: book/_build/quick
    first = book.build(quick=True, out=tmp / "html", cache=cache)
    records1 = _records_for_chapters(cache)
    second = book.build(quick=True, out=tmp / "html2", cache=cache, fresh=True)
    records2 = _records_for_chapters(cache)
    return {"first": first, "second": second, "records1": records1, "records2": records2,
            "tmp": tmp}


def _records_for_chapters(cache):
    """chapter name -> (record id, created) of the cache entry matching its current code."""
    from jupyter_cache import get_cache
    c = get_cache(str(cache))
    out = {}
    for path in CHAPTERS:
        try:
            rec = c.match_cache_file(str(path))
        except KeyError:
            continue
        out[path.name] = (rec.pk, rec.created)
    return out


def test_build_has_every_chapter_doc_and_the_api(quick_book):
    out = quick_book["first"]["out"]
    for path in CHAPTERS:
        page = out / "chapters" / (path.stem + ".html")
        assert page.is_file(), f"{page} missing"
        html = page.read_text(encoding="utf-8")
        assert "cell_output" in html, f"{page.name}: no executed outputs"
    for path in DOCS:
        assert (out / "docs" / (path.stem + ".html")).is_file(), f"{path.name} not in the book"
    api = (out / "book" / "api.html").read_text(encoding="utf-8")
    for name in ("ccledu.train.run", "ccledu.rules.ccl.CCL", "ccledu.layers.Linear",
                 "ccledu.plotting.layout_faults"):
        assert f'id="{name}"' in api, f"API page has no entry for {name}"
    index = (out / "book" / "index.html").read_text(encoding="utf-8")
    for path in CHAPTERS:
        assert f"../chapters/{path.stem}.html" in index, f"table of contents lacks {path.stem}"
    # inline code naming a package object or a doc page links to it (book/_ext/ccledu_links.py)
    ch = "".join((out / "docs" / (p.stem + ".html")).read_text(encoding="utf-8") for p in DOCS)
    assert re.search(r'href="\.\./book/api\.html#ccledu\.[\w.]+"', ch), "no link into the API"
    assert re.search(r'href="[\w-]+\.html"><span class="doc">docs/[\w-]+\.md<', ch), \
        "no link between doc pages"
    # MathJax is served from the site itself
    assert (out / "_static" / "mathjax" / "tex-svg.js").is_file()
    assert "cdn" not in (out / "chapters" / "05_ccl_mlp.html").read_text().lower()


def _markdown_ext():
    import importlib
    import sys
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    try:
        return importlib.import_module("notebook_markdown")
    finally:
        sys.path.pop(0)


def test_book_copy_of_markdown_drops_coursework_markers():
    """What the book does to each Markdown cell, on the real chapters (no build needed): no
    nbgrader delimiter is left to become a heading, no withheld-text comment to be typeset, and
    nothing else changes. The notebooks themselves keep their markers (make-student needs them)."""
    import json
    ext = _markdown_ext()
    heading = re.compile(r"^[ \t]*#+[ \t]*(BEGIN|END) SOLUTION", re.MULTILINE)
    n_answers = n_withheld = 0
    for path in CHAPTERS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            text = "".join(cell["source"])
            out = ext.book_markdown(text)
            assert not heading.search(out) and "WITHHELD" not in out, (path.name, out[:200])
            n_answers += bool(heading.search(text))
            n_withheld += "WITHHELD" in text
            # apart from the markers (and the model-answers line), the text is kept as it was
            kept = re.sub(r"<!--\s*(BEGIN WITHHELD[^>]*?|END WITHHELD\s*)-->", "", text)
            kept = re.sub(r"^[ \t]*#+[ \t]*BEGIN SOLUTION.*$", ext.MODEL_ANSWERS + "\n", kept,
                          flags=re.MULTILINE)
            kept = re.sub(r"^[ \t]*#+[ \t]*END SOLUTION.*(\n|$)", "", kept, flags=re.MULTILINE)
            assert out == kept
    assert n_answers >= len(CHAPTERS) - 1, "the chapters lost their model-answer cells?"
    assert n_withheld >= 10, "the chapters lost their withheld-text markers?"
    # inside a formula the comment is removed, the maths kept
    assert ext.book_markdown("a\n$$x<!-- BEGIN WITHHELD 1.1 --> = y<!-- END WITHHELD -->$$") == \
        "a\n$$x = y$$"
    # a code cell's delimiters are Python comments: the book leaves code cells alone
    assert ext.book_markdown("### BEGIN SOLUTION\n1. yes\n### END SOLUTION\n") == \
        ext.MODEL_ANSWERS + "\n\n1. yes\n"


def test_no_coursework_marker_in_the_rendered_chapters(quick_book):
    """The built pages: no "BEGIN/END SOLUTION" heading (so none in the table of contents or the
    page outline), no withheld-text comment anywhere, and the model answers introduced as such."""
    out = quick_book["first"]["out"]
    for path in CHAPTERS:
        html = (out / "chapters" / (path.stem + ".html")).read_text(encoding="utf-8")
        assert not re.search(r"<h[1-6][^>]*>[^<]*(BEGIN|END) SOLUTION", html), path.name
        assert 'id="begin-solution"' not in html and "#begin-solution" not in html, path.name
        assert "#end-solution" not in html, path.name
        assert "WITHHELD" not in html, f"{path.name}: a withheld-text marker was rendered"
    index = (out / "book" / "index.html").read_text(encoding="utf-8")
    assert "SOLUTION" not in index
    ch1 = (out / "chapters" / "01_backprop.html").read_text(encoding="utf-8")
    assert "Model answers" in ch1


def test_chapter_9_shows_the_report_figures(quick_book):
    """Chapter 9 displays the benchmark reports, whose figures are linked relative to the report
    file: the chapter embeds them, so each one is an image of the book with the same bytes."""
    out = quick_book["first"]["out"]
    reports = sorted((ROOT / "benchmarks" / "results" / "reproduce").glob("*/REPORT.md"))
    linked = [rep.parent / m for rep in reports
              for m in re.findall(r"!\[[^\]]*\]\(([^)\s:#]+)\)", rep.read_text())]
    if not linked:
        pytest.skip("no reproduction report with figures in this copy")
    page = (out / "chapters" / "09_comparing_rules.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    site_images = {(out / "chapters" / s).resolve().read_bytes() for s in srcs
                   if (out / "chapters" / s).resolve().is_file()}
    for png in linked:
        assert png.read_bytes() in site_images, f"{png.relative_to(ROOT)} is not on the page"
    assert "chapters/chapters/" not in page


def test_execution_cache_skips_unchanged_chapters(quick_book):
    r1, r2 = quick_book["records1"], quick_book["records2"]
    missing = sorted({p.name for p in CHAPTERS} - set(r1))
    assert not missing, (f"chapters without a cached execution matching their current code after "
                         f"the build (edited while the test ran?): {missing}")
    assert r2 == r1, "the second build re-executed chapters whose code had not changed"
    first, second = quick_book["first"]["seconds"], quick_book["second"]["seconds"]
    print(f"quick book: first build {first:.0f} s, rebuild from the cache {second:.0f} s")


def test_quick_book_in_headless_chromium(quick_book):
    _need_browser()
    shots = quick_book["tmp"] / "shots"
    rep = book.check_site(quick_book["first"]["out"], screenshots=shots)
    known = [p for p in rep["problems"] if any(re.search(k, p) for k in KNOWN_CHAPTER_DEFECTS)]
    unexpected = [p for p in rep["problems"] if p not in known]
    assert not unexpected, "the book has faults:\n" + "\n".join(unexpected)
    if known:
        warnings.warn("known chapter defects still present:\n" + "\n".join(known))
    pages = {u.split(rep["base"], 1)[1]: v for u, v in rep["pages"].items() if v}
    for path in CHAPTERS:
        assert f"chapters/{path.stem}.html" in pages, f"the crawl never reached {path.stem}"
    for path in DOCS:
        assert f"docs/{path.stem}.html" in pages, f"the crawl never reached docs/{path.name}"
    chapters = [v for k, v in pages.items() if k.startswith("chapters/0") or
                k.startswith("chapters/1")]
    assert sum(v["typeset"] for v in chapters) > 100, "hardly any maths typeset in the chapters"
    assert sum(len(v["images"]) for v in chapters) >= len(CHAPTERS), "too few figures"
    assert all(v["math"] == 0 or v["typeset"] > 0 for v in chapters)
    for png in rep["screenshots"]:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", data[16:24]) == (1280, 900) or len(data) > 20000
        assert len(data) > 20000, f"{png.name} looks empty ({len(data)} bytes)"
    print(f"browser check: {len(pages)} pages, {len(rep['files'])} files in "
          f"{rep['seconds']:.0f} s")


BROKEN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title>
<script src="http://cdn.example.invalid/mathjax.js"></script></head><body><main>
<p>Text with raw $$ a^2 $$ maths.</p>
<p><span class="math notranslate">\\(a_l\\)</span></p>
<img src="missing.png" alt="gone"><img src="ok.png" alt="fine">
<a href="nowhere.html">dead</a> <a href="#no-such-anchor">bad anchor</a>
<a href="other.html#there">good</a> <a href="missing-file.txt">dead file</a>
</main></body></html>"""


def test_the_checker_catches_each_kind_of_fault(tmp_path):
    """A small site with one of each fault: the check must name every one of them."""
    _need_browser()
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "index.html").write_text(BROKEN_PAGE)
    (tmp_path / "book" / "other.html").write_text(
        '<!DOCTYPE html><html><body><main><p id="there">ok</p></main></body></html>')
    # a valid 1x1 PNG
    (tmp_path / "book" / "ok.png").write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
        "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"))
    rep = book.check_site(tmp_path)
    text = "\n".join(rep["problems"])
    assert "raw TeX" in text and "$$" in text
    assert "were not typeset by MathJax" in text
    assert "missing.png did not load" in text
    assert "ok.png did not load" not in text
    assert "broken link to /book/nowhere.html" in text
    assert "broken link to /book/missing-file.txt" in text
    assert "#no-such-anchor" in text and "#there" not in text
    assert "outside the site" in text and "cdn.example.invalid" in text
