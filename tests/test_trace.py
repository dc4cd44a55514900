"""Trace files: write / read / verify round trips, tampering, malformed files, determinism."""
import json
import subprocess
import sys

import numpy as np
import pytest

from ccledu import cli
from ccledu.trace import FORMAT, TraceError, read_trace, verify_trace, write_trace

from ccledu.rules import rule_class  # noqa: E402

RULES = ["bp", "fa", "dfa", "ccl", "ff", "drtp", "dtp", "drl", "ldrl", "fwdtp", "sign", "kp"]
MLP_ONLY = [r for r in RULES if rule_class(r).MODEL_KINDS == ("mlp",)]   # the TP rules
SPECS = {"mlp": "mlp:12-10-8-5", "cnn": "cnn:2x8x8-c3-c4-5"}
CASES = [(r, k) for r in RULES for k in SPECS if k in rule_class(r).MODEL_KINDS]


def test_every_registered_rule_is_traced():
    """Every rule for classifiers has traces; the autoencoder rules have none, and say so."""
    from ccledu.rules import RULES as REGISTRY
    assert sorted(RULES) == sorted(r for r in REGISTRY
                                   if {"mlp", "cnn"} & set(rule_class(r).MODEL_KINDS))


def test_trace_of_an_autoencoder_rule_is_one_clear_line(tmp_path, capsys):
    code = cli.main(["trace", "--rule", "ccl-ae", "--model", "mlp:12-10-8-5",
                     "--out", str(tmp_path / "t.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "trains autoencoder models" in err, err


def _ids(case):
    return f"{case[0]}-{case[1]}"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """One float64 trace per rule × kind (batch 6)."""
    d = tmp_path_factory.mktemp("traces")
    out = {}
    for rule, kind in CASES:
        p = d / f"{rule}_{kind}.npz"
        write_trace(p, rule, SPECS[kind], 6, seed=3)
        out[rule, kind] = p
    return out


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def _save(path, meta, arrays):
    payload = {"meta": np.array(json.dumps(meta))} if meta is not None else {}
    payload.update(arrays)
    np.savez(path, **payload)
    return path


def _tampered(src, dst, change):
    meta, arrays = _load(src)
    change(meta, arrays)
    return _save(dst, meta, arrays)


def _bump(arrays, name, eps=1e-3):
    a = arrays[name].copy()
    a.flat[0] += eps
    arrays[name] = a


def _cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_round_trip(traces, case):
    rule, kind = case
    report = verify_trace(traces[case])
    assert report.ok, report.summary()
    assert not report.missing and not report.unknown
    names = [r.tensor for r in report]
    meta, arrays = read_trace(traces[case])
    assert meta["format"] == FORMAT and meta["rule"] == rule and meta["layers"]
    # every category is there, and every trainable parameter has a gradient and an after value
    for prefix in ("act/", "loss/", "grad/", "after/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert "loss/total" in names
    trainable = [p for g in meta["optimizer"]["groups"] for p in g["params"]]
    assert sorted(n[5:] for n in names if n.startswith("grad/")) == sorted(trainable)
    if rule == "ccl":
        L = len(meta["layers"])
        assert [n for n in names if n.startswith("signal/")] == [f"signal/{l}" for l in range(L, -1, -1)]
        assert any(k.startswith("param/feedback.") for k in arrays)
        assert meta["feedback_activation"] == meta["loss"]["feedback_activation"] == "elu"
        assert {"form", "scale", "ssl_scale", "flood"} <= set(meta["loss"])
        assert meta["loss"]["form"] == kind
    if rule in ("fa", "dfa"):
        assert any(k.startswith("param/fixed.") for k in arrays)
    if rule == "ff":
        neg, y = arrays["input/negative_labels"], arrays["y"]
        assert neg.shape == y.shape and np.all(neg != y)
        assert "overlay/negative" in names
    if rule in ("drtp",):
        assert any(k.startswith("param/fixed.") for k in arrays)
    if rule in ("dtp", "drl", "ldrl"):
        # Q is trained inside the step: param/ and after/, no grad/; every noise draw recorded
        L = len(meta["layers"])
        fb = [f"feedback.{l}.weight" for l in range(1, L)]
        assert all(f"after/{n}" in names and f"grad/{n}" not in names for n in fb)
        assert all(not np.array_equal(arrays[f"param/{n}"], arrays[f"after/{n}"]) for n in fb)
        per_layer = 2 if rule == "ldrl" else 1
        noise = [k for k in arrays if k.startswith("input/noise/")]
        assert len(noise) == meta["loss"]["feedback_iters"] * (L - 1) * per_layer
        assert [n for n in names if n.startswith("target/")] == [f"target/{l}" for l in range(L)]
        assert meta["batchnorm"] is False
    if rule == "fwdtp":
        assert any(k.startswith("param/feedback.") for k in arrays)
        assert not any(k.startswith("input/") for k in arrays)
    if rule == "kp":
        # KP's feedback has W's shape and learns with the forward gradient
        fbs = [k for k in arrays if k.startswith("grad/feedback.")]
        assert fbs
        for k in fbs:
            l = k.split(".")[1]
            assert arrays[f"param/feedback.{l}.weight"].shape == arrays[f"param/forward.{l}.weight"].shape
            np.testing.assert_array_equal(arrays[k], arrays[f"grad/forward.{l}.weight"])
    # computation order: overlays, acts, signals / targets, losses, grads, after
    rank = {"overlay": 0, "act": 1, "signal": 2, "target": 2, "loss": 3, "grad": 4, "after": 5}
    ranks = [rank[n.split("/")[0]] for n in names]
    assert ranks == sorted(ranks)


def test_round_trip_float32(tmp_path):
    for rule, kind in [("ccl", "cnn"), ("bp", "mlp")]:
        p = write_trace(tmp_path / f"{rule}.npz", rule, SPECS[kind], 6, seed=0, dtype="float32") and \
            tmp_path / f"{rule}.npz"
        meta, arrays = read_trace(p)
        assert meta["dtype"] == "float32" and arrays["x"].dtype == np.float32
        report = verify_trace(p)
        assert report.ok, report.summary()
        assert (report.rtol, report.atol) == (1e-4, 1e-5)


def test_settings_are_recorded(tmp_path):
    p = tmp_path / "t.npz"
    meta = write_trace(p, "ccl", SPECS["mlp"], 4, seed=1, rule_options={"scale": 0.7},
                       optimizer={"lr": 0.5, "momentum_forward": 0.9, "weight_decay": 1e-3,
                                  "clip": 0.2, "centralize": True, "warmup": 10, "step": 3})
    assert meta["loss"]["scale"] == 0.7
    opt = meta["optimizer"]
    assert opt["warmup"] == 10 and opt["step"] == 3
    fwd, fb = opt["groups"]
    assert (fwd["name"], fb["name"]) == ("forward", "feedback")
    assert fwd == {**fwd, "lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "clip": 0.2,
                   "centralize": True}
    assert fb["momentum"] == 0.0 and fb["lr"] == 0.5
    assert verify_trace(p).ok
    with pytest.raises(ValueError, match="unknown optimizer setting"):
        write_trace(tmp_path / "u.npz", "bp", SPECS["mlp"], 4, optimizer={"learning_rate": 1})


def test_data_batch(tmp_path):
    p = tmp_path / "mnist.npz"
    meta = write_trace(p, "bp", "mlp:784-8-10", 3, data="mnist")
    _, arrays = read_trace(p)
    from ccledu import data as D
    ds = D.load_dataset("mnist")
    assert meta["data"] == "mnist"
    np.testing.assert_array_equal(arrays["y"], ds.train_y[:3])
    expect = D.normalize(ds.train_x[:3], ds.info.mean, ds.info.std, "float64").reshape(3, -1)
    np.testing.assert_array_equal(arrays["x"], expect)
    assert verify_trace(p).ok


def test_determinism(tmp_path):
    for rule, kind in [("ccl", "cnn"), ("ff", "mlp"), ("dfa", "cnn")]:
        a, b = tmp_path / f"a_{rule}.npz", tmp_path / f"b_{rule}.npz"
        write_trace(a, rule, SPECS[kind], 5, seed=11)
        write_trace(b, rule, SPECS[kind], 5, seed=11)
        with np.load(a) as za, np.load(b) as zb:
            assert sorted(za.files) == sorted(zb.files)
            assert str(za["meta"]) == str(zb["meta"])
            for k in za.files:
                assert za[k].dtype == zb[k].dtype, k
                assert np.array_equal(za[k], zb[k]), k
        c = tmp_path / f"c_{rule}.npz"
        write_trace(c, rule, SPECS[kind], 5, seed=12)
        with np.load(a) as za, np.load(c) as zc:
            assert not np.array_equal(za["x"], zc["x"])


# ------------------------------------------------------------------------------------------------
# Tampering
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tampered_grad_and_after(traces, case, tmp_path, capsys):
    meta, arrays = _load(traces[case])
    for prefix in ("grad/", "after/"):
        names = [k for k in arrays if k.startswith(prefix)]
        for name in (names[0], names[-1]):
            p = _tampered(traces[case], tmp_path / "t.npz", lambda m, a: _bump(a, name))
            report = verify_trace(p)
            assert report.failing() == [name]
            code, out, err = _cli(["verify", str(p)], capsys)
            assert code == 1 and name in out and "MISMATCH" in out and err == ""


def _first_affected(rule, kind, param):
    if param == "forward.0.weight":
        return "act/0"
    if param.startswith("feedback."):
        l = int(param.split(".")[1])
        if rule in MLP_ONLY:                   # TP: Q_l builds the target of the layer below
            return f"target/{l - 1}"
        if rule == "kp":                       # KP: B_l carries the error to block l - 1
            return f"grad/forward.{l - 1}.weight"
        return f"signal/{l}"                   # CCL: V_l makes the signal s_l
    return "grad/forward.0.weight"          # FA B_1 and DFA D_0 shape the error reaching W_0


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tampered_param(traces, case, tmp_path, capsys):
    rule, kind = case
    meta, arrays = _load(traces[case])
    params = ["forward.0.weight"]
    params += [k[6:] for k in arrays if k.startswith(("param/fixed.", "param/feedback."))][:1]
    if rule == "fa":
        params = ["forward.0.weight", "fixed.1.weight"]
    if rule == "dfa":
        params = ["forward.0.weight", "fixed.0.weight"]
    for param in params:
        p = _tampered(traces[case], tmp_path / "t.npz", lambda m, a: _bump(a, f"param/{param}"))
        report = verify_trace(p)
        assert not report.ok
        first = report[report.first_mismatch].tensor
        assert first == _first_affected(rule, kind, param), (param, report.failing())
        if param in [g for grp in meta["optimizer"]["groups"] for g in grp["params"]]:
            assert f"after/{param}" in report.failing()
        code, out, _ = _cli(["verify", str(p)], capsys)
        assert code == 1 and first in out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_tampered_meta(traces, case, tmp_path, capsys):
    rule, kind = case
    src = traces[case]
    meta, _ = _load(src)

    def lr(m, a):
        m["optimizer"]["groups"][0]["lr"] *= 2
    p = _tampered(src, tmp_path / "lr.npz", lr)
    report = verify_trace(p)
    expect = sorted(f"after/{n}" for n in meta["optimizer"]["groups"][0]["params"])
    assert sorted(report.failing()) == expect
    code, out, _ = _cli(["verify", str(p)], capsys)
    assert code == 1 and report[report.first_mismatch].tensor in out

    loss_setting = {"ccl": ("scale", 0.25, "loss/pair/0"), "ff": ("theta", 1.0, "loss/ff/0")}
    if rule in loss_setting:
        key, delta, first = loss_setting[rule]

        def bump(m, a):
            m["loss"][key] += delta
        p = _tampered(src, tmp_path / "loss.npz", bump)
        report = verify_trace(p)
        assert report[report.first_mismatch].tensor == first, report.failing()
        assert any(n.startswith("grad/") for n in report.failing())
        code, out, _ = _cli(["verify", str(p)], capsys)
        assert code == 1 and first in out

    def warm(m, a):
        m["optimizer"]["warmup"] = 4
    report = verify_trace(_tampered(src, tmp_path / "w.npz", warm))
    if meta["optimizer"]["warmup"] != 4:
        assert report.failing() and all(n.startswith("after/") for n in report.failing())


def test_mismatch_message_points_at_neighbours(traces, tmp_path, capsys):
    src = traces["ccl", "mlp"]
    p = _tampered(src, tmp_path / "t.npz", lambda m, a: _bump(a, "grad/forward.0.weight"))
    code, out, _ = _cli(["verify", str(p)], capsys)
    assert code == 1
    last = out.strip().splitlines()[-1]
    # the first tensor that differs, and the one computed just before it that still agrees
    assert "grad/forward.0.weight" in last and "grad/feedback.0.weight" in last
    p = _tampered(src, tmp_path / "u.npz", lambda m, a: _bump(a, "act/0"))
    code, out, _ = _cli(["verify", str(p)], capsys)
    assert code == 1 and "first tensor checked" in out


def test_missing_tensors_are_skipped(traces, tmp_path, capsys):
    meta, arrays = _load(traces["ccl", "cnn"])
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("signal/", "act/"))}
    arrays["loss/extra"] = np.array(1.0)
    p = _save(tmp_path / "partial.npz", meta, arrays)
    report = verify_trace(p)
    assert report.ok and "signal/0" in report.missing and report.unknown == ["loss/extra"]
    code, out, _ = _cli(["verify", str(p)], capsys)
    assert code == 0 and "not in the file" in out and "loss/extra" in out


def test_tolerance_flags(traces, tmp_path, capsys):
    p = _tampered(traces["bp", "mlp"], tmp_path / "t.npz", lambda m, a: _bump(a, "grad/forward.0.weight", 1e-6))
    assert _cli(["verify", str(p)], capsys)[0] == 1
    assert _cli(["verify", str(p), "--atol", "1e-5"], capsys)[0] == 0


# ------------------------------------------------------------------------------------------------
# Malformed files
# ------------------------------------------------------------------------------------------------

def _malformed(traces, tmp_path):
    src = traces["ccl", "cnn"]
    meta, arrays = _load(src)
    files = {}
    files["no_meta"] = _save(tmp_path / "no_meta.npz", None, arrays)

    def drop(key):
        m = dict(meta)
        del m[key]
        return m
    files["missing_meta_key"] = _save(tmp_path / "missing_key.npz", drop("layers"), arrays)
    files["missing_array"] = _save(tmp_path / "missing_array.npz", meta,
                                   {k: v for k, v in arrays.items() if k != "param/feedback.1.weight"})
    bad = dict(arrays)
    bad["param/forward.1.weight"] = arrays["param/forward.1.weight"][:, :2]
    files["wrong_shape"] = _save(tmp_path / "wrong_shape.npz", meta, bad)
    bad = dict(arrays)
    bad["grad/forward.0.weight"] = np.zeros((3, 2, 5, 5))
    files["wrong_grad_shape"] = _save(tmp_path / "wrong_grad_shape.npz", meta, bad)
    files["unknown_rule"] = _save(tmp_path / "unknown_rule.npz", {**meta, "rule": "hebb"}, arrays)
    files["wrong_format"] = _save(tmp_path / "wrong_format.npz", {**meta, "format": "other/2"}, arrays)
    layers = [dict(d) for d in meta["layers"]]
    layers[-1]["in"] = 99
    files["bad_layers"] = _save(tmp_path / "bad_layers.npz", {**meta, "layers": layers}, arrays)
    txt = tmp_path / "not_npz.npz"
    txt.write_text("hello, not a zip\n")
    files["not_npz"] = txt
    raw = dict(arrays)
    raw["meta"] = np.array("{not json")
    np.savez(tmp_path / "bad_json.npz", **raw)
    files["bad_json"] = tmp_path / "bad_json.npz"
    files["no_file"] = tmp_path / "does_not_exist.npz"
    return files


def test_malformed_files(traces, tmp_path, capsys):
    files = _malformed(traces, tmp_path)
    expect = {"no_meta": "meta", "missing_meta_key": "layers", "missing_array": "feedback.1.weight",
              "wrong_shape": "forward.1.weight", "wrong_grad_shape": "grad/forward.0.weight",
              "unknown_rule": "hebb", "wrong_format": "format", "bad_layers": "layers",
              "not_npz": "not a trace file", "bad_json": "JSON", "no_file": "no such file"}
    for name, path in files.items():
        with pytest.raises(TraceError, match=None) as e:
            read_trace(path)
        assert expect[name] in str(e.value), (name, str(e.value))
        code, out, err = _cli(["verify", str(path)], capsys)
        assert code == 2, name
        assert "Traceback" not in err and "Traceback" not in out
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ccledu: error: "), (name, err)
        assert expect[name] in lines[0], (name, lines[0])


def test_malformed_file_subprocess(traces, tmp_path):
    files = _malformed(traces, tmp_path)
    for name in ("wrong_shape", "not_npz"):
        r = subprocess.run([sys.executable, "-m", "ccledu", "verify", str(files[name])],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("ccledu: error: ")


def test_trace_cli(tmp_path, capsys):
    out = tmp_path / "cli.npz"
    code, text, _ = _cli(["trace", "--rule", "ccl", "--model", SPECS["cnn"], "--batch-size", "4",
                          "--seed", "2", "--out", str(out), "--scale", "0.8", "--lr", "0.5",
                          "--no-centralize", "--warmup", "0"], capsys)
    assert code == 0 and "wrote" in text
    meta, _ = read_trace(out)
    assert meta["loss"]["scale"] == 0.8 and meta["seed"] == 2 and meta["batch_size"] == 4
    assert all(g["lr"] == 0.5 and not g["centralize"] for g in meta["optimizer"]["groups"])
    assert _cli(["verify", str(out)], capsys)[0] == 0
    code, _, err = _cli(["trace", "--rule", "bp", "--model", SPECS["mlp"], "--out",
                         str(tmp_path / "x.npz"), "--theta", "1"], capsys)
    assert code == 2 and "does not apply" in err


def test_docs_worked_example(tmp_path, monkeypatch):
    """The plain-NumPy reading example of docs/trace-format.md runs on a fresh trace."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "docs" / "trace-format.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, re.S)[0]
    monkeypatch.chdir(tmp_path)
    write_trace("bp.npz", "bp", "mlp:6-4-3", 5, seed=4,
                optimizer={"centralize": True, "clip": 0.01, "weight_decay": 0.1, "warmup": 3})
    exec(compile(code, "trace-format.md", "exec"), {})


@pytest.mark.parametrize("variant", ["brsf", "frsf", "usf"])
def test_sign_symmetry_variants_trace(tmp_path, variant):
    p = tmp_path / f"{variant}.npz"
    write_trace(p, "sign", SPECS["mlp"], 5, seed=1, rule_options={"variant": variant})
    assert verify_trace(p).ok
    meta, arrays = _load(p)
    assert meta["variant"] == variant
    mags = sorted(k for k in arrays if k.startswith("input/magnitude/"))
    fixed = sorted(k for k in arrays if k.startswith("param/fixed."))
    L = len(meta["layers"])
    if variant == "brsf":                # the step's fresh |M_l| are recorded and replayed
        assert mags == [f"input/magnitude/{l}" for l in range(1, L)] and not fixed
        _bump(arrays, f"input/magnitude/{L - 1}", 0.5)
        report = verify_trace(_save(tmp_path / "bad.npz", meta, arrays))
        assert not report.ok and report[report.first_mismatch].tensor == f"grad/forward.{L - 2}.weight"
    elif variant == "frsf":
        assert fixed == [f"param/fixed.{l}.weight" for l in range(1, L)] and not mags
    else:
        assert not mags and not fixed


def test_tp_noise_is_replayed(tmp_path):
    """verify replays the recorded noise: the file checks out, a changed draw does not."""
    p = tmp_path / "dtp.npz"
    write_trace(p, "dtp", SPECS["mlp"], 5, seed=2, rule_options={"feedback_iters": 2})
    assert verify_trace(p).ok
    meta, arrays = _load(p)
    assert sorted(k for k in arrays if k.startswith("input/noise/")) == [f"input/noise/{k}" for k in range(4)]  # 2 iters x 2 layers
    _bump(arrays, "input/noise/0", 0.1)
    report = verify_trace(_save(tmp_path / "bad.npz", meta, arrays))
    assert not report.ok
    del arrays["input/noise/0"]
    with pytest.raises(TraceError, match="input/noise/0"):
        read_trace(_save(tmp_path / "missing.npz", meta, arrays))
