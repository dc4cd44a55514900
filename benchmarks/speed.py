"""Training-step speed of ccledu (NumPy or CuPy) against PyTorch in the same run.

    python benchmarks/speed.py                     # CPU: ccledu+NumPy vs PyTorch CPU
    python benchmarks/speed.py --device cuda       # GPU: ccledu+CuPy vs PyTorch CUDA
    python benchmarks/speed.py --quick             # fewer repetitions (smoke test)

For every rule x {MLP, CNN} (every registered rule that trains mlp or cnn models; MLP-only
rules skip the CNN configs) it times full training steps (forward, credit assignment, clipping,
SGD update) on a fixed batch, reports samples/s, the ratio PyTorch-time / ccledu-time (> 1 means
ccledu is faster), and the fraction of the machine's matrix-multiply peak the step reaches
(FLOPs of the step's matrix products / time / peak, peak = best GFLOP/s of a large float32
matmul; the FLOPs are counted from one real step by ``ccledu.flops``). Rules whose step costs
more than 4 BP steps (the target-propagation family) are timed with a quarter of the repetitions. It also times how the step cost grows as width, depth and batch size double.
Results go to ``benchmarks/results/speed_<device>.json`` and ``.md`` with plots.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# ccledu before NumPy: it sets how long OpenBLAS's idle threads spin, which OpenBLAS reads when
# NumPy loads it (ccledu.blas_threads); the benchmarks measure what `ccledu train` gets
import ccledu  # noqa: E402,F401
import numpy as np  # noqa: E402

from ccledu import accel  # noqa: E402
from ccledu.backend import asarray, get_array_module, use  # noqa: E402
from ccledu.backend import machine_info as backend_machine_info  # noqa: E402
from ccledu.models import build_model  # noqa: E402
from ccledu.optim import Optimizer, ParamGroup  # noqa: E402
from ccledu.models import parse_spec  # noqa: E402
from ccledu.rules import RULES as REGISTRY, get_rule, rule_class  # noqa: E402

#: every registered rule that trains MLPs or CNNs (the autoencoder rules train neither)
RULES = [r for r in REGISTRY if {"mlp", "cnn"} & set(rule_class(r).MODEL_KINDS)]
#: training images per epoch of the dataset each config stands for (90 % of the official training
#: set, the trainer's default split): an epoch's time is estimated as ceil(n / batch) steps
EPOCH_IMAGES = {"mlp": ("MNIST", 54000), "cnn": ("MNIST", 54000), "cnn-paper": ("CIFAR-10", 45000)}
CONFIGS = {
    # name: (model spec, batch size, activation)
    "mlp": ("mlp:784-256-256-256-256-256-10", 256, "elu"),
    "cnn": ("cnn:1x28x28-c32-c64-10", 128, "elu"),
    "cnn-paper": ("cnn:3x32x32-c128-c128-c256-c256-c512-10", 128, "elu"),
}


#: CPU flags the report lists (the vector extensions the kernels of NumPy, OpenBLAS and PyTorch use)
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_kind(model: str, flags: str = "", dispatch: str = "") -> str:
    """A short machine-kind name for result files: 'amd-epyc', 'intel-xeon', else the model's
    first two words, lower case, joined by '-'.

    Cloud CPUs often report one model name ("Intel(R) Xeon(R) Processor") for several
    generations, so an Intel Xeon is told apart by what it can do (``flags``: /proc/cpuinfo's,
    ``dispatch``: NumPy's active SIMD targets, as in :func:`cpu_details`): with AMX tiles
    'intel-xeon' (the Sapphire Rapids kind these benchmarks first ran on), else with NumPy's
    AVX512_ICL target 'intel-xeon-icl' (Ice Lake and later without AMX), else with AVX-512
    'intel-xeon-skx', else 'intel-xeon-avx2'. Without flags (an old report) it stays
    'intel-xeon'."""
    low = model.lower()
    for vendor, family in (("intel", "xeon"), ("amd", "epyc"), ("amd", "ryzen"), ("intel", "core")):
        if vendor in low and family in low:
            name = f"{vendor}-{family}"
            flag_set, targets = set(flags.split()), set(dispatch.split())
            if name == "intel-xeon" and flag_set and "amx_tile" not in flag_set:
                name += ("-icl" if "AVX512_ICL" in targets
                         else "-skx" if "avx512f" in flag_set else "-avx2")
            return name
    words = [w for w in "".join(c if c.isalnum() else " " for c in low).split() if w]
    return "-".join(words[:2]) or "cpu"


def machine_kind(machine: dict) -> str:
    """:func:`cpu_kind` of a :func:`machine_info` record."""
    return cpu_kind(machine.get("cpu", ""), machine.get("cpu_flags", ""),
                    machine.get("numpy_simd_dispatch", ""))


def cpu_details() -> dict:
    """CPU flags (the SIMD subset), NumPy's SIMD dispatch and the BLAS NumPy really loaded."""
    out = {}
    try:
        with open("/proc/cpuinfo") as fh:
            info = fh.read().split("\n\n")[0].splitlines()
        field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info)}
        flags = field.get("flags", "").split()
        out["cpu_flags"] = " ".join(f for f in SIMD_FLAGS if f in flags)
        if field.get("cpu family"):     # the same model name hides different generations
            out["cpu_family_model"] = f"{field['cpu family']}/{field.get('model', '?')}"
    except OSError:
        pass
    try:
        from numpy._core import _multiarray_umath as mu
        out["numpy_simd_baseline"] = " ".join(mu.__cpu_baseline__)
        out["numpy_simd_dispatch"] = " ".join(f for f in mu.__cpu_dispatch__ if mu.__cpu_features__.get(f))
    except (ImportError, AttributeError):
        pass
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                out["blas_runtime"] = (f"{lib.get('internal_api')} {lib.get('version')} "
                                       f"({lib.get('architecture')}, {lib.get('threading_layer')})")
                out["blas_threads"] = lib.get("num_threads")
                break
    except ImportError:
        pass
    return out


def command_line(script: str, argv=None) -> str:
    """How this run was started: the thread/kernel environment variables that are set, then
    ``python benchmarks/<script> <arguments>``."""
    names = ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE", "CCLEDU_KERNELS",
             "CCLEDU_CONV_LAYOUT"]
    if ccledu.blas_threads.STATE.get("by") == "user":     # not when ccledu set it itself
        names.append("OPENBLAS_THREAD_TIMEOUT")
    env = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    args = list(argv) if argv is not None else sys.argv[1:]
    return " ".join(env + ["python", f"benchmarks/{script}"] + [str(a) for a in args])


def machine_info(device: str) -> dict:
    info = backend_machine_info("cupy" if device == "cuda" else "numpy")
    if device == "cpu":
        info.update(cpu_details())
        spin = ccledu.blas_threads.STATE
        info["blas_thread_timeout"] = (f"{spin.get('value') or 'unset (28)'} "
                                       f"({spin.get('by', 'not applied')})")
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device == "cuda":
            info["torch_gpu"] = torch.cuda.get_device_name(0)
        else:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            info["torch_blas"] = ("MKL" if torch.backends.mkl.is_available() else "other") + \
                (" + oneDNN" if torch.backends.mkldnn.is_available() else "")
    except ImportError:
        info["torch"] = None
    return info


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


#: the clock of every timing: wall time, or with ``--clock cpu`` the CPU time of the calling
#: thread (single-threaded runs only: both libraries then compute in this thread)
CLOCK = time.perf_counter


def time_fn(fn, reps: int, warmup: int = 2, sync=lambda: None) -> tuple:
    """(best, median) seconds per call of ``fn`` over ``reps`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = CLOCK()
        fn()
        sync()
        times.append(CLOCK() - t)
    return min(times), statistics.median(times)


#: alternating rounds of :func:`time_pair`: each side makes ROUNDS · ceil(reps / ROUNDS) timed calls
ROUNDS = 8


#: the grid's timed blocks last at least this long (seconds): a short step (the MLP's ~4 ms) is
#: then timed ~10 times per block instead of once, and its best call moves less between runs
MIN_BLOCK_S = 0.05
#: at most this many timed calls per block
MAX_BLOCK_CALLS = 64


def time_pair(fn_a, fn_b, reps: int, sync_a=lambda: None, sync_b=lambda: None, rounds: int = ROUNDS,
              pause: float = 0.3, min_block_s: float = 0.0, counts: dict | None = None):
    """((best, median) of ``fn_a``, (best, median) of ``fn_b``), seconds per call, timed in
    alternating blocks (a×k, b×k, a×k, ... for ``rounds`` rounds, k = ceil(reps/rounds)) so that
    a slow spell of the machine hits both alike. Before each block the machine rests for
    ``pause`` seconds and one untimed call is made: the other library's idle worker threads keep
    spinning for a while after its last call (OpenBLAS, and the OpenMP runtime under PyTorch,
    ~0.1-0.2 s by default) and would otherwise steal the cores from the first timed calls.
    With ``min_block_s`` > 0, k is raised so that a block lasts about that long, judged from the
    first untimed call of ``fn_a`` (at most ``MAX_BLOCK_CALLS``); both sides use the same k, so
    that the best of each is taken over as many calls. ``counts``, if given, receives the timed
    calls of each side ({"a": n, "b": n}).

    The report's ms/step and ratios use the best call of each side: on a shared machine noise
    only ever adds time, and the median of the same calls moved a ratio by up to ±30 % between
    runs (2-core VM, Dec 2026) where the best moved it by a few per cent."""
    k = max(1, -(-reps // rounds))
    first = None
    ta, tb = [], []
    for _ in range(rounds):
        for fn, sync, out in ((fn_a, sync_a, ta), (fn_b, sync_b, tb)):
            time.sleep(pause)
            t = CLOCK()
            fn()
            sync()
            if first is None:
                first = CLOCK() - t
                if min_block_s > 0:
                    k = int(min(max(k, -(-min_block_s // max(first, 1e-6))), max(k, MAX_BLOCK_CALLS)))
            for _ in range(k):
                t = CLOCK()
                fn()
                sync()
                out.append(CLOCK() - t)
    if counts is not None:
        counts.update(a=len(ta), b=len(tb))
    return (min(ta), statistics.median(ta)), (min(tb), statistics.median(tb))


def matmul_peak(device: str, n: int = 2048) -> dict:
    """Best GFLOP/s of an n x n float32 matrix product (NumPy/CuPy and PyTorch)."""
    out = {}
    flops = 2 * n ** 3
    if device == "cpu":
        a = np.random.default_rng(0).random((n, n), dtype=np.float32)
        out["numpy"] = flops / time_fn(lambda: a @ a, 5, 1)[0] / 1e9
    else:
        import cupy as cp
        a = cp.random.random((n, n), dtype=cp.float32)
        out["cupy"] = flops / time_fn(lambda: a @ a, 15, 2, cp.cuda.Stream.null.synchronize)[0] / 1e9
    try:
        import torch
        dev = "cuda" if device == "cuda" else "cpu"
        t = torch.rand(n, n, device=dev)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        out["torch"] = flops / time_fn(lambda: t @ t, 5 if dev == "cpu" else 15, 1, sync)[0] / 1e9
    except ImportError:
        pass
    out["peak"] = max(out.values())
    return out


def hand_flops(model, rule: str, N: int):
    """FLOPs of the matrix products in one training step by hand formula (bp, fa, dfa, ccl, ff;
    None for the other rules). :func:`step_flops` counts them instead; the two differ where the
    formula leaves products out: CCL's feedback network on the C one-hots and its gradients
    (and, for a CNN, the Â Âᵀ / Ŝ Ŝᵀ similarity products), FF's label grating on a CNN input.

    F = forward products of the forward net (2·N·in·out per linear, 2·N·OH·OW·C·k²·F per conv).
    bp/fa: forward + dW + dx (no dx for the first block) ≈ 3F − dx₀.
    dfa: forward + dW + the projections e·Dᵀ.   ccl: forward + dW (inputs detached: no dx) +
    the pair products A·Sᵀ and their gradients (3 · 2·N·C·d per pair).
    ff: two passes (positive, negative) of forward + dW over the hidden blocks.
    """
    per_block = []
    shape = model.input_shape
    for b, out_shape in zip(model.blocks, model.shapes):
        m = b.main
        if hasattr(m, "kernel_size"):
            _, oh, ow = m.output_shape(shape)
            per_block.append(2.0 * N * oh * ow * m.in_channels * m.kernel_size ** 2 * m.out_channels)
        else:
            per_block.append(2.0 * N * m.in_features * m.out_features)
        shape = out_shape
    F = sum(per_block)
    C = model.num_classes
    sizes = [int(np.prod(model.input_shape))] + [int(np.prod(s)) for s in model.shapes]
    if rule in ("bp", "fa"):
        return 3 * F - per_block[0]
    if rule == "dfa":
        return 2 * F + sum(2.0 * N * C * d for d in sizes[1:-1])
    if rule == "ccl":
        return 2 * F + sum(3 * 2.0 * N * C * d for d in sizes[:-1])
    if rule == "ff":
        # hidden blocks: the neutral pass (N rows) and [positive; negative] (2N rows) forward,
        # the 2N rows' weight gradients; the head: forward and weight gradient on N rows
        return 5 * sum(per_block[:-1]) + 2 * per_block[-1]
    return None


def step_flops(rule: str, spec: str, N: int, act: str) -> float:
    """FLOPs of the matrix products in one training step of ``rule`` at its default options on
    ``spec`` with batch ``N``, counted by ``ccledu.flops.count_step`` from a real float64 step
    (2·m·k·n per product; the optimiser's update is not a product and is not counted)."""
    from ccledu.flops import count_step

    defaults = {k: v[1] for k, v in rule_class(rule).OPTIONS.items()}   # = get_rule(rule)
    return count_step(rule, model=spec, batch_size=N, activation=act,
                      rule_options=defaults)["matmul"] * N


def ccledu_step(rule: str, spec: str, N: int, act: str, device: str, seed: int = 0):
    """(step closure, sync, model) for ccledu on the given back-end."""
    backend = "cupy" if device == "cuda" else "numpy"
    with use(backend):
        model = build_model(spec, activation=act, seed=seed)
        r = get_rule(rule)
        r.setup(model, seed=seed)
        groups = [ParamGroup(name, params, lr=0.01, clip=1.0)
                  for name, params in r.param_groups(model).items()]
        opt = Optimizer(groups)
        g = np.random.default_rng(seed)
        x = asarray(g.standard_normal((N,) + model.input_shape), dtype=model.dtype)
        y = asarray(g.integers(0, model.num_classes, N))
    xp = get_array_module(x)

    def step():
        res = r.step(model, x, y)
        opt.step(res.grads)
    return step, (lambda: _sync(xp)), model


def torch_step(rule: str, spec: str, N: int, act: str, device: str, seed: int = 0):
    import torch
    from torch_peers import make_step
    from ccledu.models import parse_spec

    kind, args = parse_spec(spec)
    dev = "cuda" if device == "cuda" else "cpu"
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x = torch.randn((N, args[0]), generator=g)
        C = args[-1]
        y = torch.randint(0, C, (N,), generator=g)
        step = make_step(rule, "mlp", x.to(dev), y.to(dev), sizes=args, act=act, seed=seed)
    else:
        shape, chans, C = args
        x = torch.randn((N,) + tuple(shape), generator=g)
        y = torch.randint(0, C, (N,), generator=g)
        step = make_step(rule, "cnn", x.to(dev), y.to(dev), channels=list(chans), act=act, seed=seed,
                         classes=C)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return step, sync


def warm_up(step, sync, max_calls: int = 40) -> int:
    """Untimed calls of a ccledu step until its measured choices are made: ``accel.run_tiles``
    times every candidate of a tap loop on that loop's first calls (~17 per kernel and size), so
    the first rule of a config timed without this paid for the slower candidates (CNN BP was
    0.1-0.2 below FA in every report before 7 Dec 2026, though the two steps do the same work).
    Returns the number of calls made."""
    for n in range(1, max_calls + 1):
        step()
        sync()
        if n >= 2 and accel.settled():
            return n
    return max_calls


def run_grid(device: str, configs, rules, reps: int, peak: float, log) -> list:
    rows = []
    for cname in configs:
        spec, N, act = CONFIGS[cname]
        kind = parse_spec(spec)[0]
        for rule in rules:
            if kind not in rule_class(rule).MODEL_KINDS:
                log(f"{cname:9s} {rule:5s}  skipped: the rule trains {'/'.join(rule_class(rule).MODEL_KINDS)} models")
                continue
            step, sync, model = ccledu_step(rule, spec, N, act, device)
            flops = step_flops(rule, spec, N, act)
            hand = hand_flops(model, rule, N)
            r = max(4, reps // (4 if cname == "cnn-paper" else 1))
            if flops > 4 * hand_flops(model, "bp", N):
                r = max(4, r // 4)                  # a TP step costs 5-11 BP steps
            warm = warm_up(step, sync)
            try:
                tstep, tsync = torch_step(rule, spec, N, act, device)
            except ImportError:
                tstep = None
            if tstep is None:
                (t_ours, med_ours), t_torch = time_fn(step, r, sync=sync), None
            else:
                calls = {}
                (t_ours, med_ours), (t_torch, med_torch) = time_pair(
                    step, tstep, r, sync_a=sync, sync_b=tsync, min_block_s=MIN_BLOCK_S, counts=calls)
            row = {"config": cname, "spec": spec, "batch": N, "rule": rule,
                   "ccledu_ms": 1e3 * t_ours, "ccledu_ms_median": 1e3 * med_ours,
                   "ccledu_samples_per_s": N / t_ours,
                   "gflop_per_step": flops / 1e9, "flops": "counted (ccledu.flops)",
                   "hand_gflop_per_step": None if hand is None else hand / 1e9, "reps": r,
                   "timed_calls": r if tstep is None else calls["a"],
                   "warmup_calls": warm}
            row["fraction_of_peak"] = row["gflop_per_step"] / t_ours / peak
            if t_torch is None:
                row["torch_ms"] = None
            else:
                row["torch_ms"], row["torch_ms_median"] = 1e3 * t_torch, 1e3 * med_torch
                row["torch_samples_per_s"] = N / t_torch
                row["torch_timed_calls"] = calls["b"]
                row["ratio_torch_over_ccledu"] = t_torch / t_ours
            rows.append(row)
            log(f"{cname:9s} {rule:5s}  ccledu {row['ccledu_ms']:8.2f} ms"
                + (f"  torch {row['torch_ms']:8.2f} ms  ratio {row['ratio_torch_over_ccledu']:.2f}"
                   if row.get("torch_ms") else "")
                + f"  {100 * row['fraction_of_peak']:.0f}% of peak")
    return rows


def run_scaling(device: str, reps: int, log) -> list:
    """Time per step (BP and CCL, MLP) as width, depth and batch size double."""
    rows = []
    base = dict(width=256, depth=5, batch=256)
    for axis, values in (("width", [128, 256, 512, 1024]), ("depth", [2, 4, 8, 16]),
                         ("batch", [64, 128, 256, 512, 1024])):
        for v in values:
            p = dict(base)
            p[axis] = v
            spec = "mlp:" + "-".join(["784"] + [str(p["width"])] * p["depth"] + ["10"])
            for rule in ("bp", "ccl"):
                step, sync, _ = ccledu_step(rule, spec, p["batch"], "elu", device)
                t = time_fn(step, reps, sync=sync)[0]
                rows.append({"axis": axis, "value": v, "rule": rule, "ms": 1e3 * t, **p})
                log(f"scaling {axis}={v:5d} {rule}: {1e3 * t:.2f} ms")
    return rows


def plot(results: dict, path_prefix: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["grid"]
    configs = sorted({r["config"] for r in rows}, key=list(CONFIGS).index)
    widths = [max(4.5, 0.5 * sum(r["config"] == c for r in rows) + 1.5) for c in configs]
    fig, axes = plt.subplots(1, len(configs), figsize=(sum(widths), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, cname in zip(axes[0], configs):
        sub = [r for r in rows if r["config"] == cname]
        xs = np.arange(len(sub))
        ax.bar(xs - 0.2, [r["ccledu_samples_per_s"] for r in sub], 0.4, label="ccledu")
        if all(r.get("torch_ms") for r in sub):
            ax.bar(xs + 0.2, [r["torch_samples_per_s"] for r in sub], 0.4, label="PyTorch")
        ax.set_xticks(xs, [r["rule"] for r in sub])
        ax.set_title(f"{cname} (batch {sub[0]['batch']})")
        ax.set_ylabel("samples / s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_throughput.png", dpi=110)
    plt.close(fig)
    if results.get("scaling"):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, axis in zip(axes, ("width", "depth", "batch")):
            for rule in ("bp", "ccl"):
                pts = [r for r in results["scaling"] if r["axis"] == axis and r["rule"] == rule]
                ax.loglog([p["value"] for p in pts], [p["ms"] for p in pts], "o-", base=2, label=rule)
            ax.set_xlabel(axis)
            ax.set_ylabel("ms / step")
            ax.set_title(f"step time vs {axis}")
            ax.legend()
        fig.tight_layout()
        fig.savefig(f"{path_prefix}_scaling.png", dpi=110)
        plt.close(fig)


def report(results: dict, path: Path, command: str):
    m = results["machine"]
    lines = [f"# Speed: ccledu vs PyTorch ({results['device']})", "",
             f"Command: `{command}`", ""]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    lines += [
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), ""]
    if results.get("kernels"):
        lines += ["Kernels chosen at first use (`ccledu.accel`; ms on the sample): " + "; ".join(
            f"{k}: {v['use']}" + (" (" + ", ".join(f"{c} {ms:.3f}" for c, ms in v["ms"].items()) + ")"
                                  if v.get("ms") else f" ({v.get('why')})")
            for k, v in results["kernels"].items()), ""]
    if results.get("clock") == "cpu":
        lines += ["Clock: CPU time of the calling thread (`--clock cpu`, one thread for both "
                  "libraries), not wall time.", ""]
    if results.get("load_start"):
        lines += [f"Machine load (1/5/15-min load average): {results['load_start']} at the start, "
                  f"{results.get('load_end')} at the end (2 cores: a load above ~1 means other jobs "
                  "shared the machine).", ""]
    lines += ["Matrix-multiply peak (2048² float32): "
             + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in results["peak"].items())
             + ("" if "peak_end" not in results else
                "; measured again after the steps: " + ", ".join(
                    f"{k} {v:.1f}" for k, v in results["peak_end"].items() if k != "peak")
                + " (the `peak` used for % of peak is the best of both measurements)"), "",
             ]
    counted = any("flops" in r for r in results["grid"])     # files written before: hand formulas
    flop_cols = "GFLOP/step (counted) | GFLOP/step (hand formula)" if counted else "GFLOP/step"
    lines += [f"| config | rule | batch | ccledu ms/step | PyTorch ms/step | ratio (PyTorch/ccledu) | ccledu samples/s | {flop_cols} | % of peak | ccledu s/epoch | PyTorch s/epoch |",
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if counted else "")]
    for r in results["grid"]:
        tm = f"{r['torch_ms']:.2f}" if r.get("torch_ms") else "—"
        ratio = f"{r['ratio_torch_over_ccledu']:.2f}" if r.get("torch_ms") else "—"
        steps = math.ceil(EPOCH_IMAGES[r["config"]][1] / r["batch"])
        ep_torch = f"{steps * r['torch_ms'] / 1e3:.1f}" if r.get("torch_ms") else "—"
        flop = f"{r['gflop_per_step']:.3f}"
        if counted:
            hand = r.get("hand_gflop_per_step")
            flop += " | " + ("—" if hand is None else f"{hand:.3f}")
        lines.append(f"| {r['config']} | {r['rule']} | {r['batch']} | {r['ccledu_ms']:.2f} | {tm} | {ratio} | "
                     f"{r['ccledu_samples_per_s']:.0f} | {flop} | {100 * r['fraction_of_peak']:.0f} | "
                     f"{steps * r['ccledu_ms'] / 1e3:.1f} | {ep_torch} |")
    if counted:
        lines += ["", "GFLOP/step (counted) is the matrix-product count of one real step of the rule at "
                  "its default options (`ccledu.flops.count_step`, 2·m·k·n per product); % of peak uses "
                  "it. The hand formula (`hand_flops`, the five original rules only) leaves out CCL's "
                  "feedback network on the C one-hots and its gradients (and on a CNN the Â Âᵀ / Ŝ Ŝᵀ "
                  "similarity products) and FF's label grating on a CNN input; elsewhere the two agree. "
                  "Every rule runs the config's activation; rules whose counted step exceeds 4 BP steps "
                  "(the target-propagation family) get a quarter of the repetitions, at least 4 "
                  "(`reps` in the JSON file; with PyTorch each side makes at least 8 · ceil(reps / 8) "
                  "timed calls, `timed_calls` and `torch_timed_calls`). The PyTorch peers of the rules "
                  "after ff are checked against ccledu's step in float64 by tests/test_torch_peers.py."]
    filled = any("torch_timed_calls" in r for r in results["grid"])
    block = (f"then as many timed calls as fill {1e3 * MIN_BLOCK_S:.0f} ms (at least ceil(reps / 8), "
             f"at most {MAX_BLOCK_CALLS}; judged from ccledu's first untimed call, the same number for both)" if filled else
             "then ceil(reps / 8) timed calls")
    lines += ["", "A ratio above 1 means ccledu's step is faster than PyTorch's. Each row times the two "
              "steps in alternating blocks (ccledu ×k, PyTorch ×k, ... over 8 rounds; each block: a "
              f"0.3 s pause, one untimed step, {block}), so a slow spell of the machine affects both; "
              "ms/step is the best timed call of each side (noise on a shared machine only adds time; "
              "the medians are in the JSON file).", "",
              "s/epoch is the time of one epoch's training steps, ceil(n / batch) × the step time, with n "
              "the training images of an epoch under the trainer's 90/10 split: "
              + ", ".join(f"{c} {d} {n}" for c, (d, n) in EPOCH_IMAGES.items())
              + ". Evaluation and data shuffling are not included; `train_seconds` in a run's "
              "metrics.json is the measured counterpart (e.g. the Table 1 runs, "
              "`results/reproduce/e100/`, on a machine shared by two runs).", "",
              f"![throughput]({path.stem}_throughput.png)", ""]
    if results.get("scaling"):
        lines += ["## How cost grows", "", "MLP 784-width×depth-10, defaults width 256, depth 5, batch 256.", "",
                  f"![scaling]({path.stem}_scaling.png)", "",
                  "| axis | value | rule | ms/step |", "|---|---|---|---|"]
        lines += [f"| {r['axis']} | {r['value']} | {r['rule']} | {r['ms']:.2f} |" for r in results["scaling"]]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--configs", default="mlp,cnn,cnn-paper")
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="3 repetitions, no scaling study")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--threads", type=int, default=0, help="threads of both libraries (BLAS via "
                   "threadpoolctl, torch.set_num_threads); default: every core")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="'cpu': time each call by the CPU time of the calling thread, needs "
                        "--threads 1; much less disturbed by other jobs on a shared machine")
    p.add_argument("--kind", default="", help="machine-kind suffix of the result files: "
                   "'auto' names them after the CPU kind (machine_kind: speed_cpu_amd-epyc.json, "
                   "speed_cpu_intel-xeon.json, speed_cpu_intel-xeon-icl.json); default: none "
                   "(speed_cpu.json)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the Markdown report and plots "
                   "from a results file this script wrote (no timing)")
    args = p.parse_args(argv)
    if args.render:
        src = Path(args.render)
        results = json.loads(src.read_text())
        stem = src.with_suffix("")
        plot(results, stem)
        report(results, stem.with_suffix(".md"), results.get("command", "python benchmarks/speed.py"))
        print(f"rewrote {stem}.md and plots from {src}")
        return 0
    if args.device == "cuda":
        from ccledu.backend import cupy_available
        if not cupy_available():
            p.error("--device cuda needs a working CuPy (cupy.is_available() is False here)")
    reps = 3 if args.quick else args.reps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    global CLOCK
    if args.clock == "cpu":
        if args.device != "cpu" or args.threads != 1:
            p.error("--clock cpu needs --device cpu --threads 1 (the CPU time of one thread)")
        CLOCK = time.thread_time
    if args.threads and args.device == "cpu":
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    try:
        import torch
        if args.device == "cpu":
            torch.set_num_threads(args.threads or os.cpu_count())
    except ImportError:
        log("PyTorch not installed: timing ccledu alone (pip install torch==2.13.0 for the peer)")
    results = {"device": args.device, "machine": machine_info(args.device), "clock": args.clock,
               "command": command_line("speed.py", argv)}
    results["load_start"] = [round(v, 2) for v in os.getloadavg()]
    results["peak"] = matmul_peak(args.device)
    log(f"peak: {results['peak']}")
    results["grid"] = run_grid(args.device, args.configs.split(","), args.rules.split(","), reps,
                               results["peak"]["peak"], log)
    if not (args.quick or args.no_scaling):
        results["scaling"] = run_scaling(args.device, max(3, reps // 2), log)
    results["kernels"] = accel.choices()
    # the peak again, after the steps: one slow spell of a shared machine during the first
    # measurement made a step look faster than the peak (% of peak above 100); the report uses
    # the best of the two measurements
    results["peak_end"] = matmul_peak(args.device)
    best = max(results["peak"]["peak"], results["peak_end"]["peak"])
    if best > results["peak"]["peak"]:
        for row in results["grid"]:
            row["fraction_of_peak"] *= results["peak"]["peak"] / best
        results["peak"]["peak"] = best
    log(f"peak after the steps: {results['peak_end']}")
    results["load_end"] = [round(v, 2) for v in os.getloadavg()]
    kind = machine_kind(results["machine"]) if args.kind == "auto" else args.kind
    stem = out / (f"speed_{args.device}_{kind}" if kind else f"speed_{args.device}")
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, stem)
        plots = " and plots"
    except ImportError as e:            # a lent GPU machine's image may lack matplotlib
        plots = (f" (no plots: {e}; draw them elsewhere with python benchmarks/speed.py "
                 f"--render {stem}.json)")
    report(results, stem.with_suffix(".md"), results["command"])
    log(f"wrote {stem}.json, {stem}.md{plots}")
    return results


if __name__ == "__main__":
    main()
