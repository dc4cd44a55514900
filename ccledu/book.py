"""The rendered book: build it from the executed chapters, and check it in a real browser.

``ccledu book build`` runs Sphinx with MyST-NB on the configuration in ``book/conf.py``: the
chapters (``chapters/NN_*.ipynb``), ``chapters/README.md``, ``docs/*.md`` and an API reference
generated from the package's docstrings become one HTML site with a table of contents. Each
chapter is executed (full mode by default, quick mode with ``--quick``) through jupyter-cache:
a chapter whose code cells have not changed since the last build is taken from the cache and
not run again. MathJax is served from the site itself, so the maths renders offline.

``ccledu book check`` serves a built site on 127.0.0.1 and visits every internal page in
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium) with every
outside host unresolvable. It fails on a page that does not load, maths that MathJax did not
typeset (or left as raw ``$$``, or HTML typeset as symbols), an image that did not load
(``naturalWidth == 0``), an internal link or ``#anchor`` that leads nowhere, a request to
another host, or a browser console error.
It can also save screenshots of a page with maths and a page with figures.

Both need the ``book`` extra: ``pip install -e ".[book]"`` from a checkout (the book's sources
are the checkout's chapters and docs, so an installed wheel alone cannot build it).
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
#: where builds go unless --out is given: book/_build/{full,quick}/{html,doctrees,jupyter_cache}
BUILD = BOOK / "_build"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
INSTALL_BROWSER = "apt-get install -y chromium chromium-driver"


class BookError(RuntimeError):
    """A build or check that cannot run or did not pass; the message says what to do."""


class BrowserMissing(BookError):
    """Chromium or its driver is not installed."""


# ----------------------------------------------------------------------------------------
# building
# ----------------------------------------------------------------------------------------

def _require_book_packages():
    missing = []
    for mod, pkg in (("sphinx", "sphinx"), ("myst_nb", "myst-nb"),
                     ("sphinx_book_theme", "sphinx-book-theme"),
                     ("mathjax", "django-static-mathjax")):          # book/_ext/offline_mathjax.py
        try:
            __import__(mod)
        except ImportError:
            missing.append(pkg)
    if missing:
        raise BookError(f"building the book needs {', '.join(missing)}: install the book extra "
                        f"with  pip install -e \".[book]\"  from the repository root")
    if not (BOOK / "conf.py").is_file() or not (ROOT / "chapters").is_dir():
        raise BookError(f"no book/conf.py and chapters/ beside the package ({ROOT}): the book is "
                        "built from a checkout; clone the repository and pip install -e it")


def default_dirs(quick: bool) -> dict:
    """Output, doctree and execution-cache directories of a build mode (see ``BUILD``)."""
    base = BUILD / ("quick" if quick else "full")
    return {"out": base / "html", "doctrees": base / "doctrees", "cache": base / "jupyter_cache"}


def build(quick: bool = False, out: Path | str | None = None, cache: Path | str | None = None,
          fresh: bool = False, rerun: bool = False, quiet: bool = True,
          allow_errors: bool = False, jobs: int = 1, cached_only: bool = False) -> dict:
    """Build the HTML book; returns ``{"out", "index", "cache", "seconds", "quick"}``.

    quick: run the chapters with ``CCLEDU_QUICK=1`` (small data, few epochs: for CI);
    out: the site directory (default ``book/_build/{full,quick}/html``);
    cache: the jupyter-cache directory of executed notebooks (default beside ``out``'s default);
    fresh: re-read every page (Sphinx ``-E``); executed chapters still come from the cache;
    rerun: empty the execution cache first, so every chapter is run again (do this after a
    change in the package that changes what a chapter prints: the cache key is the chapter's
    code cells only).
    allow_errors: a draft: a chapter cell that raises shows its error on the page instead of
    failing the build.
    jobs: Sphinx reads (and so executes) this many pages at once (``-j``); 1 by default.
    cached_only: run nothing: chapters with a cached execution of their current code show its
    outputs, the others are shown without outputs (a partial book, e.g. while a long full-mode
    execution is still under way); the result's ``not_executed`` lists them.
    Raises BookError with Sphinx's output tail when the build fails (a chapter that raises
    fails the build unless allow_errors).
    """
    _require_book_packages()
    dirs = default_dirs(quick)
    out = Path(out) if out is not None else dirs["out"]
    cache = Path(cache) if cache is not None else dirs["cache"]
    doctrees = out.parent / (out.name + ".doctrees") if out != dirs["out"] else dirs["doctrees"]
    if rerun and cache.exists():
        shutil.rmtree(cache)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CCLEDU_QUICK"] = "1" if quick else "0"
    env["CCLEDU_BOOK_CACHE"] = str(cache.resolve())
    env["CCLEDU_BOOK_ALLOW_ERRORS"] = "1" if allow_errors else "0"
    env["CCLEDU_BOOK_CACHED_ONLY"] = "1" if cached_only else "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("MPLBACKEND", None)   # the kernel's inline backend is what puts figures in outputs
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(BOOK), "-d", str(doctrees),
           "--keep-going", str(ROOT), str(out)]
    if fresh:
        cmd.insert(3, "-E")
    if jobs > 1:
        cmd[3:3] = ["-j", str(int(jobs))]
    if quiet:
        cmd.insert(3, "-q")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(ROOT), text=True,
                          stdout=subprocess.PIPE if quiet else None,
                          stderr=subprocess.STDOUT if quiet else None)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout or "")[-6000:]
        raise BookError(f"the book build failed (sphinx exit {proc.returncode}); "
                        f"its output ends with:\n{tail}")
    index = out / "book" / "index.html"
    if not index.is_file():
        raise BookError(f"the build finished but wrote no {index}")
    not_executed = []
    if cached_only:
        not_executed = [p.name for p in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
                        if not _matches(cache, p)]
    return {"out": out, "index": index, "cache": cache, "seconds": seconds, "quick": quick,
            "log": proc.stdout or "", "not_executed": not_executed}


def _matches(cache: Path, notebook: Path) -> bool:
    from jupyter_cache import get_cache
    try:
        get_cache(str(cache)).match_cache_file(str(notebook))
        return True
    except KeyError:
        return False


def cached_executions(cache: Path | str) -> dict:
    """The executed notebooks in a jupyter-cache directory: ``{uri: created timestamp}``."""
    from jupyter_cache import get_cache
    return {r.uri: r.created for r in get_cache(str(cache)).list_cache_records()}


# ----------------------------------------------------------------------------------------
# checking in a browser
# ----------------------------------------------------------------------------------------

def find_browser() -> tuple[str, str]:
    """Paths of Chromium and ChromeDriver (``CCLEDU_CHROMIUM`` / ``CCLEDU_CHROMEDRIVER`` override).

    Raises BrowserMissing saying how to install them."""
    chromium = os.environ.get("CCLEDU_CHROMIUM") or next(
        (p for p in CHROMIUM_CANDIDATES if os.path.exists(p)), None) or shutil.which("chromium")
    driver = os.environ.get("CCLEDU_CHROMEDRIVER") or next(
        (p for p in CHROMEDRIVER_CANDIDATES if os.path.exists(p)), None) \
        or shutil.which("chromedriver")
    if not chromium or not driver:
        what = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver))
                            if not p)
        raise BrowserMissing(f"no {what} found: on Debian/Ubuntu run  {INSTALL_BROWSER}  (as "
                             "root), or set CCLEDU_CHROMIUM and CCLEDU_CHROMEDRIVER to their paths")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise BrowserMissing("the browser check drives Chromium with selenium, which is not "
                             "installed: pip install -e \".[book]\"") from None
    return chromium, driver


def _chrome(width: int = 1280, height: int = 900):
    chromium, driver = find_browser()          # raises BrowserMissing, also without selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"ccledu-chromium-{os.getpid()}"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}",
                 "--hide-scrollbars",
                 # every host but the local server is unresolvable: a CDN script cannot load
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts), profile


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)   # the browser hung up: not a fault


def _serve(site: Path):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# What a page reports after load; MathJax 3 has typeset once MathJax.startup.promise resolves.
_PAGE_JS = r"""
const done = arguments[arguments.length - 1];
const mathNodes = document.querySelectorAll('.math');
function report() {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  Promise.allSettled(imgs.map(i => i.decode())).then(() => {
    const main = document.querySelector('main, article, [role=main]') || document.body;
    const clone = main.cloneNode(true);
    clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight')
      .forEach(e => e.remove());
    const text = clone.textContent;
    const raw = ['$$', '\\begin{', '\\frac', '\\(', '\\['].filter(t => text.includes(t));
    const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id)
      .concat(Array.from(document.querySelectorAll('a[name]')).map(e => e.name));
    done({
      title: document.title,
      outputs: document.querySelectorAll('.cell_output').length,
      math: mathNodes.length,
      typeset: document.querySelectorAll('mjx-container').length,
      mathErrors: document.querySelectorAll('mjx-merror, [data-mjx-error]').length,
      untypeset: Array.from(mathNodes).filter(e => !e.querySelector('mjx-container')).length,
      htmlInTex: (window.MathJax && MathJax.startup && MathJax.startup.document
                  ? Array.from(MathJax.startup.document.math).map(m => m.math)
                  : []).filter(t => /<!--|-->|<\/?[a-z]+[ >]/i.test(t)).slice(0, 5),
      raw: raw,
      images: imgs.map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
                              width: i.naturalWidth})),
      links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
      ids: ids,
      resources: performance.getEntriesByType('resource').map(e => e.name).concat(
        Array.from(document.querySelectorAll(
          'script[src], link[rel=stylesheet][href], img[src], iframe[src], video[src]'))
        .map(e => e.src || e.href)),
    });
  });
}
if (mathNodes.length === 0) { report(); }
else {
  const t0 = Date.now();
  (function wait() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(report, report);
    } else if (Date.now() - t0 > 15000) { report(); }   // MathJax never arrived
    else { setTimeout(wait, 50); }
  })();
}
"""


def _is_fault(message: str) -> bool:
    """A console message that means the page is broken: a resource that failed to load, an
    uncaught exception, something the browser refused. (A theme's own console.error chatter is
    not a fault, nor the browser's automatic request for /favicon.ico, which the site lacks.)"""
    if "/favicon.ico" in message:
        return False
    return any(k in message for k in ("Failed to load resource", "Uncaught", "Refused",
                                      "blocked by", "ERR_"))


def _is_page(path: str) -> bool:
    return path.endswith(".html") or path.endswith("/")


def check_site(site: Path | str, screenshots: Path | str | None = None,
               start: str = "book/index.html", page_timeout: float = 60.0) -> dict:
    """Visit every internal page of a built site in headless Chromium; returns a report.

    The report: ``pages`` (url -> {math, typeset, images, ...}), ``files`` (non-HTML internal
    links fetched), ``problems`` (list of sentences; empty when the site passes), ``seconds``,
    ``screenshots`` (paths written). With ``screenshots`` set, ``maths.png`` is the executed
    chapter page with the most typeset maths, scrolled to its first displayed equation, and
    ``figures.png`` the executed chapter page with the most figures, scrolled to its first one.
    """
    site = Path(site)
    if not (site / start).is_file():
        raise BookError(f"{site / start} does not exist: build the book first (ccledu book build)")
    find_browser()
    from selenium.common.exceptions import TimeoutException

    t0 = time.perf_counter()
    server, base = _serve(site)
    driver, profile = _chrome()
    driver.set_page_load_timeout(page_timeout)
    driver.set_script_timeout(page_timeout)
    pages, files, problems = {}, {}, []
    linked_from: dict[str, str] = {}
    fragments: list[tuple[str, str, str]] = []
    queue = [base + start, base + "index.html"]
    prev = None          # the page last visited: late console errors belong to it
    try:
        while queue:
            url = queue.pop(0)
            if url in pages or url in files:
                continue
            path = urllib.parse.urlparse(url).path
            if not _is_page(path):
                try:
                    with urllib.request.urlopen(url, timeout=30) as r:
                        files[url] = r.status
                except urllib.error.HTTPError as e:
                    files[url] = e.code
                    problems.append(f"broken link to {path} (HTTP {e.code}) on "
                                    f"{linked_from.get(url, '?')}")
                continue
            if not (site / urllib.parse.unquote(path.lstrip("/"))).exists() and \
                    not path.endswith("/"):
                pages[url] = None
                problems.append(f"broken link to {path} on {linked_from.get(url, '?')}")
                continue
            prev = _late_console(driver, prev, problems)
            try:
                driver.get(url)
            except TimeoutException:
                pages[url] = None
                problems.append(f"{path}: did not load within {page_timeout:.0f} s")
                continue
            if driver.current_url.partition("#")[0] != url:      # a redirect page
                pages[url] = {"redirect": driver.current_url}
                target = driver.current_url.partition("#")[0]
                if target.startswith(base) and target not in pages:
                    linked_from.setdefault(target, path)
                    queue.append(target)
                continue
            try:
                info = driver.execute_async_script(_PAGE_JS)
            except TimeoutException:
                pages[url] = None
                problems.append(f"{path}: its images or maths did not finish within "
                                f"{page_timeout:.0f} s")
                continue
            info["console"] = [e["message"] for e in driver.get_log("browser")
                               if e.get("level") == "SEVERE" and _is_fault(e["message"])]
            pages[url] = info
            where = prev = path
            if info["untypeset"]:
                problems.append(f"{where}: {info['untypeset']} of {info['math']} maths elements "
                                "were not typeset by MathJax")
            if info["htmlInTex"]:
                problems.append(f"{where}: HTML inside a formula, typeset as symbols: "
                                f"{info['htmlInTex'][0][:80]!r}")
            if info["mathErrors"]:
                problems.append(f"{where}: {info['mathErrors']} MathJax errors")
            if info["raw"]:
                problems.append(f"{where}: raw TeX left in the text: {info['raw']}")
            for img in info["images"]:
                if not img["ok"]:
                    problems.append(f"{where}: image {img['src']} did not load")
            for res in info["resources"]:
                if not res.startswith(base) and not res.startswith(("data:", "blob:")):
                    problems.append(f"{where}: requested a resource outside the site: {res}")
            for msg in info["console"]:
                problems.append(f"{where}: browser console error: {msg}")
            for href in info["links"]:
                if not href.startswith(base):
                    continue        # external links are not followed (no network here)
                target, _, frag = href.partition("#")
                if frag:
                    fragments.append((target, urllib.parse.unquote(frag), where))
                if target not in pages and target not in files:
                    linked_from.setdefault(target, where)
                    queue.append(target)
        _late_console(driver, prev, problems)
        for target, frag, where in fragments:
            info = pages.get(target)
            if info and "ids" in info and frag not in info["ids"]:
                problems.append(f"{where}: link to #{frag} on "
                                f"{urllib.parse.urlparse(target).path}, which has no such anchor")
        shots = _screenshots(driver, pages, Path(screenshots)) if screenshots else []
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()
        shutil.rmtree(profile, ignore_errors=True)
    return {"pages": pages, "files": files, "problems": sorted(set(problems)),
            "seconds": time.perf_counter() - t0, "screenshots": shots, "base": base}


def _late_console(driver, where, problems):
    """Console errors that arrived after a page reported (a lazy image failing late) are the
    previous page's: read them before leaving it."""
    for e in driver.get_log("browser"):
        if where and e.get("level") == "SEVERE" and _is_fault(e["message"]):
            problems.append(f"{where}: browser console error: {e['message']}")
    return where


def _screenshots(driver, pages: dict, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    chapters = {u: i for u, i in pages.items() if i and i.get("outputs")
                and "/chapters/" in u and "README" not in u}
    if not chapters:
        raise BookError("no executed chapter page was visited: nothing to take a screenshot of")
    written = []
    for name, key, selector in (("maths", "typeset", "div.math"),
                                ("figures", "images", "div.cell_output img")):
        url = max(chapters, key=lambda u: (len(chapters[u][key]) if key == "images"
                                           else chapters[u][key]))
        driver.get(url)
        driver.execute_async_script(_PAGE_JS)
        driver.execute_script(
            "const e = document.querySelector(arguments[0]);"
            "if (e) { e.scrollIntoView({block: 'start'}); window.scrollBy(0, -120); }", selector)
        time.sleep(0.3)
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------

def _cmd_build(args) -> int:
    try:
        res = build(quick=args.quick, out=args.out, cache=args.cache, fresh=args.fresh,
                    rerun=args.rerun, quiet=not args.verbose, allow_errors=args.allow_errors,
                    jobs=args.jobs, cached_only=args.cached_only)
    except BookError as e:
        print(f"ccledu book build: {e}", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else "full"
    print(f"built the book ({mode} mode) in {res['seconds']:.0f} s: {res['index']}")
    if res["not_executed"]:
        print(f"not executed (shown without outputs): {', '.join(res['not_executed'])}")
    print(f"executed chapters cached in {res['cache']}; open {res['out'] / 'index.html'} "
          f"in a browser, or check it with: ccledu book check --site {res['out']}")
    return 0


def _cmd_check(args) -> int:
    site = Path(args.site) if args.site else default_dirs(args.quick)["out"]
    try:
        rep = check_site(site, screenshots=args.screenshots)
    except BookError as e:
        print(f"ccledu book check: {e}", file=sys.stderr)
        return 2
    seen = [v for v in rep["pages"].values() if v and "images" in v]
    n_pages, n_img, n_math = len(seen), sum(len(v["images"]) for v in seen), \
        sum(v["typeset"] for v in seen)
    print(f"visited {n_pages} pages and {len(rep['files'])} files in {rep['seconds']:.0f} s: "
          f"{n_img} images, {n_math} typeset formulas")
    for p in rep["screenshots"]:
        print(f"screenshot: {p}")
    for p in rep["problems"]:
        print(f"problem: {p}")
    return 1 if rep["problems"] else 0


def add_parser(sub) -> None:
    """Register ``ccledu book build`` and ``ccledu book check``."""
    p = sub.add_parser("book", help="build the rendered book (Sphinx + MyST-NB) and check it in "
                       "headless Chromium", description=__doc__.split("\n\n")[0])
    bsub = p.add_subparsers(dest="book_command", metavar="ACTION")
    bsub.required = True
    b = bsub.add_parser("build", help="execute the chapters (cached) and build the HTML book")
    b.add_argument("--quick", action="store_true",
                   help="run the chapters in quick mode (CCLEDU_QUICK=1; default: full mode)")
    b.add_argument("--out", default=None,
                   help="site directory (default: book/_build/full/html, or quick/html)")
    b.add_argument("--cache", default=None, help="execution cache directory (default: "
                   "book/_build/full/jupyter_cache, or quick/jupyter_cache)")
    b.add_argument("--fresh", action="store_true",
                   help="re-read every page (executed chapters still come from the cache)")
    b.add_argument("--rerun", action="store_true",
                   help="empty the execution cache first, so every chapter runs again")
    b.add_argument("--allow-errors", action="store_true",
                   help="draft: show a failing cell's error on its page instead of failing")
    b.add_argument("--cached-only", action="store_true",
                   help="run nothing: chapters without a cached execution are shown without "
                   "outputs (a partial book)")
    b.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                   help="execute and read N pages at once (default 1)")
    b.add_argument("--verbose", action="store_true", help="show Sphinx's output as it runs")
    b.set_defaults(func=_cmd_build)
    c = bsub.add_parser("check", help="visit every page of a built book in headless Chromium "
                        "(maths typeset, figures loaded, internal links resolve)")
    c.add_argument("--site", default=None,
                   help="built site (default: book/_build/full/html, or quick/html)")
    c.add_argument("--quick", action="store_true", help="check the default quick-mode site")
    c.add_argument("--screenshots", default=None, metavar="DIR",
                   help="also write DIR/maths.png and DIR/figures.png")
    c.set_defaults(func=_cmd_check)
