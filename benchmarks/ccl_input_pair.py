"""Why CCL's training loss rises after ~10 epochs on MNIST while accuracy keeps improving.

The term that rises is pair/0: the input x matched against the feedback net's bottom output
s_0 = s_1 V_0ᵀ (C × 784). It reaches one weight only, V_0 (feedback.0), and is quadratic in it:

    L_0 = c/(N C) ‖X V_0 s_1ᵀ − Y‖²,   c = λ·256/784,   Hessian = 2c/(N C) (XᵀX) ⊗ (s_1ᵀ s_1)

so plain SGD with learning rate η on V_0 is stable only while η·λ_max < 2, with
λ_max = 2c/(N C) · λ_max(XᵀX) · λ_max(s_1ᵀ s_1). As the prototypes s_1 grow (pair 1 trains the
feedback layer above), η·λ_max climbs to 2; this script trains the public MNIST configuration
(batch 256, SGD lr 1, clip 1) for 12 epochs and prints, per epoch, the mean pair/0 loss and
η·λ_max on a few batches. Usage: ``python benchmarks/ccl_input_pair.py [--epochs 12]``; it
writes ``results/reproduce/ccl_input_pair.json``.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from ccledu.data import batches, load_dataset, prepare
from ccledu.models import build_model
from ccledu.optim import Optimizer, ParamGroup
from ccledu.rules import get_rule

OUT = Path(__file__).resolve().parent / "results" / "reproduce" / "ccl_input_pair.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--every", type=int, default=47, help="measure η·λ_max every this many steps")
    args = p.parse_args(argv)
    xtr, ytr = prepare(load_dataset("mnist"), flatten=True, seed=0).train
    model = build_model("mlp-mnist", seed=0)
    rule = get_rule("ccl").setup(model, seed=0)
    lr = 1.0
    opt = Optimizer([ParamGroup(n, ps, lr=lr, clip=1.0) for n, ps in rule.param_groups(model).items()])
    coef = rule.scale * 256 / 784
    g = np.random.default_rng(0)
    rows, step = [], 0
    for ep in range(1, args.epochs + 1):
        losses, eig = [], []
        for xb, yb in batches(xtr, ytr, 256, rng=g):
            res = rule.step(model, xb, yb)
            losses.append(float(res.terms["pair/0"]))
            if step % args.every == 0:
                x64, s1 = xb.astype(np.float64), rule.signals[1].astype(np.float64)
                lam = (2 * coef / (len(xb) * rule.signals[0].shape[0])
                       * np.linalg.eigvalsh(x64.T @ x64)[-1] * np.linalg.eigvalsh(s1.T @ s1)[-1])
                eig.append(lr * lam)
            opt.step(res.grads)
            step += 1
        rows.append({"epoch": ep, "pair0_mean": float(np.mean(losses)),
                     "lr_lambda_max": [round(v, 3) for v in eig]})
        print(f"epoch {ep:3d}  pair/0 {np.mean(losses):.4f}  lr*lambda_max {np.round(eig, 2)}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"config": "mlp-mnist, CCL defaults, batch 256, SGD lr 1, clip 1, seed 0",
                               "epochs": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
