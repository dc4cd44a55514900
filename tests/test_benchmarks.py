"""The benchmark harnesses run end to end (tiny settings) and write what their reports promise."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args, env=None):
    res = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.slow
def test_reproduce_runs_resumes_and_reports(tmp_path):
    """One real 1-epoch BP run of the paper MLP; a second `run` keeps it; `report` tabulates it."""
    args = ["run", "--rules", "bp", "--data", "mnist", "--seeds", "0", "--epochs", "1",
            "--root", tmp_path]
    _run(BENCH / "reproduce.py", *args)
    (run,) = (tmp_path / "e1/runs").iterdir()                # one sweep run folder: its config hash
    m = json.loads((run / "metrics.json").read_text())
    from ccledu.sweep import config_hash
    assert run.name == config_hash(m["config"]) and m["config"]["rule"] == "bp"
    assert m["test_accuracy"] > 0.9 and "selections" in m and m["history"][0]["test_accuracy"] > 0.9
    assert "1 done already, 0 to run" in _run(BENCH / "reproduce.py", *args)
    md = (tmp_path / "e1/results.md").read_text()
    assert "### mnist/bp" in md and "| 1 of 1 | " in md and "1 of 1 runs done" in md
    _run(BENCH / "reproduce.py", "report", "--epochs", "1", "--root", tmp_path)
    report = (tmp_path / "e1/REPORT.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| mnist | bp |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1" and cells[3].startswith(f"{100 * m['test_accuracy']:.2f}")
    assert cells[4] == "98.19 ± 0.10"                         # the paper's number beside ours
    assert cells[6].startswith(f"{100 * m['selections']['highest_val_accuracy']['test_accuracy']:.2f}")
    assert "| fashion-mnist | bp | 0 | not run" in report
    # Table 3 has no runs: its rows say why, and its configurations are resolved and shown
    assert "| cifar10 | ccl | 0 | not run" in report
    table3 = report[report.index("## Table 3"):]
    cfg = next(line for line in table3.splitlines() if line.startswith("| cifar10 | bp | resolved |"))
    assert "| 0.03 |" in cfg and "| 200 |" in cfg          # the public BP CNN optimiser
    assert (tmp_path / "e1/curves_mnist.png").stat().st_size > 1000
    assert m["machine"]["cores"] >= 1 and "platform" in report


def test_reproduce_skips_datasets_that_are_not_here(tmp_path):
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = _run(BENCH / "reproduce.py", "run", "--table", "3", "--epochs", "1", "--root", tmp_path / "r",
               env={"CCLEDU_DATA": str(empty), "HOME": str(tmp_path)})
    assert "skip cifar10: dataset 'cifar10' not found" in out and "skip cifar100" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_speed_harness_quick(tmp_path):
    _run(BENCH / "speed.py", "--quick", "--configs", "mlp", "--rules", "bp,ccl", "--out", tmp_path)
    res = json.loads((tmp_path / "speed_cpu.json").read_text())
    rows = {r["rule"]: r for r in res["grid"]}
    assert set(rows) == {"bp", "ccl"} and all(r["ccledu_ms"] > 0 for r in rows.values())
    assert 0 < rows["bp"]["fraction_of_peak"] < 1.5 and res["peak"]["peak"] > 0
    md = (tmp_path / "speed_cpu.md").read_text()
    assert "ccledu s/epoch" in md and res["machine"]["numpy"] in md
    (tmp_path / "speed_cpu.md").unlink()
    _run(BENCH / "speed.py", "--render", tmp_path / "speed_cpu.json")
    assert (tmp_path / "speed_cpu.md").read_text() == md
