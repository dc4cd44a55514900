"""Reliability of ``ccledu train`` and ``train.run``: bad values refused at parse time, output
checked before training and written atomically, a lock per --out, status in every metrics.json,
Ctrl-C -> checkpoint -> bit-for-bit resume, divergence named for every rule, and a top-level
guard that turns any exception into one line.

Every command-line case asserts the exit status and the one ``ccledu...`` line on stderr.
Runs are tiny (16 hidden units, 256 training examples) so the module stays fast.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ccledu import cli
from ccledu import train as TR
from ccledu.rules import RULES

REPO = Path(__file__).resolve().parent.parent
TINY = ["--model", "mlp:784-16-10", "--limit-train", "256", "--limit-test", "128",
        "--batch-size", "64", "--quiet"]
TINY_CFG = dict(model="mlp:784-16-10", limit_train=256, limit_test=128, batch_size=64)


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def _one_error(argv, capsys, needle, code=2):
    c, out, err = _main(argv, capsys)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("ccledu: note:")]
    assert c == code, (c, out, err)
    assert len(lines) == 1 and lines[0].startswith("ccledu"), err
    assert needle in lines[0], lines[0]
    return lines[0]


def _cli_proc(args, **kw):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "ccledu", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ------------------------------------------------------------------ values checked at parse time

@pytest.mark.parametrize("flag,value,needle", [
    ("--batch-size", "0", "--batch-size: must be an integer >= 1"),
    ("--batch-size", "-4", "--batch-size: must be an integer >= 1"),
    ("--batch-size", "2.5", "--batch-size: must be an integer >= 1"),
    ("--epochs", "0", "--epochs: must be an integer >= 1"),
    ("--epochs", "-1", "--epochs: must be an integer >= 1"),
    ("--limit-train", "0", "--limit-train: must be an integer >= 1"),
    ("--limit-train", "-1", "--limit-train: must be an integer >= 1"),
    ("--limit-test", "0", "--limit-test: must be an integer >= 1"),
    ("--limit-test", "-1", "--limit-test: must be an integer >= 1"),
    ("--eta-min", "-0.1", "--eta-min: must be a finite number >= 0"),
    ("--lr", "0", "--lr: must be a finite number > 0"),
    ("--lr", "nan", "--lr: must be a finite number > 0"),
    ("--lr-forward", "-1", "--lr-forward: must be a finite number > 0"),
    ("--lr-feedback", "-1", "--lr-feedback: must be a finite number >= 0"),
    ("--momentum-forward", "1", "--momentum-forward: must be a finite number >= 0 and < 1"),
    ("--momentum-feedback", "-0.5", "--momentum-feedback"),
    ("--weight-decay-forward", "-1e-4", "--weight-decay-forward"),
    ("--clip-forward", "-1", "--clip-forward: must be a finite number >= 0"),
    ("--clip-feedback", "inf", "--clip-feedback"),
    ("--warmup", "-1", "--warmup: must be an integer >= 0"),
    ("--cosine-tmax", "-2", "--cosine-tmax"),
    ("--seed", "-1", "--seed: must be an integer >= 0"),
    ("--seed", "x", "--seed"),
])
def test_numeric_flags_out_of_range_refused_at_parse_time(capsys, flag, value, needle):
    line = _one_error(["train", flag, value], capsys, needle)
    assert line.startswith("ccledu train: error: argument")


def test_config_file_values_are_checked_too(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"batch_size": 0}))
    _one_error(["train", "--config", cfg], capsys, "batch_size (--batch-size) must be an integer >= 1")
    cfg.write_text("{not json")
    _one_error(["train", "--config", cfg], capsys, "not valid JSON")
    _one_error(["train", "--config", tmp_path / "missing.json"], capsys, "cannot read --config")
    cfg.write_text(json.dumps({"epochs": True}))
    _one_error(["train", "--config", cfg], capsys, "epochs (--epochs) must be an integer >= 1")
    cfg.write_text(json.dumps([1, 2]))
    _one_error(["train", "--config", cfg], capsys, "must hold a JSON object")
    cfg.write_text(json.dumps({"rule_options": 5}))
    _one_error(["train", "--config", cfg], capsys, "rule_options in --config must be an object")
    cfg.write_text(json.dumps({"rule_options": {"foo": 1}, "epochs": 1, "limit_train": 32}))
    _one_error(["train", "--config", cfg], capsys, "rule 'bp' does not take the options ['foo']")
    cfg.write_text(json.dumps({"optimizer": "rmsprop"}))
    _one_error(["train", "--config", cfg], capsys, "optimizer (--optimizer) must be 'sgd' or 'adam'")
    cfg.write_text(json.dumps({"dtype": "float16"}))
    _one_error(["train", "--config", cfg], capsys, "dtype (--dtype) must be")


@pytest.mark.parametrize("flag,value", [("--theta", "nan"), ("--alpha", "inf"), ("--flood", "inf")])
def test_rule_option_floats_must_be_finite(capsys, flag, value):
    _one_error(["train", flag, value], capsys, f"{flag}: must be a finite number")


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(limit_train=0),
                                 dict(limit_test=-1), dict(eta_min=-1.0), dict(lr_forward=0),
                                 dict(val_fraction=0.0), dict(val_fraction=1.0), dict(epochs="3"),
                                 dict(momentum_forward=float("nan"))])
def test_python_api_validates_settings(bad):
    with pytest.raises(ValueError) as e:
        TR.run({**TINY_CFG, "epochs": 1, **bad}, progress=False)
    assert "must be" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model,needle", [("mlp:784-256-5", "has 5 outputs but mnist has 10"),
                                          ("mlp:784-256", "has 256 outputs but mnist has 10")])
def test_model_output_width_must_match_the_classes(capsys, tmp_path, model, needle, no_training):
    _one_error(["train", "--model", model, "--epochs", "1", "--limit-train", "64", "--quiet",
                "--out", tmp_path / "o"], capsys, needle)
    assert not (tmp_path / "o" / "metrics.json").exists()          # nothing trained, nothing written


def test_unknown_sub_command_and_flag_are_one_line(capsys):
    _one_error(["nonsense"], capsys, "invalid choice")
    _one_error(["train", "--no-such-flag"], capsys, "unrecognized arguments")


def test_help_exits_0(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


# ------------------------------------------------------------------ output folder

@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any data is loaded or any training starts."""
    def forbidden(*a, **k):
        raise AssertionError("training (or data loading) started before the output was checked")
    monkeypatch.setattr(TR, "fit", forbidden)
    monkeypatch.setattr(TR, "load_splits", forbidden)


def test_out_is_a_file_refused_before_training(tmp_path, capsys, no_training):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_error(["train", *TINY, "--epochs", "50", "--out", f], capsys, "is a file, not a folder")
    assert f.read_text() == "x"


def test_metrics_json_is_a_directory_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "o" / "metrics.json").mkdir(parents=True)
    _one_error(["train", *TINY, "--epochs", "50", "--out", tmp_path / "o"], capsys,
               "metrics.json is a directory")


def test_out_under_a_file_refused(tmp_path, capsys, no_training):
    (tmp_path / "f").write_text("x")
    _one_error(["train", *TINY, "--epochs", "1", "--out", tmp_path / "f" / "sub"], capsys,
               "cannot create the output folder")


def _read_only(folder):
    """Make ``folder`` unwritable for this process: chmod 555, and as root (who ignores modes)
    the immutable attribute (``chattr +i``). Returns the undo function."""
    import shutil
    folder.chmod(0o555)
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            folder.chmod(0o755)
            pytest.skip("running as root without chattr: cannot make a folder read-only")
        return lambda: (subprocess.run(["chattr", "-i", str(folder)]), folder.chmod(0o755))
    return lambda: folder.chmod(0o755)


def test_read_only_parent_refused(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _read_only(ro)
    try:
        _one_error(["train", *TINY, "--epochs", "1", "--out", ro / "o"], capsys,
                   "cannot create the output folder")
    finally:
        undo()


def test_read_only_out_folder_refused(tmp_path, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _read_only(ro)
    try:
        _one_error(["train", *TINY, "--epochs", "1", "--out", ro], capsys, "is not writable")
    finally:
        undo()


def _dev_full_mkstemp(real):
    """mkstemp whose file descriptor writes to /dev/full: every write fails with ENOSPC (a real
    kernel error), as on a full disk."""
    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, name
    return mkstemp


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_refused_before_training(tmp_path, capsys, monkeypatch, no_training):
    import tempfile
    monkeypatch.setattr(tempfile, "mkstemp", _dev_full_mkstemp(tempfile.mkstemp))
    _one_error(["train", *TINY, "--epochs", "1", "--out", tmp_path / "o"], capsys, "not writable")
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_at_the_end_keeps_the_old_file_valid_and_says_the_result(tmp_path, capsys,
                                                                           monkeypatch):
    import tempfile
    out = tmp_path / "o"
    real = tempfile.mkstemp
    calls = {"n": 0}

    def mkstemp(*args, **kwargs):                # the last write (final metrics.json) hits ENOSPC
        calls["n"] += 1
        if kwargs.get("prefix", "").startswith(".metrics.json") and calls.get("final"):
            return _dev_full_mkstemp(real)(*args, **kwargs)
        return real(*args, **kwargs)

    def on_epoch(entry):
        if entry["epoch"] == 1:
            calls["final"] = True

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(TR.OutputError) as e:
        TR.run(dict(TINY_CFG, epochs=1, out=str(out)), progress=False, on_epoch=on_epoch)
    msg = str(e.value)
    assert "the run finished (test accuracy" in msg and "No space left" in msg and "\n" not in msg
    m = json.loads((out / "metrics.json").read_text())             # still valid JSON
    assert m["status"] == "running"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_metrics_written_atomically_and_strict_json(tmp_path):
    out = tmp_path / "o"
    m = TR.run(dict(TINY_CFG, epochs=2, out=str(out)), progress=False)
    text = (out / "metrics.json").read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert on_disk["status"] == "finished" and on_disk["epochs_completed"] == 2
    assert on_disk["test_accuracy"] == m["test_accuracy"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "metrics.json"]


def test_a_second_run_into_the_same_out_refuses(tmp_path):
    out = tmp_path / "o"
    p = _cli_proc(["train", *TINY, "--epochs", "200", "--out", out])
    try:
        for _ in range(2400):                          # up to 120 s on a loaded machine
            if (out / ".ccledu.lock").exists() and (out / "metrics.json").exists():
                break
            time.sleep(0.05)
        assert p.poll() is None and (out / ".ccledu.lock").exists()
        q = _cli_proc(["train", *TINY, "--epochs", "1", "--out", out])
        _, err = q.communicate(timeout=120)
        assert q.returncode == 2, err
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("ccledu: note:")]
        assert len(lines) == 1 and "another ccledu run (pid" in lines[0] and str(p.pid) in lines[0]
        assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=120)


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket
    (out / ".ccledu.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    m = TR.run(dict(TINY_CFG, epochs=1, out=str(out)), progress=False)
    assert m["status"] == "finished" and not (out / ".ccledu.lock").exists()


def test_a_live_lock_refuses_in_process(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    import socket
    (out / ".ccledu.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(TR.OutputError, match="another ccledu run"):
        TR.run(dict(TINY_CFG, epochs=1, out=str(out)), progress=False)


def test_a_new_run_moves_the_stale_result_aside(tmp_path):
    out = tmp_path / "o"
    first = TR.run(dict(TINY_CFG, epochs=1, out=str(out)), progress=False)

    def stop(entry):
        raise KeyboardInterrupt
    with pytest.raises(TR.Interrupted):
        TR.run(dict(TINY_CFG, epochs=3, seed=1, out=str(out)), progress=False, on_epoch=stop)
    now = json.loads((out / "metrics.json").read_text())
    before = json.loads((out / "metrics.previous.json").read_text())
    assert now["status"] == "interrupted" and now["epochs_completed"] == 1 and "test_accuracy" not in now
    assert before["status"] == "finished" and before["test_accuracy"] == first["test_accuracy"]


# ------------------------------------------------------------------ divergence

#: FW-DTP's default BatchNorm keeps its loss bounded (about 2.7) even at lr 1e6: the run learns
#: nothing but its loss does not grow, so by the stated rule it has not diverged. Without
#: BatchNorm its loss explodes like the others'.
EXTRA = {"fwdtp": ["--no-batchnorm"], "ccl-ae": ["--model", "autoencoder:4-8"],
         "bp-ae": ["--model", "autoencoder:4-8"]}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_divergence_is_named_for_every_rule(rule, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", "--rule", rule, *TINY, "--epochs", "3", "--lr", "1e6", "--clip-forward", "0",
            "--clip-feedback", "0", "--out", out, *EXTRA.get(rule, [])]
    line = _one_error(argv, capsys, "training diverged", code=3)
    assert "epoch" in line and "step" in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "diverged" and m["diverged"]["epoch"] >= 1 and "test_loss" not in m


@pytest.mark.parametrize("rule", ["bp", "fa", "ff"])
def test_divergence_with_default_clipping_is_named(rule, tmp_path, capsys):
    """The issue's case: with clipping the loss stays finite (1e11 for BP) but grows far past
    its first value; that is divergence too."""
    out = tmp_path / "o"
    _one_error(["train", "--rule", rule, *TINY, "--epochs", "3", "--lr", "1e6", "--out", out],
               capsys, "training diverged", code=3)
    assert json.loads((out / "metrics.json").read_text())["status"] == "diverged"


def test_divergence_bound_rule():
    assert TR.divergence_bound(2.3) == pytest.approx(2300)
    assert TR.divergence_bound(1e-3) == 1e3                  # the floor of 1
    with pytest.raises(TR.DivergenceError, match="more than 1000"):
        TR._check_finite([np.float64(2.0), np.float64(2301.0)], 1, 0, TR.divergence_bound(2.3))
    TR._check_finite([np.float64(2.0), np.float64(2299.0)], 1, 0, TR.divergence_bound(2.3))


def test_a_normal_run_is_not_called_diverged():
    for rule in ("bp", "ccl", "ff", "fa", "dfa"):
        m = TR.run(dict(TINY_CFG, rule=rule, epochs=2), progress=False)
        assert m["status"] == "finished"


# ------------------------------------------------------------------ Ctrl-C, checkpoint, resume

def _strip_timing(history):
    return [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


def _state(m):
    out = {k: np.array(v) for k, v in m["_model"].parameters().items()}
    out.update({"rule/" + k: np.array(v) for k, v in m["_rule"].parameters().items()})
    return out


RESUME_CASES = {
    "bp-momentum-cosine": dict(rule="bp", momentum_forward=0.9, cosine_tmax=4, eta_min=1e-3,
                               weight_decay_forward=1e-4, lr_forward=0.1),
    "ccl-momentum": dict(rule="ccl", momentum_forward=0.8, momentum_feedback=0.8, warmup=5),
    "ff-rng": dict(rule="ff", model="mlp:784-16-16-10"),
    "fa-adam": dict(rule="fa", optimizer="adam", lr_forward=1e-3),
    "dfa-track-test": dict(rule="dfa", track_test=True),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(case, tmp_path):
    cfg = dict(TINY_CFG, epochs=4, **RESUME_CASES[case])
    full = TR.run(dict(cfg, out=str(tmp_path / "full")), progress=False)

    def stop_after_2(entry):
        if entry["epoch"] == 2:
            raise KeyboardInterrupt
    out = tmp_path / "cut"
    with pytest.raises(TR.Interrupted) as e:
        TR.run(dict(cfg, out=str(out)), progress=False, on_epoch=stop_after_2)
    assert e.value.epoch == 2 and "--resume" in str(e.value)
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["epochs_completed"] == 2 and m["checkpoint_epoch"] == 2
    trained = []
    resumed = TR.run(None, progress=False, resume=str(out), on_epoch=lambda e: trained.append(e["epoch"]))
    assert resumed["status"] == "finished" and resumed["resumed_after_epoch"] == 2
    assert trained == [3, 4]                                  # only the missing epochs ran
    assert _strip_timing(resumed["history"]) == _strip_timing(full["history"])
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["test_loss"] == full["test_loss"] and resumed["best_epoch"] == full["best_epoch"]
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    if "selections" in full:
        assert resumed["selections"] == full["selections"]


def test_resume_can_extend_but_not_change_settings(tmp_path, capsys):
    out = tmp_path / "o"
    TR.run(dict(TINY_CFG, epochs=1, out=str(out)), progress=False)
    more = TR.run({"epochs": 2}, progress=False, resume=str(out))
    assert more["epochs_completed"] == 2 and [h["epoch"] for h in more["history"]] == [1, 2]
    with pytest.raises(ValueError, match="differ: batch_size"):
        TR.run({"batch_size": 32}, progress=False, resume=str(out))
    _one_error(["train", "--resume", out, "--lr", "0.1"], capsys, "drop --lr")
    _one_error(["train", "--resume", tmp_path / "nothing"], capsys, "no checkpoint at")
    (out / "checkpoint.npz").write_bytes(b"garbage")
    _one_error(["train", "--resume", out], capsys, "not a readable ccledu checkpoint")


@pytest.mark.parametrize("rule", ["bp", "ff", "ccl"])
def test_eval_every_skips_evaluation_without_changing_training(rule, tmp_path):
    """eval_every=3 over 5 epochs: evaluated after epochs 3 and 5 only, the checkpoint chosen
    among those, and the training losses and the evaluated epochs' numbers identical to
    evaluating every epoch."""
    cfg = dict(TINY_CFG, rule=rule, epochs=5, track_test=True, diagnostics=True)
    if rule == "ff":
        cfg["model"] = "mlp:784-16-16-10"
    every = TR.run(dict(cfg), progress=False)
    sparse = TR.run(dict(cfg, eval_every=3), progress=False)
    assert [("val_loss" in h, "test_accuracy" in h) for h in sparse["history"]] == \
        [(False, False), (False, False), (True, True), (False, False), (True, True)]
    assert set(sparse["history"][0]) == {"epoch", "train_loss", "train_seconds", "terms"}
    assert [h["train_loss"] for h in sparse["history"]] == [h["train_loss"] for h in every["history"]]
    for e in (3, 5):          # the same weights at the evaluated epochs (losses bit-equal)
        for k in ("val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert sparse["history"][e - 1][k] == every["history"][e - 1][k]
    assert sparse["best_epoch"] == min((3, 5), key=lambda e: every["history"][e - 1]["val_loss"])
    assert sparse["selections"]["last_epoch"]["epoch"] == 5
    assert sparse["selections"]["lowest_val_loss"]["epoch"] == sparse["best_epoch"]


def test_eval_every_may_change_on_resume(tmp_path, capsys):
    out = tmp_path / "o"
    TR.run(dict(TINY_CFG, epochs=2, out=str(out)), progress=False)
    more = TR.run({"epochs": 4, "eval_every": 2}, progress=False, resume=str(out))
    assert ["val_loss" in h for h in more["history"]] == [True, True, False, True]
    assert more["config"]["eval_every"] == 2
    rc = cli.main(["train", "--resume", str(out), "--epochs", "5", "--eval-every", "5", "--quiet"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_completed"] == 5 and "val_loss" in m["history"][4]
    _one_error(["train", "--resume", out, "--eval-every", "2", "--batch-size", "8"], capsys,
               "drop --batch-size")
    _one_error(["train", "--eval-every", "0", "--epochs", "1"], capsys, "--eval-every: must be an integer >= 1")


def test_ctrl_c_in_a_subprocess_then_resume_from_the_command_line(tmp_path):
    """SIGINT mid-run: one line, exit 130, metrics.json 'interrupted', a checkpoint; then
    ``ccledu train --resume`` ends exactly as an uninterrupted run (history and weights)."""
    args = ["train", *TINY, "--epochs", "30", "--rule", "ccl", "--momentum-forward", "0.5"]
    ref = _cli_proc([*args, "--out", tmp_path / "ref"])
    ref.communicate(timeout=300)
    assert ref.returncode == 0
    out = tmp_path / "cut"
    p = _cli_proc([*args, "--out", out])
    for _ in range(6000):                              # up to 120 s on a loaded machine
        if (out / "checkpoint.npz").exists() or p.poll() is not None:
            break
        time.sleep(0.02)
    assert (out / "checkpoint.npz").exists()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    m = json.loads((out / "metrics.json").read_text())
    if p.returncode == 0:                       # finished before the signal: nothing to test
        pytest.fail("the run ended before SIGINT arrived; make it longer")
    assert p.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("ccledu: note:")]
    assert len(lines) == 1 and lines[0].startswith("ccledu: interrupted after epoch"), err
    assert "Traceback" not in err and "--resume" in lines[0]
    assert m["status"] == "interrupted" and m["epochs_completed"] < 30
    r = _cli_proc(["train", "--resume", out, "--quiet"])
    rout, rerr = r.communicate(timeout=300)
    assert r.returncode == 0, rerr
    a = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["status"] == "finished" and b["resumed_after_epoch"] == m["checkpoint_epoch"] >= 1
    assert _strip_timing(a["history"]) == _strip_timing(b["history"])
    assert a["test_accuracy"] == b["test_accuracy"]
    with np.load(tmp_path / "ref" / "checkpoint.npz") as za, np.load(out / "checkpoint.npz") as zb:
        for k in za.files:
            if k.startswith(("model/", "rule/")):
                assert za[k].tobytes() == zb[k].tobytes(), k


def test_ctrl_c_without_out_is_one_line(capsys, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt
    from ccledu.rules.base import Rule
    monkeypatch.setattr(Rule, "evaluate_set", boom)
    _one_error(["train", *TINY, "--epochs", "2"], capsys, "nothing was saved (no --out)", code=130)


# ------------------------------------------------------------------ the top-level guard

@pytest.mark.parametrize("exc,needle", [
    (OSError(28, "No space left on device", "/x/metrics.json"), "the disk is full"),
    (TypeError("unsupported operand"), "unexpected TypeError"),
    (ZeroDivisionError("division by zero"), "unexpected ZeroDivisionError"),
    (MemoryError(), "out of memory"),
    (IndexError("index 7 is out of bounds"), "run again with --debug"),
    (PermissionError(13, "Permission denied", "/root/x"), "permission denied"),
])
def test_top_level_guard_turns_any_exception_into_one_line(capsys, monkeypatch, exc, needle):
    def raiser(args):
        raise exc
    monkeypatch.setattr(cli, "cmd_train", raiser)
    _one_error(["train"], capsys, needle)
    code = cli.main(["train", "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("ccledu: error:")


def test_debug_env_var(capsys, monkeypatch):
    monkeypatch.setattr(cli, "cmd_train", lambda a: 1 / 0)
    monkeypatch.setenv("CCLEDU_DEBUG", "1")
    assert cli.main(["train"]) == 2 and "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------ autoencoder options

@pytest.mark.parametrize("flag,value", [("--scale-c", "-1"), ("--scale-d", "-0.5"),
                                        ("--small-init", "-1"), ("--small-init", "0")])
def test_autoencoder_flags_are_range_checked(capsys, flag, value):
    line = _one_error(["train", "--rule", "ccl-ae", flag, value], capsys, flag)
    assert "must be" in line


def test_autoencoder_output_checked_before_training_and_status_written(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_error(["train", "--rule", "bp-ae", "--out", str(f), "--epochs", "1", "--limit-train",
                "8"], capsys, "is a file, not a folder")
    out = tmp_path / "ae"
    code = cli.main(["train", "--rule", "bp-ae", "--out", str(out), "--epochs", "1",
                     "--limit-train", "32", "--limit-test", "16", "--batch-size", "16",
                     "--model", "autoencoder:4-8", "--quiet"])
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epochs_completed"] == 1 and not (out / ".ccledu.lock").exists()
