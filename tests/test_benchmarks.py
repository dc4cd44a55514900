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
    assert all(r["warmup_calls"] >= 2 for r in rows.values())     # untimed calls came first
    assert 0 < rows["bp"]["fraction_of_peak"] < 1.5 and res["peak"]["peak"] > 0
    # the peak is measured before and after the steps; % of peak uses the better one
    assert res["peak"]["peak"] >= res["peak_end"]["peak"] > 0
    bp = rows["bp"]
    assert bp["fraction_of_peak"] == pytest.approx(bp["gflop_per_step"] / (bp["ccledu_ms"] / 1e3)
                                                   / res["peak"]["peak"])
    md = (tmp_path / "speed_cpu.md").read_text()
    assert "ccledu s/epoch" in md and res["machine"]["numpy"] in md
    (tmp_path / "speed_cpu.md").unlink()
    _run(BENCH / "speed.py", "--render", tmp_path / "speed_cpu.json")
    assert (tmp_path / "speed_cpu.md").read_text() == md


@pytest.mark.slow
def test_protocol_report_from_tiny_sweeps(tmp_path):
    """`reproduce.py protocol` on tiny stand-ins of the protocol and Fig. 7 specs: the chosen
    setting and its final-seed mean in the Table 1 row, our Fig. 7 cells where they belong with
    the difference to the paper, the heat map, the cost section."""
    from ccledu.sweep import Sweep, load_spec, mean_std, read_metrics, run_sweep

    specs = tmp_path / "specs"
    specs.mkdir()
    tiny = ('epochs = 1\nlimit_train = 600\nlimit_test = 300\nbatch_size = 50\n'
            'model = "mlp:784-16-10"\ndata = "mnist"\ntrack_test = true\n')
    (specs / "protocol_mnist.toml").write_text(
        'root = "../out/mnist"\n[base]\n' + tiny +
        '[select]\nsearch_seeds = [0]\nfinal_seeds = [0, 1]\n'
        '[[groups]]\nname = "bp"\nset = { rule = "bp", activation = "tanh" }\n'
        'grid = { lr_forward = [0.4, 0.01] }\n')
    (specs / "fig7_mnist.toml").write_text(
        'root = "../out/fig7_mnist"\nseeds = [0]\n[base]\nrule = "ccl"\n' + tiny +
        '[[groups]]\nname = "ccl"\ngrid = { lr_forward = [0.8], lr_feedback = [0.0, 0.05] }\n')
    (specs / "fig7_mnist_batch128.toml").write_text(
        'root = "../out/fig7_mnist_batch128"\nseeds = [0]\n[base]\nrule = "ccl"\n' + tiny +
        '[[groups]]\nname = "ccl"\ngrid = { lr_forward = [0.1], lr_feedback = [0.0] }\n')
    for name in ("protocol_mnist", "fig7_mnist", "fig7_mnist_batch128"):
        run_sweep(load_spec(specs / f"{name}.toml"), workers=2, threads=1, progress=False,
                  log=lambda *a: None)
    out = tmp_path / "out"
    _run(BENCH / "reproduce.py", "protocol", "--specs", specs, "--out", out, "--root", tmp_path / "none")
    report = (out / "REPORT.md").read_text()
    sel = Sweep(load_spec(specs / "protocol_mnist.toml")).selection()["bp"]
    chosen = sel["settings"][sel["chosen"]]["point"]["lr_forward"]
    acc = [f["test_accuracy"] for f in sel["final"]]
    row = next(line for line in report.splitlines() if line.startswith("| bp | 98.19 ± 0.10 | not run"))
    assert f"| lr_forward={chosen} | 2 of 2 | 2 of 2 | {mean_std(acc)} |" in row
    assert row.endswith("| no |") or row.endswith("| yes |")
    assert "| dfa | 97.27 ± 0.06 | not run | — | not searched yet |" in report
    cells = {}
    for r in Sweep(load_spec(specs / "fig7_mnist.toml")).runs.values():
        cells[r.point["lr_feedback"]] = 100 * read_metrics(r.dir)["test_accuracy"]
    grid = report[report.index("ccledu:"):report.index("The paper (as read")]
    assert f"| 0.0 | — | — | — | — | {cells[0.0]:.2f} |" in grid
    assert f"| 0.05 | — | — | — | — | {cells[0.05]:.2f} |" in grid
    diff = report[report.index("ccledu − paper (points):"):]
    assert f"| 0.05 | — | — | — | — | {cells[0.05] - 98.15:+.2f} |" in diff
    assert "2 of 30 cells run" in report and "Frozen feedback (feedback LR 0): forward 0.8:" in report
    assert (out / "fig7_mnist.png").stat().st_size > 5000
    # the batch-128 grid: its cell, the same checks as the main grid, its cost row
    (r128,) = Sweep(load_spec(specs / "fig7_mnist_batch128.toml")).runs.values()
    b128 = report[report.index("ccledu at batch 128:"):report.index("ccledu at batch 128 − paper")]
    assert f"| 0.0 | — | {100 * read_metrics(r128.dir)['test_accuracy']:.2f} | — | — | — |" in b128
    assert "1 of 30 cells run" in report and report.count("- Frozen feedback (feedback LR 0):") == 2
    assert "- Best cell run so far: forward LR 0.1, feedback LR 0.0" in report
    assert "| ccl (Fig. 7, batch 128) | 1 |" in report
    assert (out / "fig7_mnist_batch128.png").stat().st_size > 5000
    assert "| bp | 2 |" in report and "Projected cost" in report
    assert "mnist: " in report and "local process pool, 2 worker(s) × 1 BLAS thread(s), 3 run(s)" in report


def test_profile_step_wraps_every_kernel_it_names(tmp_path):
    """The profiler wraps ccledu's kernels by name: a renamed method must fail here, not in the
    next session's profile. Each wrapped category of these steps receives time."""
    out = tmp_path / "profile.md"
    _run(BENCH / "profile_step.py", "--configs", "mlp", "--rules", "bp,ccl,ff", "--reps", "1",
         "--out", out)
    rows = {r["rule"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert set(rows) == {"bp", "ccl", "ff"}
    for rule, row in rows.items():
        cats = row["categories_s"]
        assert cats["linear"] > 0 and cats["activation"] > 0 and cats["optimizer"] > 0, rule
        assert 0 < row["gemm_alone_s"] and row["n_gemms"] > 0, rule
    assert rows["ccl"]["categories_s"]["rule"] > 0 and rows["ff"]["categories_s"]["rule"] > 0
    assert rows["bp"]["categories_s"]["rule"] == 0
    assert "| mlp | ff |" in out.read_text()


def test_layer_parts_compares_equal_work(tmp_path):
    """Every ccledu piece of the layer-by-layer comparison computes what its PyTorch
    counterpart computes (float32 tolerance), and the script writes its table."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(BENCH))
    import layer_parts
    import numpy as np

    def items(r):
        r = r if isinstance(r, tuple) else (r,)
        return [np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for v in r if v is not None]

    pairs = [(n, fc, ft) for n, fc, ft in layer_parts.pieces() if ft is not None]
    assert len(pairs) == 12
    with torch.no_grad():
        for name, fc, ft in pairs:
            mine, ref = items(fc()), items(ft())
            assert mine and len(mine) <= len(ref), name
            for a, b in zip(mine, ref):
                assert a.shape == b.shape, f"{name}: mine {a.shape} vs reference {b.shape}"
                # float32 sums of up to 10^5 terms (dW): relative to the largest entry
                err, scale = float(np.abs(a - b).max()), float(np.abs(b).max())
                assert err <= 1e-5 * scale + 1e-6, f"{name}: mine vs reference differ by {err:.3g} (max |ref| {scale:.3g})"
    _run(BENCH / "layer_parts.py", "--reps", "1", "--rounds", "1", "--out", tmp_path)
    md = (tmp_path / "layer_parts_cpu.md").read_text()
    assert "| conv2 32→64 @14×14: forward |" in md and "sum of the compared pieces" in md


def test_implicit_conv_experiment_matches_conv2d():
    """The tried-and-not-adopted padded-grid convolution computes what Conv2d computes (y, dW,
    dx): float64 to rounding on odd shapes (kernel 5, padding 2, H ≠ W; kernel 3 without
    padding), float32 through BLAS's in-place accumulation to float32 tolerance; the script
    prints its timing table."""
    sys.path.insert(0, str(BENCH))
    import implicit_conv
    assert implicit_conv.check(N=3, C=2, H=7, W=5, F=4, k=5, p=2, dtype="float64") < 1e-13
    assert implicit_conv.check(N=2, C=3, H=6, W=6, F=2, k=3, p=0, dtype="float64") < 1e-13
    assert implicit_conv.check(N=4, C=8, H=9, W=9, F=6) < 1e-5
    out = _run(BENCH / "implicit_conv.py", "--reps", "1", "--rounds", "1")
    assert "| forward |" in out and "| backward (dW, dx) |" in out


def test_tap_layout_experiment_is_the_same_computation():
    """The batch-last and channel-major tap loops of tap_layout.py give the same im2col buffer,
    col2im image and max-pool gradient (ties included) as each other and as ccledu.im2col, on
    odd shapes; the script prints its table."""
    sys.path.insert(0, str(BENCH))
    import tap_layout
    assert tap_layout.check() == 0.0
    assert tap_layout.check(N=4, C=3, H=7, W=9, k=5, p=2) == 0.0
    assert tap_layout.check(N=2, C=1, H=5, W=5, k=3, p=0, dtype="float32") == 0.0
    out = _run(BENCH / "tap_layout.py", "--reps", "1", "--rounds", "1")
    assert "| conv2 col2im taps |" in out and "largest difference between the layouts 0.0e+00" in out


def test_layout_ab_times_both_layouts():
    out = _run(BENCH / "layout_ab.py", "--rules", "dfa", "--steps", "1", "--rounds", "1",
               "--warmup", "1")
    row = next(line for line in out.splitlines() if line.startswith("| dfa |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and float(cells[3]) > 0
    assert all(float(v) > 0 for c in cells[1:3] for v in c.split(" / "))


def test_weight_grad_script_times_both_candidates_and_reports_the_choice():
    out = _run(BENCH / "weight_grad.py", "--batch", "32", "--reps", "1", "--rounds", "1")
    rows = [line for line in out.splitlines() if line.startswith("| conv")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and cells[4] in ("default", "chunked")


def test_blas_spin_ab_times_each_value_in_its_own_process():
    out = _run(BENCH / "blas_spin_ab.py", "--timeouts", "28,20", "--cases", "mlp:dfa",
               "--steps", "1", "--warmup", "1", "--rounds", "1")
    row = next(line for line in out.splitlines() if line.startswith("| mlp | dfa |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 5 and float(cells[4]) > 0
    assert all(float(v) > 0 for c in cells[2:4] for v in c.split(" / "))


def test_time_pair_fills_blocks_alike_for_both_sides():
    """speed.time_pair with min_block_s: a short step is timed several times per block, and the
    two sides the same number of times (so that their best calls are taken over as many)."""
    import time
    sys.path.insert(0, str(BENCH))
    import speed
    calls = {"a": 0, "b": 0}

    def fa():
        calls["a"] += 1
        time.sleep(0.002)

    def fb():
        calls["b"] += 1
        time.sleep(0.004)

    counts = {}
    (best_a, med_a), (best_b, med_b) = speed.time_pair(fa, fb, 2, rounds=2, pause=0.0,
                                                       min_block_s=0.02, counts=counts)
    # k from fa's first call (~2 ms, more on a loaded machine): at least 2 per block, not 1
    assert counts["a"] == counts["b"] and 2 * 2 <= counts["a"] <= 2 * 10
    assert calls["a"] == counts["a"] + 2 and calls["b"] == counts["b"] + 2  # + one untimed per block
    assert 0.002 <= best_a <= med_a and 0.004 <= best_b <= med_b and best_a < best_b
    counts = {}
    speed.time_pair(fa, fb, 4, rounds=2, pause=0.0, counts=counts)       # without: ceil(reps/rounds)
    assert counts == {"a": 4, "b": 4}


def test_machine_kind_tells_the_cpu_kinds_apart():
    """Result files are named by machine kind; the Intel kinds share one model name and are
    told apart by their flags (the committed reports' own machine records map to their names)."""
    sys.path.insert(0, str(BENCH))
    import speed
    xeon = "Intel(R) Xeon(R) Processor"
    assert speed.cpu_kind(xeon, "avx2 avx512f amx_tile", "AVX512_ICL AVX512_SPR") == "intel-xeon"
    assert speed.cpu_kind(xeon, "avx2 avx512f avx512_vnni", "X86_V4 AVX512_ICL") == "intel-xeon-icl"
    assert speed.cpu_kind(xeon, "avx2 avx512f", "X86_V4 AVX512_SKX") == "intel-xeon-skx"
    assert speed.cpu_kind(xeon, "avx avx2 fma", "X86_V3") == "intel-xeon-avx2"
    assert speed.cpu_kind(xeon) == "intel-xeon"                  # an old record without flags
    assert speed.cpu_kind("AMD EPYC 9R14 96-Core Processor", "avx512f") == "amd-epyc"
    assert speed.cpu_kind("Some Other CPU v2") == "some-other"
    for kind in ("amd-epyc", "intel-xeon", "intel-xeon-icl"):
        machine = json.loads((BENCH / "results" / f"speed_cpu_{kind}.json").read_text())["machine"]
        assert speed.machine_kind(machine) == kind


def test_cpu_session_script_writes_every_report_of_its_kind(tmp_path):
    """benchmarks/cpu_session.sh (the issue-19 measurements for a new CPU kind), smoke-run with
    tiny repetitions: all four reports under the machine kind's names, no step failed."""
    pytest.importorskip("torch")
    env = dict(os.environ, QUICK="1", OUT=str(tmp_path))
    r = subprocess.run(["bash", str(BENCH / "cpu_session.sh")], cwd=BENCH.parent, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    sys.path.insert(0, str(BENCH))
    import speed
    kind = speed.machine_kind(speed.machine_info("cpu"))
    for name in (f"blas_spin_ab_{kind}.md", f"speed_cpu_{kind}.json", f"speed_cpu_{kind}.md",
                 f"layer_parts_cpu_{kind}.md", f"profile_cpu_{kind}.md", f"profile_cpu_{kind}.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "| mlp | dfa |" in (tmp_path / f"blas_spin_ab_{kind}.md").read_text()
    assert f"machine kind: {kind}" in r.stdout and "failed" not in r.stdout


def test_blas_spin_ab_refuses_bad_values_clearly():
    r = subprocess.run([sys.executable, str(BENCH / "blas_spin_ab.py"), "--timeouts", "28,99"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "whole numbers from 4 to 30" in r.stderr
    assert "Traceback" not in r.stderr


def test_blas_coretypes_reports_every_shape():
    """The OpenBLAS kernel-set script times every shape it names (ms and GFLOP/s > 0)."""
    out = _run(BENCH / "blas_coretypes.py").strip()
    parts = out.split(" ", 1)[1].split(" | ")
    assert len(parts) == 7 and out.startswith(os.environ.get("OPENBLAS_CORETYPE") or "auto")
    for part in parts:
        name, rest = part.split(": ")
        ms, _, gf, _ = rest.split()
        assert float(ms) > 0 and float(gf) > 0, part
