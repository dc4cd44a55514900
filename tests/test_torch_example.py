"""examples/torch_verify_ccl.py: an independent PyTorch CCL agrees with ccledu's traces."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ccledu import cli  # noqa: E402
from ccledu.trace import verify_trace, write_trace  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "torch_verify_ccl.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("torch_verify_ccl", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_does_not_import_ccledu():
    import ast
    tree = ast.parse(EXAMPLE.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.split(".")[0] == "ccledu" for m in modules), modules


@pytest.mark.parametrize("spec, options, optimizer", [
    ("mlp:12-10-8-5", {}, {}),                                        # mlp form, plain SGD, clip 1
    ("cnn:2x8x8-c3-c4-5", {}, {}),                                    # cnn form, CIFAR-10 defaults
    ("cnn:2x8x8-c3-c4-5", {"flood": 0.8, "ssl_scale": 0.3},           # 4 of 6 rows flooded
     {"momentum": 0.5, "weight_decay": 1e-2, "warmup": 3, "step": 1, "clip": 0.05}),
    ("mlp:12-10-8-5", {"form": "cnn", "feedback_activation": "tanh"}, {"centralize": True}),
], ids=["mlp", "cnn", "cnn-flood-opt", "mlp-cnnform-tanh"])
def test_torch_agrees(example, tmp_path, capsys, spec, options, optimizer):
    trace = tmp_path / "ccl.npz"
    write_trace(trace, "ccl", spec, 6, seed=5, dtype="float64", rule_options=options,
                optimizer=optimizer)
    mine = tmp_path / "torch.npz"
    code = example.main([str(trace), "--write-trace", str(mine)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK" in out and "NO" not in out.split()
    # the PyTorch results, written as a trace, pass ccledu verify
    report = verify_trace(mine)
    assert report.ok, report.summary()
    assert len(report) > 10 and not report.missing
    assert cli.main(["verify", str(mine)]) == 0


def test_torch_detects_a_tampered_gradient(example, tmp_path, capsys):
    trace = tmp_path / "ccl.npz"
    write_trace(trace, "ccl", "cnn:2x8x8-c3-c4-5", 4, seed=1)
    with np.load(trace) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["grad/feedback.1.weight"] = arrays["grad/feedback.1.weight"] + 1e-4
    np.savez(trace, **arrays)
    assert example.main([str(trace)]) == 1
    assert "grad/feedback.1.weight" in capsys.readouterr().out
