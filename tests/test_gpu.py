"""The CuPy path: kernel code free of NumPy-only calls (checked everywhere), and, where a GPU is
usable, NumPy-vs-CuPy parity for every rule × {MLP, CNN} and no hidden host↔device copies in a
training step."""
import ast
from pathlib import Path

import numpy as np
import pytest

from ccledu.backend import cupy_available, to_numpy, use
from ccledu.models import build_model
from ccledu.optim import Optimizer, ParamGroup
from ccledu.rules import get_rule

PKG = Path(__file__).resolve().parents[1] / "ccledu"

#: modules whose functions run on the training device
KERNEL_MODULES = ["im2col.py", "layers.py", "losses.py", "models.py", "optim.py",
                  "rules/base.py", "rules/bp.py", "rules/fa.py", "rules/dfa.py", "rules/ccl.py",
                  "rules/ff.py", "rules/autoencoder.py"]
#: numpy names that are fine in kernels: host RNG, dtypes, shape arithmetic, isinstance checks
ALLOWED = {"random", "dtype", "prod", "floating", "integer", "ndarray", "float32", "float64",
           "int64", "pi", "generic", "int32",
           "errstate"}                     # silences NumPy warnings; no effect on CuPy arrays
#: functions that run on the host by design (documented in their docstrings)
HOST_FUNCTIONS = {
    ("rules/ff.py", "draw_negatives"),  # negative labels drawn on the host from the seed
    ("rules/ff.py", "permuted_once"),   # the same, drawn once; host labels compared
    ("rules/ff.py", "gratings"),       # a constant label pattern, built once and cached
    ("rules/ff.py", "diagnostics"),    # per-epoch host summaries
    ("rules/ff.py", "__init__"),       # option checks on Python floats
    ("rules/ff.py", "setup"),          # host draws (normal_fan_out init, zero head), then moved
    ("optim.py", "state_dict"),        # checkpoints are host arrays
    ("rules/autoencoder.py", "evaluate_set"),          # sums read back in float64
    ("rules/autoencoder.py", "save_reconstructions"),  # a figure of host images
}
from ccledu.rules import rule_class  # noqa: E402

RULES = ["bp", "fa", "dfa", "ccl", "ff", "drtp", "dtp", "drl", "ldrl", "fwdtp", "sign", "kp",
         "ccl-ae", "bp-ae"]
SPECS = {"mlp": "mlp:12-10-8-5", "cnn": "cnn:2x8x8-c3-c4-5", "autoencoder": "autoencoder:2-3"}
MLP_ONLY = [r for r in RULES if rule_class(r).MODEL_KINDS == ("mlp",)]   # the TP rules
CASES = [(r, k) for r in RULES for k in SPECS if k in rule_class(r).MODEL_KINDS]


def _numpy_calls(path: Path, rel: str):
    tree = ast.parse(path.read_text())
    bad = []

    def visit(node, func):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == "np" and node.attr not in ALLOWED
                and (rel, func) not in HOST_FUNCTIONS):
            bad.append(f"{rel}:{node.lineno} np.{node.attr} in {func or 'module level'}()")
        for child in ast.iter_child_nodes(node):
            visit(child, func)
    visit(tree, None)
    return bad


def test_kernels_use_the_array_module_of_their_arguments():
    """Kernels pick xp = get_array_module(...); a NumPy-only call would break the CuPy path."""
    bad = []
    for rel in KERNEL_MODULES:
        bad += _numpy_calls(PKG / rel, rel)
    assert not bad, "NumPy-only calls in kernel code (use xp = get_array_module(...)):\n" + "\n".join(bad)


def test_scanner_catches_a_numpy_call(tmp_path):
    f = tmp_path / "k.py"
    f.write_text("import numpy as np\ndef kernel(x):\n    return np.exp(x)\n")
    assert _numpy_calls(f, "k.py") == ["k.py:3 np.exp in kernel()"]


def _model_and_batch(rule, kind, xp, dtype, rng):
    """(model, rule, x, y) on the current back-end; an autoencoder (MNIST-shaped) has no labels."""
    r = get_rule(rule)
    model = build_model(SPECS[kind], data="mnist", seed=1, dtype=dtype, **r.model_options())
    r.setup(model, seed=1)
    x = xp.asarray(rng.standard_normal((6,) + model.input_shape), dtype=dtype)
    y = None if model.num_classes is None else xp.asarray(rng.integers(0, model.num_classes, 6))
    return model, r, x, y


def _step_on(backend, rule, kind, dtype):
    rng = np.random.default_rng(0)
    with use(backend) as xp:
        model, r, x, y = _model_and_batch(rule, kind, xp, dtype, rng)
        opt = Optimizer([ParamGroup(n, p, lr=0.1, momentum=0.9, clip=1.0)
                         for n, p in r.param_groups(model).items()])
        res = r.step(model, x, y)
        grads = {k: to_numpy(v) for k, v in res.grads.items()}
        opt.step(res.grads)
        after = {k: to_numpy(v) for k, v in {**model.parameters(), **r.parameters()}.items()}
    return float(to_numpy(res.loss)), grads, after


gpu = pytest.mark.skipif(not cupy_available(),
                         reason="CuPy not installed or no usable GPU (cupy.is_available() is False)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("rule,kind", CASES)
def test_numpy_and_cupy_agree(rule, kind, dtype, tol):
    loss_n, g_n, a_n = _step_on("numpy", rule, kind, dtype)
    loss_c, g_c, a_c = _step_on("cupy", rule, kind, dtype)
    assert abs(loss_n - loss_c) <= tol * max(1.0, abs(loss_n))
    for k in g_n:
        np.testing.assert_allclose(g_c[k], g_n[k], rtol=tol, atol=tol * max(1e-3, np.abs(g_n[k]).max()),
                                   err_msg=f"{rule}/{kind} grad {k}")
    for k in a_n:
        np.testing.assert_allclose(a_c[k], a_n[k], rtol=tol, atol=tol, err_msg=f"{rule}/{kind} after {k}")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("rule,kind", CASES)
def test_training_step_makes_no_hidden_transfers(rule, kind, monkeypatch):
    """Count device->host copies (get, asnumpy, float/int/bool of an array, item, tolist)
    during training steps. FF draws its negative labels on the host by design: one copy of
    the labels per step."""
    import cupy as cp

    counts = {"n": 0}

    def counting(name, orig):
        def wrapper(*a, **k):
            counts["n"] += 1
            return orig(*a, **k)
        return wrapper
    for name in ("get", "item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(cp.ndarray, name, counting(name, getattr(cp.ndarray, name)))
    monkeypatch.setattr(cp, "asnumpy", counting("asnumpy", cp.asnumpy))
    rng = np.random.default_rng(0)
    with use("cupy"):
        model, r, x, y = _model_and_batch(rule, kind, cp, "float32", rng)
        opt = Optimizer([ParamGroup(n, p, lr=0.1, clip=1.0) for n, p in r.param_groups(model).items()])
        r.step(model, x, y)  # warm-up (kernel compilation may read back)
        counts["n"] = 0
        for _ in range(3):
            res = r.step(model, x, y)
            opt.step(res.grads)
        cp.cuda.Stream.null.synchronize()
    allowed = 3 if rule == "ff" else 0
    assert counts["n"] <= allowed, f"{rule}/{kind}: {counts['n']} device->host copies in 3 steps"
