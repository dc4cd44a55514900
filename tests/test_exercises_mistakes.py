"""Every notebook check catches the mistakes its task warns about, refuses a solution that calls
ccledu's own implementation or the check's oracle (with a message saying so), and cannot be
faked by a student cell that replaces it.

Each mistake below is a small, plausible variant of the chapter's reference solution (loaded from
the notebook itself); it must fail the check with an ``AssertionError``.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ccledu import check
from conftest import load_solutions

ROOT = Path(__file__).resolve().parent.parent


def _elu(z):
    return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))


def _dsig(z):
    return np.where(z > 0, 1.0, np.exp(np.minimum(z, 0)))


def _ch(name):
    return load_solutions(name)


# (check name, chapter, mistakes: {label: function})
def _mistakes():
    c1, c2, c3, c4 = (_ch("01_backprop"), _ch("02_convolutions"), _ch("03_feedback_alignment"),
                      _ch("04_direct_feedback_alignment"))
    c5, c6, c7, c8 = _ch("05_ccl_mlp"), _ch("06_ccl_cnn"), _ch("07_ccl_autoencoder"), _ch("08_forward_forward")
    c9, c10, c11 = _ch("09_comparing_rules"), _ch("10_gpu"), _ch("11_validating")
    sum_sd = c11["my_sum_error_sd"]

    def _u(x):
        return np.finfo(x.dtype).eps / 2

    def _h(x, sums=None):
        s = np.cumsum(x) if sums is None else sums
        return np.spacing(np.abs(s[1:])).astype(np.float64)

    def sum_sd_measured(x):          # this vector's own error, not a prediction
        return abs(float(np.cumsum(x)[-1]) - __import__("math").fsum(x.astype(np.float64).tolist()))

    def im2col_no_stride(x, kh, kw, stride, pad):
        N, C, H, W = x.shape
        oh, ow = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
        xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        col = np.empty((N, C, kh, kw, oh, ow))
        for i in range(kh):
            for j in range(kw):
                col[:, :, i, j] = xpad[:, :, i:i + oh, j:j + ow]
        return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * oh * ow, C * kh * kw)

    def col2im_assign(cols, x_shape, kh, kw, stride, pad):
        N, C, H, W = x_shape
        oh, ow = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
        col = cols.reshape(N, oh, ow, C, kh, kw).transpose(0, 3, 4, 5, 1, 2)
        img = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
        for i in range(kh):
            for j in range(kw):
                img[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] = col[:, :, i, j]
        return img[:, :, pad:pad + H, pad:pad + W]

    def conv_backward_wrong_order(x, W, dy, stride, pad):
        F, C, k, _ = W.shape
        cols = c2["my_im2col"](x, k, k, stride, pad)
        dY = dy.reshape(-1, F)                                  # (N, F, OH, OW) order, not im2col's
        return (dY.T @ cols).reshape(W.shape), c2["my_col2im"](dY @ W.reshape(F, -1), x.shape, k, k, stride, pad)

    def fa_through_w(model, B, x, y):
        W = [None] + [blk.main.params["weight"] for blk in model.blocks[1:]]
        return c3["my_fa_gradients"](model, W, x, y)

    pair = c5["my_pair_loss"]
    cnn = c6["my_cnn_pair"]
    ae = c7["my_ae_pair"]
    ff = c8["my_ff_layer_grad"]

    def cka_uncentred(X, Y):
        return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))

    def cka_rows_centred(X, Y):
        return cka_uncentred(X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True))

    def angle_unclipped(a, b):
        a, b = a.ravel(), b.ravel()
        return float(np.degrees(np.arccos(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))))

    def softmax_no_shift(z):
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def softmax_upcast(z):
        e = np.exp(z.astype(np.float64) - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def ff_naive_softplus(h, sign, theta):
        N = h.shape[0] // 2
        g = (h.reshape(len(h), -1) ** 2).sum(axis=1)
        t = sign * (theta - g)
        loss = np.log(1 + np.exp(t)).sum() / N
        dh = 2 * (-sign / (1 + np.exp(-t)) / N).reshape((-1,) + (1,) * (h.ndim - 1)) * h
        return loss, dh

    def ff_last_axis(h, sign, theta):
        N = h.shape[0] // 2
        g = (h ** 2).sum(axis=-1)                               # not over all trailing axes
        t = sign.reshape((-1,) + (1,) * (h.ndim - 2)) * (theta - g)
        loss = np.logaddexp(0, t).sum() / N
        s = 1 / (1 + np.exp(-t))
        return loss, 2 * (-sign.reshape(s.shape[:1] + (1,) * (s.ndim - 1)) * s / N)[..., None] * h

    return [
        ("linear_backward", {
            "dW transposed (x.T @ dy)": lambda x, W, dy: ((x.T @ dy), dy @ W),
            "divided by N again": lambda x, W, dy: (dy.T @ x / len(x), dy @ W / len(x)),
            "dx through W.T": lambda x, W, dy: (dy.T @ x, dy @ W.T)}),
        ("elu_grad", {
            "e^z for all z": lambda z: np.exp(np.minimum(z, 50)),
            "ReLU-like 0 for z < 0": lambda z: (z > 0).astype(float),
            "the function itself for z < 0": lambda z: np.where(z > 0, 1.0, np.expm1(np.minimum(z, 0)))}),
        ("im2col", {"stride ignored": im2col_no_stride}),
        ("col2im", {"assignment instead of +=": col2im_assign}),
        ("conv_backward", {"dy flattened in (N, F, OH, OW) order": conv_backward_wrong_order}),
        ("fa_delta", {
            "Bᵀ instead of B": lambda d, B, z: (d @ B.T) * _dsig(z),
            "σ' forgotten": lambda d, B, z: d @ B,
            "σ(z) instead of σ'(z)": lambda d, B, z: (d @ B) * _elu(z)}),
        ("fa_gradients", {"the error sent down through W (backprop)": fa_through_w}),
        ("sign_symmetry_cos", {
            "√(2/π) for every distribution": lambda W: float(np.sqrt(2 / np.pi)),
            "sign(0) = 0 forgotten": lambda W: float(np.mean(np.abs(W)) / np.sqrt(np.mean(W ** 2))),
            "squared cosine": lambda W: c3["my_sign_symmetry_cos"](W) ** 2,
            "ratio that depends on the scale": lambda W: float(np.mean(np.abs(W)) / np.mean(W ** 2)),
            "angle in degrees": lambda W: float(np.degrees(np.arccos(c3["my_sign_symmetry_cos"](W)))),
            "FA's 0 (B independent of W)": lambda W: 0.0}),
        ("dfa_update", {
            "σ' at a_prev": lambda e, D, a, W: ((e @ D.T) * _dsig(a)).T @ a,
            "transposed result": lambda e, D, a, W: a.T @ ((e @ D.T) * _dsig(a @ W.T))}),
        ("ccl_mlp_pair", {
            "mean over N only": lambda A, S, Y, lam: tuple(v * Y.shape[1] for v in pair(A, S, Y, lam)),
            "factor 2 dropped": lambda A, S, Y, lam: (lambda r: (r[0], r[1] / 2, r[2] / 2))(pair(A, S, Y, lam)),
            "256/d left out": lambda A, S, Y, lam: tuple(v * A.shape[1] / 256 for v in pair(A, S, Y, lam))}),
        ("row_normalize_backward", {
            "norm treated as a constant": lambda X, dU, eps=1e-8: dU / (np.linalg.norm(X, axis=1, keepdims=True) + eps),
            "division by r = 0 on the zero row": lambda X, dU, eps=1e-8: (
                lambda r, U: dU / (r + eps) - U * np.sum(U * dU, 1, keepdims=True) / r)(
                np.linalg.norm(X, axis=1, keepdims=True), X / (np.linalg.norm(X, axis=1, keepdims=True) + eps))}),
        ("ccl_cnn_pair", {
            "normalisation backward skipped": lambda A, S, Y, s_c, s_ssl, eps=1e-8: (
                lambda r: (r[0], r[1] * (np.linalg.norm(A, axis=1, keepdims=True) + eps),
                           r[2] * (np.linalg.norm(S, axis=1, keepdims=True) + eps)))(cnn(A, S, Y, s_c, s_ssl)),
            "s_c and s_ssl swapped": lambda A, S, Y, s_c, s_ssl, eps=1e-8: cnn(A, S, Y, s_ssl, s_c)}),
        ("ae_pair", {
            "factor H missing": lambda A, B, sc, sd, eps=1e-8: tuple(v / A.shape[2] for v in ae(A, B, sc, sd)),
            "dB = dA": lambda A, B, sc, sd, eps=1e-8: (lambda r: (r[0], r[1], r[1]))(ae(A, B, sc, sd))}),
        ("ff_layer_grad", {
            "no factor 2": lambda h, s, t: (lambda r: (r[0], r[1] / 2))(ff(h, s, t)),
            "mean over all 2N rows": lambda h, s, t: tuple(v / 2 for v in ff(h, s, t)),
            "softplus that overflows": ff_naive_softplus,
            "goodness over the last axis only": ff_last_axis}),
        ("linear_cka", {"no centring": cka_uncentred, "rows centred": cka_rows_centred}),
        ("angle", {"unclipped cosine": angle_unclipped,
                   "radians": lambda a, b: np.radians(c9["my_angle"](a, b))}),
        ("backend_softmax", {"no max shift (overflow)": softmax_no_shift, "upcast to float64": softmax_upcast}),
        ("sum_rounding_sd", {
            "full spacing h_k": lambda x: 2 * sum_sd(x),
            "variance h_k²/3": lambda x: float(np.sqrt(np.sum(_h(x) ** 2) / 3)),
            "spacing of the addend x_k": lambda x: float(np.sqrt(np.sum(_h(x, np.abs(x)) ** 2) / 12)),
            "worst case Σ h_k/2": lambda x: float(np.sum(_h(x) / 2)),
            "rule of thumb √n·u·|S_n|": lambda x: float(np.sqrt(len(x)) * _u(x) * abs(np.sum(x, dtype=np.float64))),
            "e_k uniform on ±u·ŝ_k": lambda x: float(np.sqrt(np.sum((_u(x) * np.cumsum(x)[1:].astype(np.float64)) ** 2) / 3)),
            "spacings of a float64 sum": lambda x: sum_sd(x.astype(np.float64)),
            "the vector's own measured error": sum_sd_measured}),
    ]


MISTAKES = [(name, label, fn) for name, ms in _mistakes() for label, fn in ms.items()]


@pytest.mark.parametrize("name,label,fn", MISTAKES, ids=[f"{n}: {l}" for n, l, _ in MISTAKES])
def test_warned_about_mistake_is_caught(name, label, fn):
    """A wrong result fails the comparison (AssertionError); a wrong shape may already fail in the
    student's own matrix product (ValueError): both give the graded cell 0 points."""
    with np.errstate(all="ignore"), pytest.raises((AssertionError, ValueError)):
        check.CHECKS[name](fn, verbose=False)


# --------------------------------------------------------------------------------------------
# Calling the reference, or the oracle, is refused with a message
# --------------------------------------------------------------------------------------------

def _trace_cheat(theirs, ours, rtol, atol):
    from ccledu.trace import compare
    rows = [tuple(compare(k, theirs[k], v, rtol, atol)) for k, v in ours.items() if k in theirs]
    return rows, next((r[0] for r in rows if not r[3]), None)


def _cheats():
    from ccledu.layers import Linear, activate, activation_grad
    from ccledu.im2col import im2col
    from ccledu.metrics import angle, linear_cka
    from ccledu.losses import softmax
    from ccledu.rules.ccl import MLP_WIDTH_REF, match_loss
    from ccledu.check.ch01 import _fd_linear_backward
    from ccledu.check.ch05 import _fd_ccl_mlp_pair
    from ccledu.check.ch03 import _measured_sign_cos
    from ccledu.check.ch11 import _measured_sd, _sequential_sums as _seq_sums

    def linear_via_layer(x, W, dy):
        layer = Linear(W.shape[1], W.shape[0], bias=False, dtype=W.dtype)
        layer.params["weight"] = W
        layer.forward(x)
        dx = layer.backward(dy)
        return layer.grads["weight"], dx

    saved = match_loss                                   # a reference saved before the check runs
    return [
        ("linear_backward", "the package's Linear", linear_via_layer, "ccledu.layers.Linear"),
        ("linear_backward", "the check's oracle", lambda x, W, dy: _fd_linear_backward(x, W, dy), "ccledu.check"),
        ("elu_grad", "activation_grad", lambda z: activation_grad("elu", z, activate("elu", z)), "activation_grad"),
        ("im2col", "ccledu.im2col.im2col", lambda x, kh, kw, s, p: im2col(x, kh, kw, s, p), "ccledu.im2col.im2col"),
        ("ccl_mlp_pair", "a saved match_loss", lambda A, S, Y, lam: saved(A, S, Y, lam * MLP_WIDTH_REF / A.shape[1]),
         "ccledu.rules.ccl.match_loss"),
        ("ccl_mlp_pair", "the check's oracle", lambda A, S, Y, lam: _fd_ccl_mlp_pair(A, S, Y, lam), "ccledu.check"),
        ("ccl_mlp_pair", "ccledu.testing's finite differences",
         lambda A, S, Y, lam: __import__("ccledu.testing", fromlist=["x"]).numerical_gradient(lambda: 0.0, A.copy()),
         "numerical_gradient"),
        ("linear_cka", "ccledu.metrics.linear_cka", lambda X, Y: linear_cka(X, Y), "ccledu.metrics.linear_cka"),
        ("angle", "ccledu.metrics.angle", lambda a, b: angle(a, b), "ccledu.metrics.angle"),
        ("backend_softmax", "ccledu.losses.softmax", lambda z: softmax(z), "ccledu.losses.softmax"),
        ("trace_compare", "ccledu.trace.compare (re-exported)", _trace_cheat, "ccledu.trace.compare"),
        ("sign_symmetry_cos", "the check's measurement", lambda W: _measured_sign_cos(W, 0), "ccledu.check"),
        ("sum_rounding_sd", "the check's sequential sum",
         lambda x: abs(float(_seq_sums(x[None, :])[0]) - float(np.sum(x, dtype=np.float64))), "ccledu.check"),
        ("sum_rounding_sd", "the check's measurement", lambda x: _measured_sd(x[None, :]), "ccledu.check"),
    ]


CHEATS = _cheats()


@pytest.mark.parametrize("name,label,fn,named", CHEATS, ids=[f"{n}: {l}" for n, l, _, _ in CHEATS])
def test_calling_the_reference_fails_with_a_message(name, label, fn, named):
    with pytest.raises(AssertionError, match="your function calls") as info:
        sys.modules["ccledu.check"].CHECKS[name](fn, verbose=False)
    assert type(info.value).__name__ == "ReferenceCalled" and named in str(info.value)


def test_poison_is_lifted_after_the_check():
    from ccledu.metrics import angle
    with pytest.raises(AssertionError, match="your function calls"):
        check.angle(lambda a, b: angle(a, b), verbose=False)
    assert angle(np.ones(3), np.ones(3)) == 0.0                     # callable again
    check.angle(load_solutions("09_comparing_rules")["my_angle"], verbose=False)


def test_a_check_replaced_by_a_student_cell_does_not_fool_the_grade_cell():
    """Run a chapter's graded cell after a 'student cell' that replaced the check (in the
    package and in sys.modules) and left the stub: the graded cell still fails."""
    cells = json.loads((ROOT / "chapters" / "05_ccl_mlp.ipynb").read_text())["cells"]
    grade = next("".join(c["source"]) for c in cells
                 if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") == "check-5-1")
    import types
    import ccledu.check as real

    def stub(A, S, Y, lam):
        raise NotImplementedError("Task 5.1")

    saved = dict(sys.modules)
    try:
        real.ccl_mlp_pair = lambda *a, **k: print("✓")              # the student cell
        fake = types.ModuleType("ccledu.check")
        fake.ccl_mlp_pair = real.ccl_mlp_pair
        sys.modules["ccledu.check"] = fake
        with pytest.raises(NotImplementedError):
            exec(compile(grade, "check-5-1", "exec"), {"my_pair_loss": stub})
    finally:
        for k in [k for k in sys.modules if k.startswith("ccledu.check") or k.startswith("ccledu.testing")]:
            del sys.modules[k]
        sys.modules.update({k: v for k, v in saved.items() if k.startswith(("ccledu.check", "ccledu.testing"))})
        import importlib
        import ccledu
        importlib.reload(real)
        ccledu.check = real
