"""Check a ccledu CCL trace with an independent PyTorch implementation.

    python examples/torch_verify_ccl.py TRACE.npz [--rtol R] [--atol A] [--write-trace OUT.npz]

This script does not import ccledu. It reads the trace with NumPy, rebuilds the forward network
and CCL's feedback network in PyTorch from ``meta`` (see docs/trace-format.md), computes the
counter-current loss with autograd, applies the optimiser step described in ``meta.optimizer``
(warm-up, gradient centralization, per-group clipping with ``clip_grad_norm_``,
``torch.optim.SGD``), and compares every activation, signal, loss term, gradient and updated
parameter with the file. Exit status 0 when everything agrees, 1 otherwise.

With ``--write-trace OUT`` it also writes its own results as a trace (same meta, x, y and
parameters; its own activations, signals, losses, gradients and updated parameters), which
``ccledu verify OUT`` can then check: a round trip through an outside implementation.

The maths (DESIGN.md notation, 0-based blocks l = 0..L-1):
    forward   a_l = σ(block_l(sg(a_{l-1}))), a_{-1} = x, a_{L-1} = logits (no σ)
    feedback  s_L = I_C;  s_l = φ(V_l(sg(s_{l+1}))) for l ≥ 1, s_0 = V_0(sg(s_1)) (linear)
              V_l: linear (C×|out_l| -> |in_l|, reshaped to block l's input shape), or for a
              conv block nearest upsampling by the pool factor then a k×k conv (pad k//2)
    loss      CE(logits, y) + Σ_l pair(A = input of block l, S = s_l), rows flattened,
              A's rows zeroed for flooded samples;
              mlp form: scale · mean((A Sᵀ − Y)²) · 256 / d
              cnn form: rows divided by (‖row‖ + 1e-8), then
                        scale · mean((Â Ŝᵀ − Y)²) + ssl · mean((Â Âᵀ − I)²) + ssl · mean((Ŝ Ŝᵀ − I)²)
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = {
    "identity": lambda t: t,
    "relu": F.relu,
    "elu": F.elu,                                   # α = 1
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.01),
}
TOLERANCES = {"float64": (1e-7, 1e-10), "float32": (1e-4, 1e-5)}


def load(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format") != "ccledu-trace/1" or meta.get("rule") != "ccl":
        raise SystemExit(f"{path}: expected a ccledu-trace/1 file of rule 'ccl', got "
                         f"{meta.get('format')!r} / {meta.get('rule')!r}")
    return meta, arrays


def block_inputs(meta):
    """Shape (without N) of every block's input, and of the logits, from meta.layers."""
    shapes = [tuple(meta["input_shape"])]
    for d in meta["layers"]:
        if d["kind"] == "linear":
            shapes.append((d["out"],))
        else:
            c, h, w = shapes[-1]
            k, s, p = d["kernel"], d["stride"], d["padding"]
            oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            pool = d.get("pool", 0) or 0
            if pool > 1:
                oh, ow = oh // pool, ow // pool
            shapes.append((d["out"], oh, ow))
    return shapes


def forward_net(meta, P, x):
    """[a_0, ..., a_{L-1}]: each block reads its input detached."""
    acts, a = [], x
    for l, d in enumerate(meta["layers"]):
        inp = a.detach()
        W, b = P[f"forward.{l}.weight"], P.get(f"forward.{l}.bias")
        if d["kind"] == "linear":
            z = F.linear(inp.reshape(inp.shape[0], -1), W, b)
            a = ACTIVATIONS[d.get("activation", "identity")](z)
        else:
            z = F.conv2d(inp, W, b, stride=d["stride"], padding=d["padding"])
            a = ACTIVATIONS[d["activation"]](z)
            if (d.get("pool", 0) or 0) > 1:
                a = F.max_pool2d(a, d["pool"])
        acts.append(a)
    return acts


def feedback_net(meta, P, phi, C, dtype):
    """[s_0, ..., s_L]: s_L = I_C, s_l = φ(V_l(sg(s_{l+1}))) (no φ for l = 0)."""
    ins = block_inputs(meta)
    L = len(meta["layers"])
    s = torch.eye(C, dtype=dtype)
    signals = [s]
    for l in range(L - 1, -1, -1):
        d, inp = meta["layers"][l], s.detach()
        V = P[f"feedback.{l}.weight"]
        if d["kind"] == "linear":
            t = F.linear(inp.reshape(C, -1), V).reshape((C,) + ins[l])
        else:
            pool = d.get("pool", 0) or 0
            up = F.interpolate(inp, scale_factor=pool, mode="nearest") if pool > 1 else inp
            t = F.conv2d(up, V, padding=d["kernel"] // 2)
        s = ACTIVATIONS[phi](t) if l > 0 else t
        signals.append(s)
    return signals[::-1]


def unit_rows(X, eps=1e-8):
    return X / (torch.linalg.vector_norm(X, dim=1, keepdim=True) + eps)


def ccl_loss(meta, x, y, acts, signals):
    """(total, {term name: value}) of the CCL objective."""
    cfg = meta["loss"]
    form, scale, ssl = cfg["form"], float(cfg["scale"]), float(cfg.get("ssl_scale", 0.5))
    flood = cfg.get("flood") or 0.0
    N, C = x.shape[0], meta["num_classes"]
    logits = acts[-1]
    Y = F.one_hot(y, C).to(x.dtype)
    terms = {"ce": F.cross_entropy(logits, y)}
    total = terms["ce"]
    mask = None
    if flood:
        p_true = torch.softmax(logits.detach(), dim=1).gather(1, y[:, None])[:, 0]
        mask = ((p_true - 1).abs() >= flood).to(x.dtype)[:, None]
    inputs = [x] + acts[:-1]
    for l in range(len(meta["layers"])):
        A = inputs[l].reshape(N, -1)
        S = signals[l].reshape(C, -1)
        if mask is not None:
            A = A * mask
        if form == "mlp":
            pair = scale * ((A @ S.T - Y) ** 2).mean() * 256 / A.shape[1]
            terms[f"pair/{l}"] = pair
        else:
            Ah, Sh = unit_rows(A), unit_rows(S)
            cross = scale * ((Ah @ Sh.T - Y) ** 2).mean()
            ssl_a = ssl * ((Ah @ Ah.T - torch.eye(N, dtype=x.dtype)) ** 2).mean()
            ssl_s = ssl * ((Sh @ Sh.T - torch.eye(C, dtype=x.dtype)) ** 2).mean()
            pair = cross + ssl_a + ssl_s
            terms.update({f"pair/{l}": pair, f"pair/{l}/cross": cross, f"pair/{l}/ssl_a": ssl_a,
                          f"pair/{l}/ssl_s": ssl_s})
        total = total + pair
    terms["total"] = total
    return total, terms


def optimiser_step(meta, P):
    """Warm-up, centralization, per-group clipping, then torch.optim.SGD (one fresh step)."""
    opt = meta["optimizer"]
    step, warmup = opt["step"], opt["warmup"]
    factor = (step + 1) / warmup if step < warmup else 1.0
    for g in opt["groups"]:
        params = [P[n] for n in g["params"]]
        for p in params:
            p.grad = p.grad * factor
            if g["centralize"] and p.grad.ndim > 1:
                p.grad = p.grad - p.grad.mean(dim=tuple(range(1, p.grad.ndim)), keepdim=True)
        if g["clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, g["clip"])
        sgd = torch.optim.SGD(params, lr=g["lr"], momentum=g["momentum"],
                              weight_decay=g["weight_decay"])
        sgd.step()


def compare(name, theirs, ours, rtol, atol):
    a, b = np.asarray(theirs, dtype=np.float64), np.asarray(ours, dtype=np.float64)
    if a.shape != b.shape:
        return name, float("inf"), False
    diff = np.abs(a - b)
    return name, float(diff.max(initial=0.0)), bool(np.all(diff <= atol + rtol * np.abs(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("--rtol", type=float)
    ap.add_argument("--atol", type=float)
    ap.add_argument("--write-trace", help="also write this implementation's results as a trace")
    args = ap.parse_args(argv)

    meta, arrays = load(args.trace)
    rtol, atol = TOLERANCES[meta["dtype"]]
    rtol = rtol if args.rtol is None else args.rtol
    atol = atol if args.atol is None else args.atol
    dtype = torch.float64 if meta["dtype"] == "float64" else torch.float32
    C = meta["num_classes"]
    phi = meta["loss"].get("feedback_activation") or meta.get("feedback_activation")

    P = {k[len("param/"):]: torch.tensor(v, dtype=dtype, requires_grad=True)
         for k, v in arrays.items() if k.startswith("param/")}
    before = {k: v.detach().clone() for k, v in P.items()}
    x = torch.tensor(arrays["x"], dtype=dtype)
    y = torch.tensor(arrays["y"], dtype=torch.int64)

    acts = forward_net(meta, P, x)
    signals = feedback_net(meta, P, phi, C, dtype)
    total, terms = ccl_loss(meta, x, y, acts, signals)
    total.backward()
    grads = {k: p.grad.detach().clone() for k, p in P.items() if p.grad is not None}
    with torch.no_grad():
        optimiser_step(meta, P)

    ours = {}
    for l, a in enumerate(acts):
        ours[f"act/{l}"] = a.detach().numpy()
    for l in range(len(signals) - 1, -1, -1):
        ours[f"signal/{l}"] = signals[l].detach().numpy()
    for k, v in terms.items():
        ours[f"loss/{k}"] = v.detach().numpy()
    for k, g in grads.items():
        ours[f"grad/{k}"] = g.numpy()
    for k in grads:
        ours[f"after/{k}"] = P[k].detach().numpy()

    rows = [compare(k, arrays[k], v, rtol, atol) for k, v in ours.items() if k in arrays]
    missing = [k for k in ours if k not in arrays]
    width = max(len(r[0]) for r in rows)
    print(f"{'tensor':<{width}}  {'max abs error':>13}  ok")
    for name, err, ok in rows:
        print(f"{name:<{width}}  {err:13.3e}  {'yes' if ok else 'NO'}")
    if missing:
        print(f"not in the trace: {', '.join(missing)}")
    bad = [r[0] for r in rows if not r[2]]

    if args.write_trace:
        out = {"meta": np.array(json.dumps(meta)), "x": arrays["x"], "y": arrays["y"]}
        out.update({f"param/{k}": v.numpy() for k, v in before.items()})
        out.update({k: np.asarray(v) for k, v in ours.items()})
        np.savez(args.write_trace, **out)
        print(f"wrote {args.write_trace}")

    if bad:
        print(f"MISMATCH: {len(bad)} of {len(rows)} tensors differ (rtol {rtol:g}, atol {atol:g}); "
              f"first: {bad[0]}")
        return 1
    print(f"OK: PyTorch agrees with the trace on all {len(rows)} tensors (rtol {rtol:g}, atol {atol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
