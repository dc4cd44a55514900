"""Stopping long work from outside: SIGTERM (``kill PID``, a batch system's time limit) stops
``ccledu train`` as Ctrl-C does, and stops a sweep's pool workers too; a worker whose sweep
process was killed outright (SIGKILL) stops by itself. Real subprocesses, real signals."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp:784-16-10", "--limit-train", "256", "--limit-test", "128",
        "--batch-size", "64", "--quiet"]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _proc(args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "ccledu", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, p, seconds=120.0):
    end = time.time() + seconds
    while time.time() < end and not path.exists() and p.poll() is None:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared (process ended: {p.poll()})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                  # a zombie (exited, not yet reaped by its parent)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _gone(pid: int, seconds=60.0) -> bool:
    end = time.time() + seconds
    while time.time() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_sigterm_stops_train_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    p = _proc(["train", *TINY, "--epochs", "100000", "--out", out])
    _wait_for(out / "checkpoint.npz", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("ccledu: note:")]
    assert len(lines) == 1 and lines[0].startswith("ccledu: interrupted after epoch"), err
    m = _metrics(out)
    assert m["status"] == "interrupted" and m["checkpoint_epoch"] >= 1


def _sweep_spec(tmp_path) -> Path:
    spec = tmp_path / "long.json"
    spec.write_text(json.dumps({
        "name": "long", "root": str(tmp_path / "sweep"), "seeds": [0],
        "base": {"rule": "bp", "model": "mlp:784-16-10", "data": "mnist", "epochs": 100000,
                 "limit_train": 256, "limit_test": 128, "batch_size": 64}}))
    return spec


def _started_run(tmp_path, p) -> tuple[Path, int]:
    """The sweep's one run folder once it has a checkpoint, and the worker's pid."""
    runs = tmp_path / "sweep" / "runs"
    end = time.time() + 120
    while time.time() < end and p.poll() is None:
        found = [d for d in runs.glob("*") if (d / "checkpoint.npz").exists()] if runs.exists() else []
        if found:
            m = _metrics(found[0])
            assert m["status"] == "running"
            return found[0], int(m["pid"])
        time.sleep(0.05)
    pytest.fail(f"the sweep's run never wrote a checkpoint (sweep ended: {p.poll()})")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_a_sweep_stops_its_workers(tmp_path, how):
    spec = _sweep_spec(tmp_path)
    p = _proc(["sweep", spec, "--workers", "1", "--threads", "1", "--quiet"])
    run, worker = _started_run(tmp_path, p)
    assert worker != p.pid and _alive(worker)
    p.send_signal(getattr(signal, how))
    _, err = p.communicate(timeout=120)
    assert _gone(worker), f"the worker {worker} kept running after the sweep got {how}"
    assert _metrics(run)["status"] == "interrupted", _metrics(run)
    assert (run / "checkpoint.npz").exists()
    if how == "SIGTERM":
        assert p.returncode == 130, err
        assert "Traceback" not in err and "run `ccledu sweep" in err, err
    else:
        assert p.returncode == -signal.SIGKILL
