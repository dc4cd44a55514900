"""ccledu.blas_threads: OPENBLAS_THREAD_TIMEOUT is set at import, before NumPy loads OpenBLAS,
never over a value the user set, and not at all when NumPy was loaded first (it would have no
effect). Each case runs in a fresh interpreter: the variable only matters at NumPy's load."""
import json
import os
import subprocess
import sys

import pytest

REPORT = ("import json, os, sys; {first}; import ccledu; "
          "print(json.dumps([os.environ.get('OPENBLAS_THREAD_TIMEOUT'), ccledu.blas_threads.STATE]))")


def _run(first: str, env_value=None):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    out = subprocess.run([sys.executable, "-c", REPORT.format(first=first)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_ccledu_sets_the_spin_before_numpy_loads():
    value, state = _run("pass")
    assert value == "20" == state["value"] and state["by"] == "ccledu"


def test_a_value_the_user_set_wins():
    value, state = _run("pass", env_value="28")
    assert value == "28" == state["value"] and state["by"] == "user"


def test_numpy_loaded_first_leaves_the_variable_unset_and_says_so():
    value, state = _run("import numpy")
    assert value is None and state["value"] is None
    assert state["by"].startswith("numpy imported before ccledu")


SPIN = """
import json, time, ccledu, numpy as np, threadpoolctl
libs = [l for l in threadpoolctl.threadpool_info() if l.get("internal_api") == "openblas"]
a = np.ones((1024, 1024), np.float32)
for _ in range(4):
    a @ a
t1 = time.process_time()
time.sleep(0.3)
print(json.dumps([libs[0]["num_threads"] if libs else 0, time.process_time() - t1]))
"""


def _cpu_seconds_while_idle(env_value=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT",
                                                            "OPENBLAS_NUM_THREADS")}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    out = subprocess.run([sys.executable, "-c", SPIN], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_openblas_reads_the_value_its_workers_sleep_sooner():
    """The setting acts on the OpenBLAS NumPy loads: after a product, the process's CPU time
    during a 0.3 s sleep is OpenBLAS's spinning workers. With OpenBLAS's default (28: 2^28
    cycles, ~0.1 s) they burn tens of milliseconds; with ccledu's 20 (~0.4 ms), almost none."""
    pytest.importorskip("threadpoolctl")
    threads, spin_ccledu = _cpu_seconds_while_idle()
    if threads < 2:
        pytest.skip("OpenBLAS runs one thread here (one core, or not OpenBLAS): no worker spins")
    _, spin_default = _cpu_seconds_while_idle("28")
    assert spin_ccledu < 0.02 and spin_default > 0.03, \
        f"CPU seconds while idle: ccledu's setting {spin_ccledu:.4f}, OpenBLAS's default {spin_default:.4f}"
