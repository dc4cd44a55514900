"""Where the time of one training step goes: GEMM, elementwise, copies, pooling, im2col.

    python benchmarks/profile_step.py                          # mlp and cnn, every rule
    python benchmarks/profile_step.py --configs cnn --rules bp --reps 10

The step is the one ``speed.py`` times (same configs, batch sizes, optimiser). Every named kernel
of ccledu is wrapped in a timer that counts *exclusive* time (time spent in a nested wrapped call
goes to that call's category), over ``--reps`` steps after two warm-up steps:

=====================  ====================================================================
category               what it wraps
=====================  ====================================================================
linear                 ``Linear.forward`` / ``backward``: its matrix products (+ bias)
conv (GEMM + layout)   ``Conv2d.forward`` / ``backward`` without im2col/col2im: the products
                       and the (F, N, OH, OW) <-> (N, F, OH, OW) copies around them
im2col, col2im         the tap loops and their pad/transpose copies
max-pool               ``MaxPool2d.forward`` / ``backward``
upsample               ``Upsample2d`` (CCL's feedback net)
activation             ``Activation.forward`` / ``backward`` (σ and dz = da ⊙ σ'(z))
loss                   cross-entropy, softmax
rule                   the rule's own kernels (CCL pair losses and row normalisation, FF
                       length normalisation, goodness, overlay, pair loss)
optimizer              ``Optimizer.step``: gradient copies, clipping norms, SGD update
other                  everything else in the step (Python glue, reshapes, concatenation)
=====================  ====================================================================

The matrix products inside ``linear`` and ``conv`` are also timed *alone*: every product the
step made is recorded (shapes and operand layout) and re-run on arrays of the same shape and
layout; ``GEMM alone`` is their sum, and ``conv`` minus its products is reported as the copies
around them. It is an estimate (a product run alone finds warmer caches), labelled as such.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# ccledu before NumPy: it sets how long OpenBLAS's idle threads spin, which OpenBLAS reads when
# NumPy loads it (ccledu.blas_threads); the benchmarks measure what `ccledu train` gets
import ccledu  # noqa: E402,F401
import numpy as np  # noqa: E402

from ccledu import im2col as im2col_mod  # noqa: E402
from ccledu import layers, losses, optim  # noqa: E402
from ccledu.accel import weight_grad  # noqa: E402
from ccledu.rules import ccl as ccl_mod  # noqa: E402
from ccledu.rules import ff as ff_mod  # noqa: E402

CATEGORIES = ["linear", "conv (GEMM + layout)", "im2col", "col2im", "max-pool", "upsample",
              "activation", "loss", "rule", "optimizer", "other"]


#: the clock of the timers: wall time by default; ``--clock cpu`` uses the thread's CPU time
#: (with one BLAS thread it is the whole step's CPU time, much less disturbed by other jobs on a
#: shared machine)
CLOCK = time.perf_counter


class Profiler:
    """Exclusive-time accounting over a stack of wrapped calls."""

    def __init__(self):
        self.total = defaultdict(float)
        self.stack = []          # [category, start, time spent in children]
        self.gemms = []          # (kind, shapes...) of every matrix product, for the GEMM-alone estimate
        self.recording = False
        self._undo = []

    def wrap(self, owner, name, category, record=None):
        orig = getattr(owner, name)
        prof = self

        def wrapper(*args, **kwargs):
            if not prof.recording:
                return orig(*args, **kwargs)
            if record is not None:
                record(prof, args, kwargs)
            prof.stack.append([category, CLOCK(), 0.0])
            try:
                return orig(*args, **kwargs)
            finally:
                cat, t0, child = prof.stack.pop()
                dt = CLOCK() - t0
                prof.total[cat] += dt - child
                if prof.stack:
                    prof.stack[-1][2] += dt

        wrapper.__wrapped__ = orig
        setattr(owner, name, wrapper)
        self._undo.append((owner, name, orig))
        return orig, wrapper

    def wrap_everywhere(self, module, name, category):
        """Wrap a function and every ``from module import name`` copy of it in ccledu."""
        orig, wrapper = self.wrap(module, name, category)
        for mod in list(sys.modules.values()):
            if mod is not module and getattr(mod, "__name__", "").startswith("ccledu") \
                    and getattr(mod, name, None) is orig:
                setattr(mod, name, wrapper)
                self._undo.append((mod, name, orig))

    def undo(self):
        for owner, name, orig in reversed(self._undo):
            setattr(owner, name, orig)
        self._undo = []


def _rec_linear_fwd(prof, args, kwargs):
    layer, x = args[0], args[1]
    prof.gemms.append(("linear", "nt", x.shape, layer.params["weight"].shape, x.dtype))


def _rec_linear_bwd(prof, args, kwargs):
    layer, dy = args[0], args[1]
    need_dx = kwargs.get("need_dx", args[3] if len(args) > 3 else True)
    x = layer._c_x
    prof.gemms.append(("linear", "tn", dy.shape, x.shape, dy.dtype))            # dyᵀ x
    if need_dx:
        prof.gemms.append(("linear", "nn", dy.shape, layer.params["weight"].shape, dy.dtype))


def _rec_conv_fwd(prof, args, kwargs):
    layer, x = args[0], args[1]
    F = layer.out_channels
    _, oh, ow = layer.output_shape(x.shape[1:])
    K = layer.in_channels * layer.kernel_size ** 2
    M = x.shape[0] * oh * ow
    prof.gemms.append(("conv", "nn", (F, K), (K, M), x.dtype))               # W_mat colsᵀ


def _rec_conv_bwd(prof, args, kwargs):
    layer, dy = args[0], args[1]
    need_dx = kwargs.get("need_dx", args[3] if len(args) > 3 else True)
    F = layer.out_channels
    K = layer.in_channels * layer.kernel_size ** 2
    M = dy.shape[0] * dy.shape[2] * dy.shape[3]
    prof.gemms.append(("conv", "wg", (F, M), (K, M), dy.dtype))   # dYᵀ cols: accel.weight_grad
    if need_dx:
        prof.gemms.append(("conv", "tn", (F, K), (F, M), dy.dtype))           # M_matᵀ dYᵀ


def gemm_alone_seconds(gemms, reps: int = 3) -> float:
    """Best-of-``reps`` time of each recorded product on fresh arrays of the same layout, summed."""
    g = np.random.default_rng(0)
    cache = {}
    total = 0.0
    for _, kind, sa, sb, dtype in gemms:
        key = (kind, sa, sb, np.dtype(dtype).str)
        if key not in cache:
            a = g.standard_normal(sa).astype(dtype)
            b = g.standard_normal(sb).astype(dtype)
            op = {"nn": lambda: a @ b, "nt": lambda: a @ b.T, "tn": lambda: a.T @ b,
                  "wg": lambda: weight_grad(a, b)}[kind]      # as Conv2d.backward computes it
            op()
            best = float("inf")
            for _ in range(reps):
                t = CLOCK()
                op()
                best = min(best, CLOCK() - t)
            cache[key] = best
        total += cache[key]
    return total


def instrument(prof: Profiler):
    L = layers
    prof.wrap(L.Linear, "forward", "linear", _rec_linear_fwd)
    prof.wrap(L.Linear, "backward", "linear", _rec_linear_bwd)
    prof.wrap(L.Conv2d, "forward", "conv (GEMM + layout)", _rec_conv_fwd)
    prof.wrap(L.Conv2d, "backward", "conv (GEMM + layout)", _rec_conv_bwd)
    for fn in ("im2col", "im2col_taps"):          # Conv2d calls the tap-buffer functions
        prof.wrap_everywhere(im2col_mod, fn, "im2col")
    for fn in ("col2im", "col2im_taps"):
        prof.wrap_everywhere(im2col_mod, fn, "col2im")
    for meth in ("forward", "backward"):
        prof.wrap(L.MaxPool2d, meth, "max-pool")
        prof.wrap(L.Upsample2d, meth, "upsample")
        prof.wrap(L.Activation, meth, "activation")
    for fn in ("cross_entropy", "softmax", "log_softmax"):
        prof.wrap_everywhere(losses, fn, "loss")
    for fn in ("match_loss", "gram_loss", "normalize_rows", "normalize_rows_backward", "flood_mask"):
        prof.wrap_everywhere(ccl_mod, fn, "rule")
    for fn in ("length_normalise",):
        prof.wrap_everywhere(ff_mod, fn, "rule")
    for meth in ("goodness_of", "overlay", "pair_loss", "draw_negatives", "normalise"):
        prof.wrap(ff_mod.FF, meth, "rule")
    prof.wrap(optim.Optimizer, "step", "optimizer")


def profile(config: str, rule: str, reps: int) -> dict:
    from speed import CONFIGS, ccledu_step
    spec, N, act = CONFIGS[config]
    step, sync, model = ccledu_step(rule, spec, N, act, "cpu")
    step()
    plain = float("inf")                          # unprofiled best, for comparison
    for _ in range(reps):
        t = CLOCK()
        step()
        plain = min(plain, CLOCK() - t)
    prof = Profiler()
    instrument(prof)
    try:
        step()
        step()
        prof.recording = True
        walls = []
        for _ in range(reps):
            prof.gemms = []
            t0 = CLOCK()
            step()
            walls.append(CLOCK() - t0)
        prof.recording = False
        gemms = list(prof.gemms)                  # the last step's products
    finally:
        prof.undo()
    wall = sum(walls) / reps
    cats = {c: prof.total.get(c, 0.0) / reps for c in CATEGORIES}
    cats["other"] = wall - sum(v for k, v in cats.items() if k != "other")
    conv_gemm = gemm_alone_seconds([g for g in gemms if g[0] == "conv"])
    return {"config": config, "rule": rule, "batch": N, "plain_best_s": plain, "profiled_mean_s": wall,
            "categories_s": cats, "gemm_alone_s": gemm_alone_seconds(gemms), "n_gemms": len(gemms),
            "conv_gemm_alone_s": conv_gemm}



def report(rows, machine: dict, command: str, load=None) -> str:
    lines = ["# Profile of one training step (ccledu, CPU)", "",
             f"Command: `{command}`", "",
             f"Clock: {'CPU time of the thread' if CLOCK is time.thread_time else 'wall time'}.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), ""]
    if load:
        lines += [f"Machine load (1/5/15-min load average): {load[0]} at the start, {load[1]} at the "
                  "end (2 cores: above ~1, other jobs shared the machine).", ""]
    lines += [
             "Exclusive time per step in each category (ms, mean over the profiled steps; the "
             "wrappers add a few µs per call). `GEMM alone` re-runs every matrix product of the "
             "step on its own (same shapes and operand layouts): it is the part of `linear` + "
             "`conv` that BLAS needs; the rest of those two columns is layout copies and bias.", ""]
    head = ["config", "rule", "step ms (plain best)", "step ms (profiled)", "GEMM alone"] + CATEGORIES
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        c = r["categories_s"]
        w = r["profiled_mean_s"]
        cells = [r["config"], r["rule"], f"{1e3 * r['plain_best_s']:.2f}", f"{1e3 * w:.2f}",
                 f"{1e3 * r['gemm_alone_s']:.2f} ({100 * r['gemm_alone_s'] / w:.0f} %)"]
        cells += [f"{1e3 * c[k]:.2f} ({100 * c[k] / w:.0f} %)" for k in CATEGORIES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="mlp,cnn")
    p.add_argument("--rules", default="bp,fa,dfa,ccl,ff")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time, or the thread's CPU time (use with OPENBLAS_NUM_THREADS=1)")
    p.add_argument("--out", help="write the Markdown report (and a .json beside it) here")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.thread_time if args.clock == "cpu" else time.perf_counter
    import os
    from speed import machine_info
    load0 = [round(v, 2) for v in os.getloadavg()]
    rows = []
    for c in args.configs.split(","):
        for r in args.rules.split(","):
            row = profile(c, r, args.reps)
            rows.append(row)
            cats = row["categories_s"]
            print(f"{c:5s} {r:4s} plain {1e3 * row['plain_best_s']:7.2f} ms  profiled "
                  f"{1e3 * row['profiled_mean_s']:7.2f} ms  GEMM alone {1e3 * row['gemm_alone_s']:7.2f}  "
                  + "  ".join(f"{k} {1e3 * v:.2f}" for k, v in cats.items() if v > 5e-5), flush=True)
    from speed import command_line
    command = command_line("profile_step.py", argv)
    load = (load0, [round(v, 2) for v in os.getloadavg()])
    machine = {k: v for k, v in machine_info("cpu").items() if not k.startswith("torch")}
    text = report(rows, machine, command, load)
    if args.out:
        import json
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"command": command, "load": load,
                                                        "rows": rows}, indent=1))
        print(f"wrote {out}")
    else:
        print(text)
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
