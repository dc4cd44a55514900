"""Grading tests for chapter 11 (validating an implementation): ``pytest -m ch11``.

``check.trace_compare`` (Task 11.1) against an oracle written element by element in Python
floats, and the check's reference against what ``verify_trace`` reports on real trace files.
"""
import math

import numpy as np
import pytest

from ccledu import check


def oracle_compare(theirs, ours, rtol, atol):
    rows = []
    for name in ours:
        if name not in theirs:
            continue
        a, b = np.asarray(theirs[name], dtype=np.float64), np.asarray(ours[name], dtype=np.float64)
        if a.shape != b.shape:
            rows.append((name, math.inf, math.inf, False))
            continue
        max_abs = max_rel = 0.0
        ok = True
        for ai, bi in zip(a.ravel().tolist(), b.ravel().tolist()):
            d = abs(ai - bi)
            max_abs = max(max_abs, d)
            max_rel = max(max_rel, d / max(abs(bi), atol / rtol))
            ok = ok and d <= atol + rtol * abs(bi)
        rows.append((name, max_abs, max_rel, ok))
    first = next((r[0] for r in rows if not r[3]), None)
    return rows, first


def package_compare(theirs, ours, rtol, atol):
    """(rows, first) from :func:`ccledu.trace.compare`, as ``ccledu verify`` computes them."""
    from ccledu.trace import compare
    rows = [tuple(compare(name, theirs[name], b, rtol, atol)) for name, b in ours.items()
            if name in theirs]
    return rows, next((r[0] for r in rows if not r[3]), None)


@pytest.mark.ch11
def test_reference_matches_elementwise_oracle():
    check.trace_compare(package_compare, reference=oracle_compare, verbose=False, poison=False)


@pytest.mark.ch11
def test_wrong_comparisons_are_caught():
    def rel_to_theirs(theirs, ours, rtol, atol):
        return oracle_compare(ours, {k: theirs[k] for k in ours if k in theirs}, rtol, atol)

    def order_of_theirs(theirs, ours, rtol, atol):
        return oracle_compare(theirs, {k: ours[k] for k in theirs if k in ours}, rtol, atol)

    def no_atol_floor(theirs, ours, rtol, atol):
        rows, first = oracle_compare(theirs, ours, rtol, 0.0)
        return rows, first

    for wrong in (rel_to_theirs, order_of_theirs, no_atol_floor):
        with pytest.raises(AssertionError):
            check.trace_compare(wrong, verbose=False)


@pytest.mark.ch11
@pytest.mark.parametrize("rule,spec", [("ccl", "mlp:12-10-8-5"), ("bp", "cnn:2x6x6-c3-4"),
                                       ("ff", "mlp:16-8-3")])
def test_reference_agrees_with_verify_trace(tmp_path, rule, spec):
    from ccledu.trace import read_trace, rebuild, run_step, verify_trace, write_trace

    path = tmp_path / "t.npz"
    write_trace(path, rule=rule, model_spec=spec, batch_size=4, seed=2, dtype="float64")
    meta, arrays = read_trace(path)
    key = next(k for k in arrays if k.startswith("grad/"))
    arrays[key] = arrays[key] * (1 + 1e-4)
    np.savez(path, meta=np.array(__import__("json").dumps(meta)), **arrays)
    report = verify_trace(path)

    meta, arrays = read_trace(path)
    model, r = rebuild(meta)
    model.load_parameters({k[6:]: v for k, v in arrays.items() if k.startswith("param/forward.")})
    own = dict(r.parameters())
    own.update(r.buffers())
    for k, v in arrays.items():
        if k.startswith("param/") and k[6:] in own:
            own[k[6:]][...] = v
    _, ours = run_step(model, r, arrays["x"], arrays["y"], meta["optimizer"],
                       negative_labels=arrays.get("input/negative_labels"))
    rows, first = package_compare(arrays, ours, report.rtol, report.atol)
    assert [tuple(x) for x in report] == rows
    assert first == key == report[report.first_mismatch].tensor


# --------------------------------------------------------------------------------------------
# Task 11.2 (derived): the predicted size of the rounding error of a sum
# --------------------------------------------------------------------------------------------

@pytest.mark.ch11
def test_sum_rounding_oracle_sums_left_to_right_and_measures_exactly():
    """The check's oracle: its sums are the left-to-right sums with every addition rounded in
    the dtype (a scalar loop in NumPy's float32 / float64), and its exact sums are exact."""
    from fractions import Fraction
    from ccledu.check.ch11 import _measured_sd, _sequential_sums

    g = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        X = (g.standard_normal((3, 50)) * 10.0 ** g.integers(-3, 4, (3, 50))).astype(dtype)
        for row, got in zip(X, _sequential_sums(X)):
            s = row[0]
            for v in row[1:]:
                s = dtype(s + v)
            assert got == s and got.dtype == dtype
        err = [float(Fraction(float(s)) - sum(Fraction(float(v)) for v in row))
               for row, s in zip(X, _sequential_sums(X))]
        assert _measured_sd(X) == pytest.approx(math.sqrt(np.mean(np.square(err))), rel=1e-12)


@pytest.mark.ch11
def test_sum_rounding_reference_passes_the_graded_seeds():
    from conftest import load_solutions
    sd = load_solutions("11_validating")["my_sum_error_sd"]
    for seed in (0, 142):           # the graded cell's seeds
        check.sum_rounding_sd(sd, seed=seed, verbose=False)
