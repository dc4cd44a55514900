"""Reliability of the trace reader and ``ccledu verify`` against hostile or careless files.

Every case asserts the exit status (0 agree, 1 mismatch, 2 refused) and the one ``ccledu: error:``
line, or, through the API, the exception. A fuzz test corrupts a valid trace at random and
checks: never an exception other than TraceError (so never a traceback), never OK when a tensor
changed, and bounded memory (tracemalloc peak).
"""
import io
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from ccledu import cli
from ccledu import trace as T
from ccledu.trace import TraceError, read_trace, verify_trace, write_trace

MiB = 1 << 20


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel_traces")
    out = {}
    for rule in ("bp", "ccl", "ff"):
        write_trace(d / f"{rule}.npz", rule, "mlp:12-10-8-5", 6, seed=1)
        out[rule] = d / f"{rule}.npz"
    return out


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def _save(path, meta, arrays, compressed=False):
    payload = {"meta": np.array(json.dumps(meta))}
    payload.update(arrays)
    (np.savez_compressed if compressed else np.savez)(path, **payload)
    return path


def _npy_bytes(shape, dtype, data=b""):
    """A .npy member whose header declares ``shape``/``dtype``, followed by ``data`` only."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def _add_member(path, name, blob, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "a", compression=compress) as zf:
        zf.writestr(name, blob)
    return path


def _verify(argv, capsys):
    code = cli.main(["verify", *map(str, argv)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "Traceback" not in out.out
    return code, out.out, out.err


def _refused(argv, capsys, needle):
    code, out, err = _verify(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("ccledu: error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


def _peak(fn):
    """(result or exception, peak traced bytes) of fn()."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        try:
            res = fn()
        except TraceError as e:
            res = e
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return res, peak


# ------------------------------------------------------------------ memory bounded by the file

def test_unknown_entry_declaring_1gib_is_listed_not_loaded(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    p = _save(tmp_path / "bomb.npz", meta, arrays)
    _add_member(p, "extra/blob.npy", _npy_bytes((1 << 27,), "<f8", b"\0" * 64))   # claims 1 GiB
    rep, peak = _peak(lambda: verify_trace(p))
    assert isinstance(rep, T.Report) and rep.ok and "extra/blob" in rep.unknown
    assert peak < 16 * MiB, peak
    code, out, _ = _verify([p], capsys)
    assert code == 0 and "extra/blob" in out and "not computed by ccledu" in out


def test_unknown_deflated_entry_is_never_decompressed(small, tmp_path):
    meta, arrays = _load(small["bp"])
    arrays["junk/zeros"] = np.zeros(4 * MiB)                  # 32 MiB, deflates to ~30 KiB
    p = _save(tmp_path / "deflated.npz", meta, arrays, compressed=True)
    assert p.stat().st_size < 200 * 1024
    rep, peak = _peak(lambda: verify_trace(p))
    assert rep.ok and rep.unknown == ["junk/zeros"]
    assert peak < 16 * MiB, peak


def test_declared_20000x10000_layer_refused_before_anything_is_built(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    meta["layers"][0]["out"] = 20000
    meta["layers"][1]["in"] = 20000
    meta["layers"][1]["out"] = 10000
    meta["layers"][2]["in"] = 10000
    p = _save(tmp_path / "huge.npz", meta, arrays)
    err, peak = _peak(lambda: read_trace(p))
    assert isinstance(err, TraceError) and "limit" in str(err)
    assert peak < 8 * MiB, peak
    _refused([p], capsys, "forward parameters, more than the limit")


def test_declared_batch_beyond_the_step_limit_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    meta["batch_size"] = 10 ** 9
    p = _save(tmp_path / "batch.npz", meta, arrays)
    err, peak = _peak(lambda: read_trace(p))
    assert isinstance(err, TraceError) and peak < 8 * MiB
    _refused([p], capsys, "step over")


def test_huge_num_classes_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    meta["num_classes"] = 10 ** 6
    _refused([_save(tmp_path / "c.npz", meta, arrays)], capsys, "more than the limit")


def test_known_entry_with_forged_huge_header_refused_before_loading(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    del arrays["x"]
    p = _save(tmp_path / "forged.npz", meta, arrays)
    _add_member(p, "x.npy", _npy_bytes((1 << 26, 12), "<f8", b"\0" * 128))
    err, peak = _peak(lambda: read_trace(p))
    assert isinstance(err, TraceError) and "x has shape" in str(err) and peak < 8 * MiB
    _refused([p], capsys, "x has shape")


def test_decompressed_total_is_capped(small, capsys):
    with pytest.raises(TraceError, match="more than the limit of 1000"):
        read_trace(small["ccl"], limits={"total_bytes": 1000})
    assert T.LIMITS["total_bytes"] == 1 << 30


def test_entry_count_and_meta_size_are_capped(small, tmp_path, capsys):
    with pytest.raises(TraceError, match="entries, more than the limit of 5"):
        read_trace(small["bp"], limits={"entries": 5})
    meta, arrays = _load(small["bp"])
    meta["padding"] = "x" * (T.LIMITS["meta_bytes"] // 4 + 10)
    _refused([_save(tmp_path / "bigmeta.npz", meta, arrays)], capsys, "meta is")


# ------------------------------------------------------------------ verify must not say OK

def test_all_nan_inputs_and_outputs_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    arrays = {k: (np.full_like(v, np.nan) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
    _refused([_save(tmp_path / "nan.npz", meta, arrays)], capsys, "NaN or inf")


def test_nan_in_outputs_on_both_sides_is_a_mismatch_without_a_reason(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    arrays["x"] = arrays["x"].copy()
    arrays["x"][0, 0] = np.inf
    meta[T.NONFINITE_KEY] = "overflow probe"
    # recompute the step on these inputs so that file and ccledu agree bit for bit
    model, rule = T.rebuild(meta)
    params = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    model.load_parameters(params)
    _, computed = T.run_step(model, rule, arrays["x"], arrays["y"], meta["optimizer"])
    assert any(not np.all(np.isfinite(v)) for v in computed.values())
    arrays.update(computed)
    ok = _save(tmp_path / "nan_ok.npz", meta, arrays)
    assert verify_trace(ok).ok                      # says why, agrees bit for bit: accepted
    code, out, _ = _verify([ok], capsys)
    assert code == 0 and out.strip().splitlines()[-1].startswith("OK")
    no_reason = dict(meta)
    del no_reason[T.NONFINITE_KEY]
    _refused([_save(tmp_path / "nan_noreason.npz", no_reason, arrays)], capsys, "NaN or inf")
    # a reason, but an output whose NaN ccledu does not produce
    bad = dict(arrays)
    name = "act/0"                                  # row 1 is finite in ccledu's step
    assert np.all(np.isfinite(computed[name][1]))
    bad[name] = bad[name].copy()
    bad[name][1, 0] = np.nan
    rep = verify_trace(_save(tmp_path / "nan_bad.npz", meta, bad))
    assert not rep.ok and name in rep.failing()
    assert _verify([tmp_path / "nan_bad.npz"], capsys)[0] == 1


def test_nan_only_in_a_checked_output_is_a_mismatch(small, tmp_path, capsys):
    meta, arrays = _load(small["ccl"])
    g = arrays["grad/forward.0.weight"].copy()
    g[0, 0] = np.nan
    arrays["grad/forward.0.weight"] = g
    rep = verify_trace(_save(tmp_path / "g.npz", meta, arrays))
    assert rep.failing() == ["grad/forward.0.weight"]
    code, out, _ = _verify([tmp_path / "g.npz"], capsys)
    assert code == 1 and "MISMATCH" in out and "grad/forward.0.weight" in out


def test_trace_with_nothing_to_compare_exits_2(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    inputs = {k: v for k, v in arrays.items() if k in ("x", "y") or k.startswith("param/")}
    p = _save(tmp_path / "empty.npz", meta, inputs)
    with pytest.raises(TraceError, match="nothing to compare"):
        verify_trace(p)
    _refused([p], capsys, "nothing to compare")
    assert not T.Report().ok


def test_float64_arrays_under_float32_meta_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    g = arrays["grad/forward.1.weight"].copy()
    g.flat[0] += 1e-6                                 # would pass float32 tolerances
    arrays["grad/forward.1.weight"] = g
    meta["dtype"] = "float32"
    _refused([_save(tmp_path / "dt.npz", meta, arrays)], capsys, "meta.dtype says float32")


def test_one_array_of_the_wrong_float_type_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    arrays["act/0"] = arrays["act/0"].astype(np.float32)
    _refused([_save(tmp_path / "a32.npz", meta, arrays)], capsys, "act/0 is float32")
    meta, arrays = _load(small["bp"])
    arrays["x"] = (arrays["x"] * 100).astype(np.int64)
    _refused([_save(tmp_path / "xint.npz", meta, arrays)], capsys, "x is int64")


@pytest.mark.parametrize("flag,value", [("--rtol", "-1"), ("--atol", "nan"), ("--rtol", "inf"),
                                        ("--atol", "-0.5"), ("--rtol", "abc")])
def test_bad_tolerance_flags_refused_at_parse_time(small, capsys, flag, value):
    code, out, err = _verify([small["bp"], flag, value], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "finite number >= 0" in lines[0] or \
        "number >= 0" in lines[0], err
    with pytest.raises(ValueError):
        verify_trace(small["bp"], **{flag[2:]: float(value) if value != "abc" else value})


def test_zero_tolerances_are_valid(small):
    rep = verify_trace(small["bp"], rtol=0, atol=0)
    assert rep.rtol == 0 and rep.atol == 0


# ------------------------------------------------------------------ malformed archives

def test_object_array_entry_refused_without_unpickling(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    arrays["act/0"] = np.array([{"a": 1}], dtype=object)
    p = tmp_path / "obj.npz"
    np.savez(p, meta=np.array(json.dumps(meta)), **arrays)
    _refused([p], capsys, "Python objects")


def test_duplicate_entry_names_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    p = _save(tmp_path / "dup.npz", meta, arrays)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arrays["grad/forward.0.weight"] + 1.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # zipfile warns "Duplicate name"
        _add_member(p, "grad/forward.0.weight.npy", buf.getvalue())
    _refused([p], capsys, "two entries named")


def test_crc_damage_refused(small, tmp_path, capsys):
    raw = bytearray(small["bp"].read_bytes())
    with zipfile.ZipFile(small["bp"]) as zf:
        info = zf.getinfo("grad/forward.0.weight.npy")
    # data start: local header (30 bytes + name + extra), then the .npy header (128 bytes)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + 128
    raw[start + 3] ^= 0x10
    p = tmp_path / "crc.npz"
    p.write_bytes(bytes(raw))
    _refused([p], capsys, "damaged")


def test_trailing_bytes_after_array_data_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    blob = arrays.pop("act/0")
    p = _save(tmp_path / "trail.npz", meta, arrays)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, blob)
    _add_member(p, "act/0.npy", buf.getvalue() + b"extra")
    _refused([p], capsys, "bytes after the array data")


def test_short_entry_data_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    blob = arrays.pop("act/0")
    p = _save(tmp_path / "short.npz", meta, arrays)
    _add_member(p, "act/0.npy", _npy_bytes(blob.shape, blob.dtype, blob.tobytes()[:-8]))
    _refused([p], capsys, "damaged")


def test_non_npy_member_is_listed_not_read(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    p = _save(tmp_path / "readme.npz", meta, arrays)
    _add_member(p, "README.txt", b"hello" * 1000)
    code, out, _ = _verify([p], capsys)
    assert code == 0 and "README.txt" in out


@pytest.mark.parametrize("dtype", ["<c16", "<U4", "|S8", "<m8"])
def test_non_numeric_tensor_refused(small, tmp_path, capsys, dtype):
    meta, arrays = _load(small["bp"])
    arrays["act/0"] = np.zeros(arrays["act/0"].shape, dtype=dtype)
    _refused([_save(tmp_path / "nn.npz", meta, arrays)], capsys, "act/0 is")


def test_bad_npy_magic_in_a_member_refused(small, tmp_path, capsys):
    meta, arrays = _load(small["bp"])
    arrays.pop("act/1")
    p = _save(tmp_path / "magic.npz", meta, arrays)
    _add_member(p, "act/1.npy", b"\x93NUMPY\x09\x00" + b"\0" * 100)
    _refused([p], capsys, "damaged")


@pytest.mark.parametrize("layer_patch", [{"in": -3}, {"in": "12"}, {"out": 0}, {"in": True, "out": 2.5},
                                         {"kind": "conv2d", "kernel": 0}])
def test_bad_layer_sizes_refused(small, tmp_path, capsys, layer_patch):
    meta, arrays = _load(small["bp"])
    meta["layers"][0].update(layer_patch)
    _refused([_save(tmp_path / "layer.npz", meta, arrays)], capsys, "layer")


# ------------------------------------------------------------------ fuzz

def _changed_tensors(orig, path):
    """Names of the loaded tensors of ``path`` that differ from ``orig`` (bit for bit)."""
    _, arrays = read_trace(path)
    out = [k for k, v in arrays.items()
           if k not in orig or v.shape != orig[k].shape or not np.array_equal(v, orig[k])
           or (v.dtype.kind == "f" and v.dtype != orig[k].dtype)]   # labels may be any int type
    return out          # a dropped optional tensor is no change: verify lists it as missing


def _mutations(rng, meta, arrays, raw):
    """One random corruption: ('bytes', new file bytes) or ('arrays', (meta, arrays))."""
    kind = rng.integers(0, 8)
    if kind == 0:                                        # flip a few bytes
        b = bytearray(raw)
        for _ in range(rng.integers(1, 6)):
            b[rng.integers(0, len(b))] ^= 1 << int(rng.integers(0, 8))
        return "bytes", bytes(b)
    if kind == 1:                                        # truncate
        return "bytes", raw[:int(rng.integers(0, len(raw)))]
    if kind == 2:                                        # insert or delete a run of bytes
        i = int(rng.integers(0, len(raw)))
        n = int(rng.integers(1, 64))
        return "bytes", (raw[:i] + rng.bytes(n) + raw[i:]) if rng.random() < 0.5 else raw[:i] + raw[i + n:]
    m, a = json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()}
    name = list(a)[int(rng.integers(0, len(a)))]
    if kind == 3:                                        # change one element a little or a lot
        v = a[name]
        if v.size:
            if v.dtype.kind == "f":
                # beyond float64 tolerances (rtol 1e-7, atol 1e-10) for values of order <= 1;
                # a change within the tolerances is, by design, agreement
                v.flat[int(rng.integers(0, v.size))] += rng.choice([1e-6, 1e-3, 1.0, 1e6])
            else:
                v.flat[int(rng.integers(0, v.size))] += 1
    elif kind == 4:                                      # NaN / inf / huge value
        v = a[name]
        if v.size and v.dtype.kind == "f":
            v.flat[int(rng.integers(0, v.size))] = rng.choice([np.nan, np.inf, -np.inf, 1e308])
    elif kind == 5:                                      # dtype or shape change, or drop it
        choice = rng.integers(0, 3)
        if choice == 0:
            a[name] = a[name].astype(rng.choice([np.float32, np.int64, np.float16, np.uint8]))
        elif choice == 1:
            a[name] = a[name].reshape(-1)[: max(a[name].size - 1, 0)]
        else:
            del a[name]
    elif kind == 6:                                      # a meta field set to something odd
        key = list(m)[int(rng.integers(0, len(m)))]
        m[key] = [None, -1, 0, 10 ** 12, "x", [], {}, 1.5, True, [[1]]][int(rng.integers(0, 10))]
    else:                                                # a layer or optimiser field
        if rng.random() < 0.5:
            d = m["layers"][int(rng.integers(0, len(m["layers"])))]
            key = list(d)[int(rng.integers(0, len(d)))]
            d[key] = [None, -1, 0, 10 ** 9, "conv2d", 3, 2.5][int(rng.integers(0, 7))]
        else:
            g = m["optimizer"]["groups"][0]
            key = list(g)[int(rng.integers(0, len(g)))]
            g[key] = [None, -1, float("nan"), 10 ** 9, "sgd", [], 0.5][int(rng.integers(0, 7))]
    return "arrays", (m, a)


@pytest.mark.parametrize("rule", ["bp", "ccl", "ff"])
def test_fuzz_random_corruptions(small, tmp_path, capsys, rule):
    """150 random corruptions per rule: never a traceback, never OK on a changed tensor, peak
    traced memory below 32 MiB each (the trace itself is ~20 KiB)."""
    src = small[rule]
    raw = src.read_bytes()
    meta, arrays = _load(src)
    _, orig = read_trace(src)
    rng = np.random.default_rng(15)
    seen = {"refused": 0, "mismatch": 0, "ok": 0}
    worst = 0
    for i in range(150):
        how, payload = _mutations(rng, meta, arrays, raw)
        p = tmp_path / f"f{i}.npz"
        if how == "bytes":
            p.write_bytes(payload)
        else:
            try:
                _save(p, *payload)
            except (TypeError, ValueError):
                continue
        tracemalloc.start()
        try:
            try:
                rep = verify_trace(p)
            except TraceError:
                rep = None
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        worst = max(worst, peak)
        assert peak < 32 * MiB, (i, how, peak)
        if rep is None:
            seen["refused"] += 1
        elif rep.ok:
            seen["ok"] += 1
            changed = _changed_tensors(orig, p)
            assert not changed, (i, how, changed)
            dropped = [k for k in orig if k not in read_trace(p)[1]]
            assert set(dropped) <= set(rep.missing), (i, dropped, rep.missing)
        else:
            seen["mismatch"] += 1
        if i % 20 == 0:                                  # the command line: one line, no traceback
            code, out, err = _verify([p], capsys)
            assert code in (0, 1, 2)
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and err.startswith("ccledu: error: ")
    print(rule, seen, f"worst peak {worst / MiB:.1f} MiB")
    assert seen["refused"] > 30 and seen["mismatch"] > 5, seen


# ------------------------------------------------------------------ ccledu trace flags

@pytest.mark.parametrize("flag,value,needle", [
    ("--batch-size", "0", "--batch-size: must be an integer >= 1"),
    ("--seed", "-2", "--seed: must be an integer >= 0"),
    ("--lr", "-1", "--lr: must be a finite number >= 0"),
    ("--lr", "nan", "--lr: must be a finite number >= 0"),
    ("--momentum-forward", "1.5", "--momentum-forward: must be a finite number >= 0 and < 1"),
    ("--weight-decay-feedback", "-1", "--weight-decay-feedback"),
    ("--clip-forward", "-0.1", "--clip-forward"),
    ("--warmup", "-3", "--warmup: must be an integer >= 0"),
    ("--step", "-1", "--step: must be an integer >= 0"),
])
def test_trace_flags_out_of_range_refused_at_parse_time(tmp_path, capsys, flag, value, needle):
    code = cli.main(["trace", "--rule", "bp", "--model", "mlp:4-3-2", "--out",
                     str(tmp_path / "t.npz"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "t.npz").exists()


@pytest.mark.parametrize("where,needle", [("dir", "is a folder"), ("missing", "does not exist")])
def test_trace_out_that_cannot_be_written_is_one_line(tmp_path, capsys, where, needle):
    out = tmp_path if where == "dir" else tmp_path / "no" / "t.npz"
    code = cli.main(["trace", "--rule", "bp", "--model", "mlp:4-3-2", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err
