"""Training FLOPs per sample, counted from the operations a rule's step actually performs.

Nothing here is a model of the cost: :func:`count_step` runs the rule's real ``step`` on one
batch with every array wrapped in :class:`Counting`, an ``ndarray`` subclass whose
``__array_ufunc__`` sees every NumPy ufunc call the code makes and tallies it:

* ``matmul`` (the ``@`` operator; every matrix product in ccledu is one): 2·m·k·n FLOPs for an
  (m, k) × (k, n) product (a multiply and an add per term), per stacked matrix;
* every other ufunc call (add, multiply, tanh, exp, comparisons, ...) and every reduction:
  one FLOP per output element (per input element for reductions).

The paper's Table 2 (Kao & Hariharan 2024) counts matrix products: with 2·m·k·n per product,
backprop on the 784-256×5-10 MLP is forward 0.931 M + ∇W 0.931 M + ∇a 0.529 M = 2.39 M per
sample, exactly its BP entry, and 25.23 M on the 3072-1024×3-10 CIFAR-10 MLP. So the headline
column is the matmul count; the element-wise count is reported beside it.

Costs that do not scale with the batch (CCL's feedback network runs on the C class one-hots,
not on the samples) are divided by the batch size like everything else: the result is the cost
of one step divided by N, at the batch size given (the paper's: 32).

Only NumPy arrays can be counted (CuPy kernels bypass ``__array_ufunc__``). Operations that
are not ufuncs (copies, reshapes, indexing, ``where``, random draws) are not counted: they move
data but do no arithmetic.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import numpy as np

__all__ = ["Counting", "FlopCounter", "count_step", "counting"]

_ACTIVE: list = []


class FlopCounter:
    """Totals of one counting session: ``matmul`` and ``elementwise`` FLOPs, ``calls`` per ufunc."""

    def __init__(self):
        self.matmul = 0
        self.elementwise = 0
        self.calls = defaultdict(int)
        self.shapes = defaultdict(int)      # (m, k, n) -> number of matmuls with those shapes

    def record(self, ufunc, method, inputs, result):
        self.calls[ufunc.__name__] += 1
        if ufunc is np.matmul and method == "__call__":
            a, b = (np.asarray(i) for i in inputs[:2])
            if a.ndim == 1:
                a = a[None, :]
            if b.ndim == 1:
                b = b[:, None]
            m, k = a.shape[-2:]
            n = b.shape[-1]
            stack = int(np.prod(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))) if max(a.ndim, b.ndim) > 2 else 1
            self.matmul += 2 * m * k * n * stack
            self.shapes[(int(m), int(k), int(n))] += stack
        elif method == "reduce" or method == "accumulate":
            self.elementwise += int(np.asarray(inputs[0]).size)
        else:
            size = int(np.size(result[0] if isinstance(result, tuple) else result))
            self.elementwise += size

    @property
    def total(self):
        return self.matmul + self.elementwise


class Counting(np.ndarray):
    """An ndarray that reports every ufunc applied to it to the active :class:`FlopCounter`.

    Results of those ufuncs are ``Counting`` again, so whatever the code computes from counted
    arrays is counted too. Use ``a.view(Counting)`` to wrap, ``a.view(np.ndarray)`` to unwrap.
    """

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        args = [i.view(np.ndarray) if isinstance(i, Counting) else i for i in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, Counting) else o for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if _ACTIVE:
            _ACTIVE[-1].record(ufunc, method, args, result)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(r.view(Counting) if isinstance(r, np.ndarray) else r for r in result)
        return result.view(Counting) if isinstance(result, np.ndarray) else result


@contextmanager
def counting():
    """``with counting() as c:`` — ufuncs on :class:`Counting` arrays inside add to ``c``."""
    c = FlopCounter()
    _ACTIVE.append(c)
    try:
        yield c
    finally:
        _ACTIVE.pop()


def _wrap_dict(d: dict):
    for k, v in list(d.items()):
        if isinstance(v, np.ndarray) and not isinstance(v, Counting):
            d[k] = v.view(Counting)


def _wrap_rule(rule):
    """Wrap every array the rule holds: dicts of arrays (fixed and trainable matrices) and the
    parameters of any layers or blocks it owns (CCL's feedback network)."""
    def visit(value, depth=0):
        if depth > 3:
            return
        if isinstance(value, dict):
            if any(isinstance(v, np.ndarray) for v in value.values()):
                _wrap_dict(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v, depth + 1)
        elif hasattr(value, "main") and hasattr(value.main, "params"):
            _wrap_dict(value.main.params)
        elif hasattr(value, "params") and isinstance(value.params, dict):
            _wrap_dict(value.params)
    for value in list(vars(rule).values()):
        visit(value)


def count_step(rule_name: str, model: str = "mlp-mnist", batch_size: int = 32, seed: int = 0,
               activation: str | None = None, rule_options: dict | None = None,
               steps: int = 1) -> dict:
    """FLOPs per training sample of ``steps`` real steps of ``rule_name`` (mean over the steps).

    The model and the rule are built as ``ccledu train`` builds them (the rule's defaults for the
    activation and its options, unless given), float64, random inputs and labels. The first
    step is counted (a rule with one-off work on its first step, such as ``pretrain_iters``,
    shows it there). Returns {"matmul", "elementwise", "total"} in FLOPs per sample, plus
    "calls" (ufunc name -> count) and "matmul_shapes" ({"m x k x n": count}).
    """
    from .models import build_model
    from .rules import rule_class
    from .train import TrainConfig, resolve

    cfg = resolve(TrainConfig(rule=rule_name, model=model, data="mnist" if "mnist" in model else "cifar10",
                              rule_options=dict(rule_options or {})))
    act = activation or cfg.activation
    net = build_model(cfg.model, data=cfg.data, activation=act, bias=bool(cfg.bias), seed=seed,
                      dtype="float64")
    rule = rule_class(rule_name)(**cfg.rule_options)
    rule.setup(net, seed=seed)
    for b in net.blocks:
        _wrap_dict(b.main.params)
    _wrap_rule(rule)
    g = np.random.default_rng(seed)
    totals = FlopCounter()
    for _ in range(int(steps)):
        x = g.standard_normal((batch_size, *net.input_shape)).view(Counting)
        y = g.integers(0, net.num_classes, batch_size)
        with counting() as c:
            rule.step(net, x, y)
        totals.matmul += c.matmul
        totals.elementwise += c.elementwise
        for k, v in c.calls.items():
            totals.calls[k] += v
        for k, v in c.shapes.items():
            totals.shapes[k] += v
    per = float(batch_size * steps)
    return {"matmul": totals.matmul / per, "elementwise": totals.elementwise / per,
            "total": totals.total / per, "calls": dict(totals.calls),
            "matmul_shapes": {f"{m}x{k}x{n}": v for (m, k, n), v in sorted(totals.shapes.items())}}
