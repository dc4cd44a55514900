"""Layer by layer: ccledu's CNN pieces against PyTorch's, in the same run.

    python benchmarks/layer_parts.py --kind auto      # -> results/layer_parts_cpu_<cpu>.md/.json

The whole-step ratio of ``speed.py`` says how far ccledu's CNN step is from PyTorch's; this
script says *where*. It builds the small CNN of the speed report (``cnn:1x28x28-c32-c64-10``,
batch 128, ELU, the BP step) and times every piece of it on its own, each against the PyTorch
operation that does the same work, in alternating blocks (``speed.time_pair``):

* convolution forward: ccledu's ``Conv2d.forward`` (im2col + one matrix product) against
  ``torch.nn.functional.conv2d`` (oneDNN's direct convolution, no im2col), and ccledu's two
  halves on their own (``im2col``, the product ``W_mat @ colsᵀ``);
* convolution backward: ``Conv2d.backward`` (dW product; for every layer after the first also
  the dcols product and ``col2im``) against ``aten.convolution_backward`` with the same outputs;
* max-pool forward and backward (``MaxPool2d``) against ``max_pool2d_with_indices`` and its
  backward (what autograd runs in training);
* ELU forward and backward (``Activation``) against ``F.elu`` and ``aten.elu_backward``.

The pieces run on the tensors of one real forward pass (for ccledu in its layers' memory layout,
batch-last by default, ``ccledu.accel.conv_layout``; PyTorch's NCHW for PyTorch). Their sum is not the step time (the loss, the flatten +
linear head and the optimiser are left out, and a piece timed alone finds warmer caches), but
the per-piece ratios show which operations keep the step's ratio below 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

# ccledu before NumPy: it sets how long OpenBLAS's idle threads spin, which OpenBLAS reads when
# NumPy loads it (ccledu.blas_threads); the benchmarks measure what `ccledu train` gets
import ccledu  # noqa: E402,F401
import numpy as np  # noqa: E402

from speed import command_line, machine_info, machine_kind, time_pair  # noqa: E402

from ccledu.accel import conv_layout, weight_grad  # noqa: E402
from ccledu.im2col import col2im_taps, im2col_taps  # noqa: E402
from ccledu.layers import Activation, Conv2d, MaxPool2d  # noqa: E402

SPEC = "cnn:1x28x28-c32-c64-10"
N = 128


def in_layout(a):
    """a (N, C, H, W) stored as the layers store it (``ccledu.accel.conv_layout``)."""
    if conv_layout() == "batch_last":
        return np.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    return np.ascontiguousarray(a.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


def as_cols_t(col, last):
    """The tap buffer (C, k, k, N, OH, OW) as the contiguous colsᵀ that Conv2d multiplies."""
    return (col.transpose(0, 1, 2, 4, 5, 3) if last else col).reshape(col.shape[0] * 9, -1)


def as_taps(dcols_t, C, N, H, last):
    """dcolsᵀ (C·9, positions) back to the tap buffer (C, 3, 3, N, H, H) (stride 1, padding 1)."""
    if last:
        return dcols_t.reshape(C, 3, 3, H, H, N).transpose(0, 1, 2, 5, 3, 4)
    return dcols_t.reshape(C, 3, 3, N, H, H)


def pieces(seed: int = 0):
    """[(name, ccledu fn, torch fn)] for every piece of the small CNN's BP step (torch fn None
    for the parts of a ccledu piece). Each pair returns the same results (an array, or a tuple
    whose non-None entries correspond; tests/test_benchmarks.py compares them)."""
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten
    g = np.random.default_rng(seed)
    x = g.standard_normal((N, 1, 28, 28)).astype(np.float32)
    x[:, :, :4] = 0.0                      # a blank border, as MNIST has (ties in the pools)
    out = []
    h_np, h_t = x, torch.from_numpy(x.copy())
    cin = 1
    for l, cout in enumerate((32, 64)):
        conv = Conv2d(cin, cout, 3, 1, 1, seed=seed + l)
        pool, act = MaxPool2d(2), Activation("elu")
        W_t = torch.from_numpy(conv.params["weight"].copy())
        need_dx = l > 0                    # the first layer's input needs no gradient
        H = h_np.shape[2]
        tag = f"conv{l + 1} {cin}→{cout} @{H}×{H}"

        z = conv.forward(h_np)
        z_t = F.conv2d(h_t, W_t, padding=1)
        dz = g.standard_normal(z.shape).astype(np.float32)
        dz_np = in_layout(dz)              # the layout Conv2d's output has (and dy gets)
        dz_t = torch.from_numpy(dz)
        last = conv_layout() == "batch_last"
        cols_t = as_cols_t(im2col_taps(h_np, 3, 3, 1, 1, batch_last=last), last)
        Wm = conv.params["weight"].reshape(cout, -1)
        hn, ht = h_np, h_t
        out.append((f"{tag}: forward", lambda c=conv, hn=hn: c.forward(hn),
                    lambda ht=ht, W_t=W_t: F.conv2d(ht, W_t, padding=1)))
        out.append((f"{tag}: forward, im2col alone",
                    lambda hn=hn, last=last: im2col_taps(hn, 3, 3, 1, 1, batch_last=last), None))
        out.append((f"{tag}: forward, product alone", lambda Wm=Wm, c=cols_t: Wm @ c, None))
        conv.forward(hn)                   # the cache backward reads
        dY_t = (dz_np.transpose(1, 2, 3, 0) if last else dz_np.transpose(1, 0, 2, 3)).reshape(cout, -1)
        dcols_t = Wm.T @ dY_t
        tap_buffer = as_taps(dcols_t, cin, hn.shape[0], H, last)
        out.append((f"{tag}: backward" + (" (dW, dx)" if need_dx else " (dW)"),
                    lambda c=conv, d=dz_np, nd=need_dx: (c.backward(d, need_dx=nd), c.grads["weight"]),
                    lambda d=dz_t, ht=ht, W_t=W_t, nd=need_dx: aten.convolution_backward(
                        d, ht, W_t, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                        [nd, True, False])[:2]))
        out.append((f"{tag}: backward, dW product alone (accel.weight_grad, as Conv2d)",
                    lambda d=dY_t, c=cols_t: weight_grad(d, c), None))
        if need_dx:
            out.append((f"{tag}: backward, dcols product alone",
                        lambda Wm=Wm, d=dY_t: Wm.T @ d, None))
            out.append((f"{tag}: backward, col2im alone",
                        lambda t=tap_buffer, s=hn.shape, last=last:
                        col2im_taps(t, s, 3, 3, 1, 1, batch_last=last), None))

        p = pool.forward(z)
        p_t, idx_t = F.max_pool2d_with_indices(z_t, 2)
        dp = g.standard_normal(p.shape).astype(np.float32)
        dp_np = in_layout(dp)
        dp_t = torch.from_numpy(dp)
        out.append((f"pool{l + 1} {cout}@{H}×{H}: forward", lambda pl=pool, z=z: pl.forward(z),
                    lambda z_t=z_t: F.max_pool2d_with_indices(z_t, 2)))
        out.append((f"pool{l + 1} {cout}@{H}×{H}: backward", lambda pl=pool, d=dp_np: pl.backward(d),
                    lambda d=dp_t, z_t=z_t, i=idx_t: aten.max_pool2d_with_indices_backward(
                        d, z_t, [2, 2], [2, 2], [0, 0], [1, 1], False, i)))
        pool.forward(z)

        a = act.forward(p)
        a_t = F.elu(p_t)
        out.append((f"elu{l + 1} {cout}@{H // 2}×{H // 2}: forward", lambda ac=act, p=p: ac.forward(p),
                    lambda p_t=p_t: F.elu(p_t)))
        out.append((f"elu{l + 1} {cout}@{H // 2}×{H // 2}: backward", lambda ac=act, d=dp_np: ac.backward(d),
                    lambda d=dp_t, a_t=a_t: aten.elu_backward(d, 1.0, 1, 1, True, a_t)))
        act.forward(p)
        h_np, h_t, cin = a, a_t, cout
    return out


def report(res: dict, path: Path):
    m = res["machine"]
    lines = ["# Layer by layer: ccledu's small-CNN pieces vs PyTorch's (CPU)", "",
             f"Command: `{res['command']}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), "",
             f"Machine load (1/5/15-min load average): {res['load_start']} at the start, "
             f"{res['load_end']} at the end (2 cores: above ~1, other jobs shared the machine).", "",
             f"Model `{SPEC}`, batch {N}, float32, the tensors of one BP forward pass. Best of "
             f"{res['reps']} timed calls per side, alternating blocks (`speed.time_pair`); "
             "ratio = PyTorch / ccledu (above 1: ccledu faster). Rows without a PyTorch time are "
             "parts of the row above them.", "",
             "| piece | ccledu ms | PyTorch ms | ratio |", "|---|---|---|---|"]
    tot_c = tot_t = 0.0
    for r in res["rows"]:
        if r["torch_ms"] is None:
            lines.append(f"| &nbsp;&nbsp;{r['piece']} | {r['ccledu_ms']:.2f} | | |")
            continue
        tot_c += r["ccledu_ms"]
        tot_t += r["torch_ms"]
        lines.append(f"| {r['piece']} | {r['ccledu_ms']:.2f} | {r['torch_ms']:.2f} | "
                     f"{r['torch_ms'] / r['ccledu_ms']:.2f} |")
    lines.append(f"| **sum of the compared pieces** | **{tot_c:.2f}** | **{tot_t:.2f}** | "
                 f"**{tot_t / tot_c:.2f}** |")
    lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=24)
    p.add_argument("--rounds", type=int, default=8, help="alternating blocks per piece")
    p.add_argument("--kind", default="", help="'auto': name the files after the CPU kind")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        p.error("this comparison needs PyTorch: pip install torch==2.13.0")
    torch.set_num_threads(os.cpu_count())
    machine = machine_info("cpu")
    suffix = f"_{machine_kind(machine)}" if args.kind == "auto" else \
        (f"_{args.kind}" if args.kind else "")
    res = {"machine": machine, "command": command_line("layer_parts.py", argv), "reps": args.reps,
           "load_start": [round(v, 2) for v in os.getloadavg()], "rows": []}
    with torch.no_grad():
        for name, fc, ft in pieces():
            if ft is None:
                (bc, _), _ = time_pair(fc, fc, args.reps, rounds=args.rounds, pause=0.05)
                bt = None
            else:
                (bc, _), (bt, _) = time_pair(fc, ft, args.reps, rounds=args.rounds)
            res["rows"].append({"piece": name, "ccledu_ms": bc * 1e3,
                                "torch_ms": None if bt is None else bt * 1e3})
            print(f"{name:45s} ccledu {bc * 1e3:7.2f} ms" +
                  ("" if bt is None else f"  torch {bt * 1e3:7.2f} ms  ratio {bt / bc:.2f}"),
                  flush=True)
    res["load_end"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"layer_parts_cpu{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    report(res, stem.with_suffix(".md"))
    print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
