"""``ccledu sweep``: real tiny sweeps on the local process pool and on a Dask LocalCluster give
identical runs; resuming redoes only what is missing; the selection chooses on validation data;
results CSV/Markdown; spec errors are clear."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ccledu import sweep as S

TINY = {"model": "mlp:784-32-10", "data": "mnist", "epochs": 1, "limit_train": 400,
        "limit_test": 300, "track_test": True, "batch_size": 50}


def tiny_spec(root, **select):
    return {"name": "tiny", "root": str(root), "base": dict(TINY),
            "groups": [{"name": "bp", "set": {"rule": "bp"},
                        "grid": {"lr_forward": [0.1, 0.5]}}],
            "select": {"search_seeds": [0, 1], "final_seeds": [0, 1, 2], **select}}


def strip_timings(m):
    """A run's metrics without what depends on the machine or the clock."""
    m = json.loads(json.dumps(m))
    for k in ("total_seconds", "machine", "checkpoint"):      # clock, machine, a path
        m.pop(k, None)
    m["config"].pop("out", None)
    for h in m.get("history", []):
        h.pop("train_seconds", None)
    return m


def all_metrics(root):
    return {d.name: json.loads((d / "metrics.json").read_text())
            for d in sorted(Path(root, "runs").iterdir())}


@pytest.fixture(scope="module")
def pool_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    sweep, report = S.run_sweep(tiny_spec(root), workers=2, threads=1, progress=False,
                                log=lambda *a: None)
    return root, sweep, report


def test_pool_sweep_runs_selects_and_tabulates(pool_sweep):
    root, sweep, report = pool_sweep
    assert report["ran"] == 5 and report["kept"] == 0 and not report["failed"]  # 2×2 + 1 final
    runs = all_metrics(root)
    assert len(runs) == 5 and all(m["test_accuracy"] > 0.3 for m in runs.values())
    for h, m in runs.items():            # the folder is the hash of the run's resolved config
        assert S.config_hash(m["config"]) == h
        assert json.loads((root / "runs" / h / "config.json").read_text())["seed"] == m["config"]["seed"]
    # selection: recompute from the files, validation numbers only
    by = {}
    for m in runs.values():
        c = m["config"]
        if c["seed"] in (0, 1):
            by.setdefault(c["lr_forward"], []).append(m["history"][m["best_epoch"] - 1]["val_accuracy"])
    best_lr = max(by, key=lambda lr: sum(by[lr]) / 2)
    sel = sweep.selection()["bp"]
    assert sel["complete"] and sel["settings"][sel["chosen"]]["point"] == {"lr_forward": best_lr}
    final = sorted((m["config"]["seed"], m["test_accuracy"]) for m in runs.values()
                   if m["config"]["lr_forward"] == best_lr)
    assert [s for s, _ in final] == [0, 1, 2]
    assert [f["test_accuracy"] for f in sel["final"]] == [a for _, a in final]
    # CSV: one row per run, numbers as in metrics.json
    rows = list(csv.DictReader(open(root / "results.csv")))
    assert len(rows) == 5 and {r["run"] for r in rows} == set(runs)
    for r in rows:
        m = runs[r["run"]]
        assert float(r["test_accuracy"]) == m["test_accuracy"] and r["status"] == "finished"
        assert float(r["lr_forward"]) == m["config"]["lr_forward"] and int(r["seed"]) == m["config"]["seed"]
    assert sorted(r["role"] for r in rows).count("final+search") == 2
    # Markdown: the selection row with mean ± std of the final seeds, the chosen setting marked
    md = (root / "results.md").read_text()
    acc = [a for _, a in final]
    expect = S.mean_std(acc)
    assert f"| bp | 2 of 2 | lr_forward={best_lr} | " in md and f"| 3 of 3 | {expect} |" in md
    assert "**(chosen)**" in md and md.count("**(chosen)**") == 1
    assert json.loads((root / "selection.json").read_text())["bp"]["chosen_setting"] == {"lr_forward": best_lr}


def test_dask_cluster_gives_identical_runs(pool_sweep, tmp_path):
    """The same sweep sent to a running Dask scheduler by its address (as on a cluster): a real
    LocalCluster of 2 worker processes, 1 thread each."""
    from distributed import LocalCluster

    pool_root, _, _ = pool_sweep
    # In Dask's default environment (the nanny's MALLOC_TRIM_THRESHOLD_) float32 results can differ
    # in the last bits from the pool's on some CPUs (S.local_cluster_environment says why), so
    # the cluster is started the way `--scheduler local` starts its own: same environment.
    with S.local_cluster_environment():
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    with cluster:
        sweep, report = S.run_sweep(tiny_spec(tmp_path), scheduler=cluster.scheduler_address,
                                    threads=1, progress=False, log=lambda *a: None)
    assert report["ran"] == 5
    assert f"Dask scheduler {cluster.scheduler_address}, 2 worker(s)" in report["executor"]
    a, b = all_metrics(pool_root), all_metrics(tmp_path)
    assert set(a) == set(b)
    for h in a:
        assert strip_timings(a[h]) == strip_timings(b[h]), h


def test_resume_redoes_only_missing_or_corrupt_runs(pool_sweep, tmp_path):
    src, _, _ = pool_sweep
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    before = all_metrics(root)
    names = sorted(before)
    (root / "runs" / names[0] / "metrics.json").unlink()
    (root / "runs" / names[1] / "metrics.json").write_text('{"test_acc')   # torn write
    (root / "runs" / names[2] / "metrics.json").write_text(json.dumps(     # a run cut short
        {"status": "interrupted", "history": []}))
    stamps = {n: os.stat(root / "runs" / n / "metrics.json").st_mtime_ns for n in names[3:]}
    sweep, report = S.run_sweep(tiny_spec(root), workers=2, threads=1, progress=False,
                                log=lambda *a: None)
    assert report["ran"] == 3 and not report["failed"]
    assert {n: os.stat(root / "runs" / n / "metrics.json").st_mtime_ns for n in names[3:]} == stamps
    after = all_metrics(root)
    for n in names[:3]:
        assert strip_timings(after[n]) == strip_timings(before[n])
    # a third time: nothing to do
    _, report = S.run_sweep(tiny_spec(root), workers=1, threads=1, progress=False, log=lambda *a: None)
    assert report["ran"] == 0 and report["kept"] == 4
    log = [json.loads(line) for line in (root / "sweep_log.jsonl").read_text().splitlines()]
    assert [e["ran"] for e in log] == [5, 3, 0]          # the pool run copied here, then ours
    assert log[-1]["executor"].startswith("local process pool, 1 worker(s)")


def _fake_run(root, spec, settings, seed, val_acc, test_acc, val_loss=0.5, status=None):
    """Write a metrics.json for one run of ``spec`` (fixtures for the selection logic)."""
    cfg = S.resolve_settings({**spec["base"], **settings, "seed": seed})
    d = Path(root) / "runs" / S.config_hash(cfg)
    d.mkdir(parents=True, exist_ok=True)
    if status == "diverged":
        m = {"status": "diverged", "config": cfg, "error": "loss became nan"}
    else:
        m = {"test_accuracy": test_acc, "best_epoch": 1, "config": cfg,
             "history": [{"epoch": 1, "val_loss": val_loss, "val_accuracy": val_acc}],
             **({"status": status} if status else {})}
    (d / "metrics.json").write_text(json.dumps(m))


def test_selection_uses_validation_never_test(tmp_path):
    """Setting A has the better mean validation accuracy, B the better test accuracy (and the
    best single validation seed): A is chosen, and the reported number is A's final-seed test
    mean. A diverged setting (C) is never chosen."""
    spec = {"name": "sel", "root": str(tmp_path), "base": {"rule": "bp", "model": "mlp:784-8-10"},
            "groups": [{"name": "g", "grid": {"lr_forward": [0.1, 0.2, 0.3]}}],
            "select": {"search_seeds": [0, 1], "final_seeds": [0, 1, 2]}}
    A, B, C = {"lr_forward": 0.1}, {"lr_forward": 0.2}, {"lr_forward": 0.3}
    _fake_run(tmp_path, spec, A, 0, 0.90, 0.70)
    _fake_run(tmp_path, spec, A, 1, 0.90, 0.72, status="finished")
    _fake_run(tmp_path, spec, B, 0, 0.95, 0.99)      # best single seed, best test
    _fake_run(tmp_path, spec, B, 1, 0.80, 0.99)
    _fake_run(tmp_path, spec, C, 0, 0.99, 0.99)
    _fake_run(tmp_path, spec, C, 1, None, None, status="diverged")
    sweep = S.Sweep(spec)
    sel = sweep.selection()["g"]
    assert sel["complete"] and sel["chosen"] == 0
    assert [r["value"] for r in sel["settings"]][:2] == [pytest.approx(0.90), pytest.approx(0.875)]
    assert sel["settings"][2]["value"] == -math.inf and sel["settings"][2]["diverged"] == 1
    assert len(sweep.runs) == 6
    assert sweep.add_final_runs() == 1 and [r.seed for r in sweep.todo()] == [2]
    _fake_run(tmp_path, spec, A, 2, 0.91, 0.74)
    sel = sweep.selection()["g"]
    assert [f["test_accuracy"] for f in sel["final"]] == [0.70, 0.72, 0.74]
    sweep.write_tables()
    md = (tmp_path / "results.md").read_text()
    assert "| g | 3 of 3 | lr_forward=0.1 | 90.00 % | 3 of 3 | 72.00 ± 2.00 |" in md
    strict = json.loads((tmp_path / "selection.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in selection.json"))
    assert strict["g"]["settings"][2]["value"] is None and strict["g"]["chosen_setting"] == A
    # on the validation *loss* (lower is better) B wins when its losses are lower
    spec2 = {**spec, "root": str(tmp_path / "loss"), "select": {**spec["select"], "metric": "val_loss"}}
    for s, vl in ((A, 0.4), (B, 0.3), (C, 0.1)):
        for seed in (0, 1):
            _fake_run(tmp_path / "loss", spec2, s, seed, 0.5, 0.5, val_loss=vl,
                      status="diverged" if s is C and seed == 1 else None)
    assert S.Sweep(spec2).selection()["g"]["chosen"] == 1


def test_incomplete_search_is_provisional(tmp_path):
    spec = {"name": "p", "root": str(tmp_path), "base": {"rule": "bp", "model": "mlp:784-8-10"},
            "groups": [{"name": "g", "grid": {"lr_forward": [0.1, 0.2]}}],
            "select": {"search_seeds": [0], "final_seeds": [0, 1]}}
    _fake_run(tmp_path, spec, {"lr_forward": 0.2}, 0, 0.9, 0.9)
    sweep = S.Sweep(spec)
    sel = sweep.selection()["g"]
    assert not sel["complete"] and sel["searched"] == 1 and sel["chosen"] == 1
    assert sel["settings"][sel["chosen"]]["point"] == {"lr_forward": 0.2}   # the one searched
    assert sweep.add_final_runs() == 0               # no final runs before the search is done
    sweep.write_tables()
    assert "provisional: search incomplete" in (tmp_path / "results.md").read_text()


def test_divergence_is_a_result(tmp_path):
    """A real diverging run: metrics.json with status 'diverged', counted as done."""
    spec = {"name": "div", "root": str(tmp_path), "seeds": [0],
            "base": {**TINY, "limit_train": 1000, "batch_size": 64, "clip_forward": 0.0},
            "groups": [{"name": "bp", "set": {"rule": "bp"}, "grid": {"lr_forward": [1e30]}}]}
    sweep, report = S.run_sweep(spec, scheduler="local", workers=1, threads=1, progress=False,
                                log=lambda *a: None)
    assert report["ran"] == 1 and not report["failed"] and "Dask LocalCluster" in report["executor"]
    (m,) = all_metrics(tmp_path).values()
    assert m["status"] == "diverged" and "diverged" in (m.get("message") or m.get("error"))
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert rows[0]["status"] == "diverged"
    assert S.Sweep(spec).todo() == []


def test_interrupted_run_is_resumed_from_its_checkpoint(tmp_path):
    """A run stopped after epoch 1 of 2 (Ctrl-C: metrics.json 'interrupted', checkpoint kept) is
    continued by the sweep from its checkpoint and ends as the uninterrupted run does."""
    from ccledu import train as T

    spec = {"name": "res", "root": str(tmp_path / "a"), "seeds": [0],
            "base": {**TINY, "epochs": 2}, "groups": [{"name": "bp", "set": {"rule": "bp"}}]}
    (run,) = S.Sweep(spec).runs.values()

    def stop(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    from threadpoolctl import threadpool_limits

    # one BLAS thread, as in the sweep's workers (threads=1): OpenBLAS may round a float32
    # product differently with more threads, and epoch 1 is compared with the fresh run's
    with threadpool_limits(limits=1, user_api="blas"), pytest.raises(KeyboardInterrupt):
        T.run(T.TrainConfig.from_dict({**run.config, "out": str(run.dir)}), progress=False,
              on_epoch=stop)              # train.Interrupted is a KeyboardInterrupt
    assert S.run_status(S.read_metrics(run.dir)) == "interrupted"
    assert (run.dir / T.CHECKPOINT).is_file()
    _, report = S.run_sweep(spec, workers=1, threads=1, progress=False, log=lambda *a: None)
    resumed = S.read_metrics(run.dir)
    assert report["ran"] == 1 and resumed["status"] == "finished"
    assert not (run.dir / T.CHECKPOINT).exists()          # a finished run keeps metrics.json only
    _, _ = S.run_sweep({**spec, "root": str(tmp_path / "b")}, workers=1, threads=1,
                       progress=False, log=lambda *a: None)
    fresh = S.read_metrics(tmp_path / "b" / "runs" / run.hash)
    assert strip_timings(resumed)["history"] == strip_timings(fresh)["history"]
    assert resumed["test_accuracy"] == fresh["test_accuracy"]


def test_run_ids_are_canonical(tmp_path):
    base = S.resolve_settings({"rule": "ccl", "lr_forward": 1, "seed": 0})
    same = S.resolve_settings({"rule": "ccl", "lr_forward": 1.0, "seed": 0, "data_root": "/x"})
    assert S.config_hash(base) == S.config_hash(same)           # int/float, data_root
    assert S.config_hash(base) == S.config_hash(S.resolve_settings({"rule": "ccl"}))  # defaults
    other = S.resolve_settings({"rule": "ccl", "lr_forward": 0.5})
    assert S.config_hash(other) != S.config_hash(base)
    assert S.config_hash({**base, "seed": 1}) != S.config_hash(base)
    # TOML, YAML and JSON spellings of one spec name the same runs; 'a+b' and dotted keys
    toml = tmp_path / "s.toml"
    toml.write_text('[base]\nrule = "ccl"\nmodel = "mlp:784-8-10"\n[[groups]]\nname = "g"\n'
                    'grid = { "lr_forward+lr_feedback" = [1, 0.5], "rule_options.scale" = [0.5] }\n')
    yml = tmp_path / "s.yaml"
    yml.write_text("base: {rule: ccl, model: 'mlp:784-8-10'}\ngroups:\n  - name: g\n    grid:\n"
                   "      lr_forward+lr_feedback: [1.0, 0.5]\n      rule_options.scale: [0.5]\n")
    js = tmp_path / "s.json"
    js.write_text(json.dumps({"base": {"rule": "ccl", "model": "mlp:784-8-10"}, "groups": [
        {"name": "g", "grid": {"lr_forward+lr_feedback": [1.0, 0.5], "rule_options.scale": [0.5]}}]}))
    ids = [sorted(r.hash for r in S.Sweep(S.load_spec(p)).runs.values()) for p in (toml, yml, js)]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 2
    run = next(iter(S.Sweep(S.load_spec(toml)).runs.values()))
    assert run.config["lr_forward"] == run.config["lr_feedback"] == 1.0
    assert run.config["rule_options"]["scale"] == 0.5
    assert Path(S.load_spec(toml)["root"]) == tmp_path / "s"


@pytest.mark.parametrize("text, message", [
    ('[base]\nlearning_rate = 0.1\n', "'learning_rate' is not a training setting"),
    ('seeds = "0"\n', "'seeds' must be a non-empty list of integer seeds"),
    ('[[groups]]\nname = "g"\ngrid = { lr_forward = 0.1 }\n', "must be a non-empty list"),
    ('[select]\nmetric = "test_accuracy"\n', "choose one of ['val_accuracy', 'val_loss']"),
    ('bogus = 1\n', "unknown keys ['bogus']"),
    ('[base\n', "could not be parsed"),
    ('[[groups]]\nname = "g"\ngrid = { lr_forward = [0.1, -1.0] }\n', "lr_forward (--lr-forward) must be"),
    ('[base]\nrule = "nope"\n', "a run of the sweep has bad settings"),
])
def test_spec_errors_are_clear(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(S.SpecError, match=None) as e:
        S.Sweep(S.load_spec(p))
    assert message in str(e.value)


def test_cli_report_only_and_errors(tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"root": "out", "seeds": [0, 1], "base": TINY,
                                "groups": [{"name": "bp", "set": {"rule": "bp"}}]}))
    res = subprocess.run([sys.executable, "-m", "ccledu", "sweep", str(spec), "--report-only"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "0 of 2 runs done" in res.stdout
    assert res.stdout.count("missing: bp (one setting) seed") == 2
    assert (tmp_path / "out" / "results.md").exists()
    bad = subprocess.run([sys.executable, "-m", "ccledu", "sweep", str(tmp_path / "nope.toml")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "ccledu: error: sweep spec" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "ccledu", "sweep", str(spec), "--scheduler",
                          "tcp://127.0.0.1:9", "--connect-timeout", "2", "--quiet"], capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot reach the Dask scheduler" in bad.stderr


def test_groups_filter_what_is_trained_not_what_is_tabulated(tmp_path):
    spec = {"name": "two", "root": str(tmp_path), "seeds": [0, 1],
            "base": {"model": "mlp:784-8-10"},
            "groups": [{"name": "bp", "set": {"rule": "bp"}}, {"name": "fa", "set": {"rule": "fa"}}]}
    sweep = S.Sweep(spec, groups=["fa"])
    assert len(sweep.runs) == 4 and {r.group for r in sweep.todo()} == {"fa"}
    sweep.write_tables()
    md = (tmp_path / "results.md").read_text()
    assert "### bp" in md and "### fa" in md
    with pytest.raises(S.SpecError, match=r"no group named \['dfa'\]"):
        S.Sweep(spec, groups=["dfa"])
