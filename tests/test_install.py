"""chapters/README.md's commands work in a fresh virtual environment.

The "Running them" block of chapters/README.md is read from the file (so the test follows the
documentation) and each of its commands is run for real in a new ``python -m venv`` (a clean
one: no ``--system-site-packages``), with the checkout installed as ``pip install -e
".[notebooks]"``. pip may take wheels from its cache; it needs no network beyond the package
index. Then, from that environment only:

- ``jupyter lab --version`` and ``jupyter nbconvert --version`` answer;
- ``jupyter lab chapters/`` starts a server that serves the chapter notebooks;
- ``jupyter nbconvert --to notebook --execute`` runs chapter 1 with ``CCLEDU_QUICK=1`` and the
  executed copy has outputs and no error.
"""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "chapters" / "README.md"

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """The shell commands of the ```bash block under "## Running them", comments removed."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Running them\s*$(.*?)^## ", text, re.S | re.M)
    assert m, "chapters/README.md has no '## Running them' section"
    block = re.search(r"```bash\n(.*?)```", m.group(1), re.S)
    assert block, "the 'Running them' section of chapters/README.md has no ```bash block"
    cmds = []
    for line in block.group(1).splitlines():
        cmd = line.split(" #", 1)[0].strip()
        if cmd and not cmd.startswith("#"):
            cmds.append(cmd)
    return cmds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, env, cwd=ROOT, timeout=900):
    proc = subprocess.run(args, env=env, cwd=cwd, text=True, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, args))} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def test_readme_names_the_commands_this_test_runs():
    cmds = readme_commands()
    assert 'python -m pip install -e ".[notebooks]"' in cmds
    assert "jupyter lab chapters/" in cmds
    assert any(c.startswith("CCLEDU_QUICK=1 jupyter nbconvert --to notebook --execute ")
               for c in cmds), cmds


def test_notebooks_extra_in_a_fresh_venv(tmp_path):
    cmds = readme_commands()
    venv = tmp_path / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_ = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "MPLBACKEND")}
    env["PATH"] = os.pathsep.join([str(bin_), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    env["JUPYTER_CONFIG_DIR"] = str(tmp_path / "jupyter-config")   # no user settings
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "jupyter-data")
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "jupyter-runtime")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")

    # 1. the install command, run by the venv's python
    install = shlex.split(next(c for c in cmds if "pip install" in c))
    assert install[0] == "python"
    _run([str(bin_ / "python")] + install[1:] + ["-q"], env)
    installed = time.perf_counter() - t0
    jupyter = str(bin_ / "jupyter")
    assert Path(jupyter).is_file(), "the notebooks extra installed no jupyter command"

    # 2. the front end and the converter answer, from the venv alone
    assert re.search(r"\d+\.\d+", _run([jupyter, "lab", "--version"], env))
    assert re.search(r"\d+\.\d+", _run([jupyter, "nbconvert", "--version"], env))
    where = _run([str(bin_ / "python"), "-c", "import ccledu, jupyterlab, nbconvert, "
                  "ipykernel; print(ccledu.__file__)"], env)
    assert str(ROOT / "ccledu") in where, where

    # 3. `jupyter lab chapters/` serves the chapters (started for real, then stopped)
    lab_cmd = shlex.split(next(c for c in cmds if c.startswith("jupyter lab")))
    port = _free_port()
    server = subprocess.Popen([str(bin_ / lab_cmd[0])] + lab_cmd[1:] + [
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.open_browser=False"]
        + (["--allow-root"] if os.geteuid() == 0 else []),   # CI runs as root
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        listing = None
        deadline = time.time() + 120
        while time.time() < deadline and server.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/contents"
                with urllib.request.urlopen(url, timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "jupyter lab chapters/ did not start serving within 120 s:\n" \
            + (server.stdout.read() if server.poll() is not None else "(still running)")
        names = {item["name"] for item in listing["content"]}
        assert "01_backprop.ipynb" in names, names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=30) as r:
            assert r.status == 200 and b"JupyterLab" in r.read()
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()

    # 4. the README's nbconvert command, its output sent to tmp_path
    conv = next(c for c in cmds if "nbconvert" in c)
    words = shlex.split(conv)
    assert words[0] == "CCLEDU_QUICK=1"
    env_conv = dict(env, CCLEDU_QUICK="1")
    args = words[1:]
    if "--output-dir" in args:
        args[args.index("--output-dir") + 1] = str(tmp_path / "executed")
    else:
        args += ["--output-dir", str(tmp_path / "executed")]
    args[0] = str(bin_ / args[0])
    _run(args, env_conv)
    src = Path(next(a for a in words if a.endswith(".ipynb")))
    out = tmp_path / "executed" / src.name
    nb = json.loads(out.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "not every code cell ran"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    assert "quick" in text.lower(), "the first cell should report quick mode"
    print(f"fresh venv: install {installed:.0f} s, total {time.perf_counter() - t0:.0f} s")
