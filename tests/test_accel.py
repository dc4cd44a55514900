"""ccledu.accel: kernels with several implementations, chosen by measurement, never at the
default's expense unless an alternative wins by the margin; forced choices; same results."""
import time

import numpy as np
import pytest

from ccledu import accel


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.delenv("CCLEDU_KERNELS", raising=False)
    monkeypatch.setattr(accel, "_chosen", {})


def _fake_kernel(monkeypatch, default_s, alt_s):
    """Register a kernel 'fake' whose candidates sleep for the given times."""
    def sleeper(s):
        def fn(a):
            time.sleep(s)
            return a
        return fn
    kernels = dict(accel._KERNELS)
    kernels["fake"] = ({"default": sleeper(default_s), "alt": sleeper(alt_s)},
                       lambda: np.zeros(4, np.float32))
    monkeypatch.setattr(accel, "_KERNELS", kernels)


def test_alternative_chosen_only_when_it_wins_by_the_margin(monkeypatch):
    _fake_kernel(monkeypatch, default_s=0.004, alt_s=0.0)
    assert accel.choose("fake") == "alt"
    rec = accel.choices()["fake"]
    assert rec["ms"]["default"] >= 4.0 and rec["ms"]["alt"] < rec["ms"]["default"] / accel.MARGIN
    accel.reset()
    # 1.33x faster is not enough: the plain default stays
    _fake_kernel(monkeypatch, default_s=0.002, alt_s=0.0015)
    assert accel.choose("fake") == "default"
    # the choice is cached for the process: a second call does not measure again
    _fake_kernel(monkeypatch, default_s=1.0, alt_s=0.0)
    t = time.perf_counter()
    assert accel.choose("fake") == "default"
    assert time.perf_counter() - t < 0.1


def test_forced_choices_and_clear_errors(monkeypatch):
    monkeypatch.setenv("CCLEDU_KERNELS", "default")
    assert accel.choose("expm1_nonpositive") == "default"
    assert accel.choices()["expm1_nonpositive"]["why"] == "forced by CCLEDU_KERNELS"
    accel.reset()
    monkeypatch.setenv("CCLEDU_KERNELS", "expm1_nonpositive=poly")
    assert accel.choose("expm1_nonpositive") == "poly"
    accel.reset()
    monkeypatch.setenv("CCLEDU_KERNELS", "expm1_nonpositive=magic")
    with pytest.raises(ValueError, match=r"no candidate 'magic'.*'default', 'poly'"):
        accel.choose("expm1_nonpositive")
    monkeypatch.setenv("CCLEDU_KERNELS", "poly")
    with pytest.raises(ValueError, match="not 'kernel=candidate'"):
        accel.choose("expm1_nonpositive")


def test_expm1_candidates_agree_and_float64_is_never_measured():
    x = -np.concatenate([np.linspace(0, 40, 20_001), [np.inf]])
    exact = np.expm1(x)
    for cand, fn in accel._KERNELS["expm1_nonpositive"][0].items():
        got = fn(x.astype(np.float32))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, exact.astype(np.float32), rtol=3 * 2.0 ** -23, atol=1e-38,
                                   err_msg=cand)
    # float64 goes straight to xp.expm1 (bit-for-bit), without a measurement
    out = accel.expm1_nonpositive(x.copy())
    assert np.array_equal(out, exact)
    assert "expm1_nonpositive" not in accel.choices()
    accel.expm1_nonpositive(np.zeros(3, np.float32))
    rec = accel.choices()["expm1_nonpositive"]
    assert rec["use"] in ("default", "poly") and set(rec["ms"]) == {"default", "poly"}
