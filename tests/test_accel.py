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
    monkeypatch.setattr(accel, "_tiles", {})


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


@pytest.mark.parametrize("layout", ["nchw", "channel-major"])
def test_blocked_maxpool_is_bit_identical_to_whole(monkeypatch, layout):
    """Max-pool forward/backward on cache-sized blocks equals the whole-array tap loop exactly,
    ties (first tap wins), a dropped remainder row/column and both memory layouts included."""
    from ccledu.layers import MaxPool2d
    g = np.random.default_rng(3)
    N, C, H, W = 24, 20, 31, 29                       # 1.7 MB float32: several 256 KB blocks
    x = np.round(g.standard_normal((C, N, H, W)), 1).astype(np.float32)   # many ties
    x = x.transpose(1, 0, 2, 3) if layout == "channel-major" else np.ascontiguousarray(x.transpose(1, 0, 2, 3))
    out = {}
    for cand in ("whole", "blocks", "threads", "threads+blocks"):
        monkeypatch.setenv("CCLEDU_THREADS", "3")      # 3 pieces at once, even on a 2-core machine
        monkeypatch.setenv("CCLEDU_KERNELS", f"maxpool_forward={cand},maxpool_backward={cand}")
        accel.reset()
        pool = MaxPool2d(2)
        y = pool.forward(x)
        dy = np.asarray(g.standard_normal(y.shape), dtype=np.float32) if cand == "whole" else dy
        out[cand] = (y.copy(), pool.backward(dy).copy())
        label = accel._size_label(int(x.nbytes).bit_length())          # "1MB": x is 1.7 MB
        assert accel.choices()[f"maxpool_backward@{label}"]["use"] == cand
    assert len(accel.split_blocks((x,))) > 4
    for cand in ("blocks", "threads", "threads+blocks"):
        for a, b in zip(out["whole"], out[cand]):
            assert a.tobytes() == b.tobytes(), cand
    # each window routes its gradient to exactly one position (the remainder gets none)
    dx = out["whole"][1]
    assert np.all(dx[:, :, 30, :] == 0) and np.all(dx[:, :, :, 28] == 0)
    assert np.count_nonzero(dx[:, :, :30, :28]) == np.count_nonzero(dy)


def test_tiles_measure_their_first_calls_then_keep_one(monkeypatch):
    """Without a forced choice, the first TRIALS calls of each candidate alternate (after one
    warm-up call); then one is kept (and recorded) for that kernel and input size."""
    monkeypatch.setenv("CCLEDU_THREADS", "2")
    x = np.zeros((8, 64, 32, 32), np.float32)          # 2 MB
    seen = []

    def body(a):
        seen[-1].append(a.shape)
        a += 1                                          # the views write into x

    cands = accel._tile_candidates()
    assert cands == ("whole", "blocks", "threads", "threads+blocks")
    for _ in range(1 + len(cands) * accel.TRIALS + 3):
        seen.append([])
        accel.run_tiles("demo", body, x)
    assert np.all(x == len(seen))                       # every element once per call
    pieces = [len(s) for s in seen[1:1 + len(cands) * accel.TRIALS]]
    assert pieces.count(1) == accel.TRIALS              # "whole": one call of the body
    assert pieces.count(2) == accel.TRIALS              # "threads": one piece per thread
    assert len({len(s) for s in seen[1 + len(cands) * accel.TRIALS:]}) == 1
    rec = accel.choices()["demo@2MB"]
    assert rec["use"] in cands and set(rec["ms"]) == set(cands)
    # small arrays always run whole, with nothing recorded
    seen.append([])
    accel.run_tiles("demo", body, np.zeros((2, 2, 8, 8), np.float32))
    assert len(seen[-1]) == 1
    assert list(accel.choices()) == ["demo@2MB"]
    # one thread: the "threads" candidates are not tried
    monkeypatch.setenv("CCLEDU_THREADS", "1")
    assert accel._tile_candidates() == ("whole", "blocks")
    monkeypatch.setenv("CCLEDU_KERNELS", "demo1=threads")    # forcing what 1 thread cannot run
    for _ in range(2):                                        # every call, not just the first
        with pytest.raises(ValueError, match="no candidate 'threads'"):
            accel.run_tiles("demo1", body, x)
    monkeypatch.setenv("CCLEDU_THREADS", "two")
    with pytest.raises(ValueError, match="CCLEDU_THREADS"):
        accel.workers()


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0)])
def test_blocked_im2col_col2im_are_bit_identical_to_whole(monkeypatch, stride, pad):
    from ccledu.im2col import col2im, im2col
    g = np.random.default_rng(4)
    x = g.standard_normal((16, 24, 20, 20)).astype(np.float32)     # 0.6 MB; cols 5 MB
    res = {}
    for cand in ("whole", "blocks", "threads", "threads+blocks"):
        monkeypatch.setenv("CCLEDU_THREADS", "3")
        monkeypatch.setenv("CCLEDU_KERNELS", f"im2col={cand},col2im={cand}")
        accel.reset()
        cols = im2col(x, 3, 3, stride, pad)
        G = np.asarray(g.standard_normal(cols.shape), np.float32) if cand == "whole" else G
        res[cand] = (np.ascontiguousarray(cols), np.ascontiguousarray(col2im(G.T.copy().T, x.shape, 3, 3, stride, pad)))
        assert {k.split("@")[0] for k in accel.choices()} >= {"col2im"}
    for cand in ("blocks", "threads", "threads+blocks"):
        for a, b in zip(res["whole"], res[cand]):
            assert a.tobytes() == b.tobytes(), cand


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_scalar_and_array_give_the_same_bits(monkeypatch, dtype):
    """Activations compare with accel.zero(z): the scalar and the array candidate give the same
    bits for max and min (NaN, ±0, ±inf included), and so the same ELU and ReLU."""
    from ccledu.layers import Activation
    z = np.array([-0.0, 0.0, np.nan, -1.5, 2.5, -np.inf, np.inf, 1e-40, -1e-40] * 50, dtype=dtype)
    out = {}
    for cand in ("default", "array"):
        monkeypatch.setenv("CCLEDU_KERNELS", f"zero={cand}")
        accel.reset()
        zz = accel.zero(z)
        assert (np.ndim(zz) == 0) == (cand == "default")
        elu, relu = Activation("elu"), Activation("relu")
        out[cand] = [np.maximum(z, zz), np.minimum(z, zz), elu.forward(z), relu.forward(z),
                     elu.backward(np.ones_like(z))]
    for a, b in zip(out["default"], out["array"]):
        assert a.tobytes() == b.tobytes()


def test_weight_grad_candidates_agree_with_the_float64_product():
    rng = np.random.default_rng(3)
    K = 3 * accel.CHUNK + 17                       # a last slice shorter than CHUNK
    a = rng.standard_normal((5, K))
    b = rng.standard_normal((7, K))
    exact = a @ b.T
    tol = 8 * 2.0 ** -24 * np.sqrt(K) * np.abs(a) @ np.abs(b).T    # float32 sums of K terms
    for cand, fn in accel._WEIGHT_GRAD.items():
        got = fn(a.astype(np.float32), b.astype(np.float32))
        assert got.dtype == np.float32 and got.shape == (5, 7)
        assert np.all(np.abs(got - exact) <= tol), f"{cand}: mine vs float64 product, max error " \
            f"{np.abs(got - exact).max():.3g}"
    # float64, and inputs with a short K, are the plain product, bit for bit, never measured
    assert np.array_equal(accel.weight_grad(a, b), exact)
    short = a[:, :2 * accel.CHUNK - 1].astype(np.float32), b[:, :2 * accel.CHUNK - 1].astype(np.float32)
    assert np.array_equal(accel.weight_grad(*short), short[0] @ short[1].T)
    assert not any(k.startswith("weight_grad") for k in accel.choices())


def test_weight_grad_measures_once_per_shape_with_the_margin(monkeypatch):
    calls = []

    def fake(name, s):
        def fn(a, b):
            calls.append(name)
            time.sleep(s)
            return np.full((a.shape[0], b.shape[0]), len(name), np.float32)
        return fn
    monkeypatch.setattr(accel, "_WEIGHT_GRAD", {"default": fake("default", 0.004),
                                                "chunked": fake("chunked", 0.0)})
    a = np.zeros((2, 2 * accel.CHUNK), np.float32)
    b3, b4 = np.zeros((3, a.shape[1]), np.float32), np.zeros((4, a.shape[1]), np.float32)
    out = accel.weight_grad(a, b3)
    assert np.all(out == len("chunked"))           # the chosen candidate's result is returned
    rec = accel.choices()[f"weight_grad@2x3x{2 * accel.CHUNK}"]
    assert rec["use"] == "chunked" and rec["ms"]["default"] >= 4.0
    calls.clear()
    accel.weight_grad(a, b3)                       # chosen: no more measuring
    assert calls == ["chunked"]
    # a candidate only 1.33x faster does not replace the default
    monkeypatch.setattr(accel, "_WEIGHT_GRAD", {"default": fake("default", 0.004),
                                                "chunked": fake("chunked", 0.003)})
    assert np.all(accel.weight_grad(a, b4) == len("default"))


def test_weight_grad_forced_and_clear_errors(monkeypatch):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 2 * accel.CHUNK + 5)).astype(np.float32)
    b = rng.standard_normal((4, 2 * accel.CHUNK + 5)).astype(np.float32)
    monkeypatch.setenv("CCLEDU_KERNELS", "weight_grad=chunked")
    assert np.array_equal(accel.weight_grad(a, b), accel._wg_chunked(a, b))
    assert accel.choices()[f"weight_grad@3x4x{a.shape[1]}"]["why"] == "forced by CCLEDU_KERNELS"
    accel.reset()
    monkeypatch.setenv("CCLEDU_KERNELS", "default")
    assert np.array_equal(accel.weight_grad(a, b), a @ b.T)
    accel.reset()
    monkeypatch.setenv("CCLEDU_KERNELS", "weight_grad=fast")
    with pytest.raises(ValueError, match=r"'weight_grad' has no candidate 'fast'.*'default', 'chunked'"):
        accel.weight_grad(a, b)


def test_conv_weight_gradient_with_either_candidate_matches_float64(monkeypatch):
    """Conv2d's ∇W through weight_grad: a float32 input whose K (= N·OH·OW) spans several
    slices gives, with either candidate, the float64 gradient within float32 rounding."""
    from ccledu.layers import Conv2d
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 2, 16, 16))                    # K = 24·16·16 = 6144 positions
    dy = rng.standard_normal((24, 3, 16, 16))
    ref = Conv2d(2, 3, 3, padding=1, dtype="float64", seed=1)
    ref.forward(x)
    ref.backward(dy, need_dx=False)
    for cand in ("default", "chunked"):
        accel.reset()
        monkeypatch.setenv("CCLEDU_KERNELS", f"weight_grad={cand}")
        conv = Conv2d(2, 3, 3, padding=1, dtype="float32", seed=1)
        conv.forward(x.astype(np.float32))
        conv.backward(dy.astype(np.float32), need_dx=False)
        assert accel.choices()["weight_grad@3x18x6144"]["use"] == cand
        np.testing.assert_allclose(conv.grads["weight"], ref.grads["weight"], rtol=1e-4,
                                   atol=1e-4 * np.abs(ref.grads["weight"]).max(), err_msg=cand)


def test_settled_once_every_tile_choice_is_made(monkeypatch):
    """accel.settled() is False while a tap loop's first calls are still timing candidates,
    True once it has chosen (speed.py warms a step up until then)."""
    monkeypatch.setattr(accel, "BLOCK_BYTES", 1024)
    x = np.random.default_rng(0).standard_normal((8, 4, 16, 16)).astype(np.float32)
    y = np.empty((8, 4, 8, 8), np.float32)

    def body(x, y):
        y[...] = x[:, :, ::2, ::2]
    assert accel.settled()                                # nothing measured yet
    accel.run_tiles("fake_pool", body, x, y)
    assert not accel.settled()
    calls = 1
    while not accel.settled():
        accel.run_tiles("fake_pool", body, x, y)
        calls += 1
        assert calls < 100
    assert calls == 1 + accel.TRIALS * len(accel._tile_candidates())
