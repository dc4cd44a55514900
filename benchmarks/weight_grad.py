"""A convolution's weight-gradient product, whole and in slices: the two candidates of
``ccledu.accel.weight_grad``, timed alone on the speed report's small CNN.

    python benchmarks/weight_grad.py                # best of 20 calls each, alternating, 3 rounds

dW_mat = dYᵀ cols is a product a bᵀ with a (F, K), b (C·k·k, K) and K = N·OH·OW positions: for
the first conv of ``cnn:1x28x28-c32-c64-10`` at batch 128, 32 × 9 outputs summed over 100 352
positions. The script prints each candidate's best time per shape and which one
``weight_grad`` chooses at its first call (the choice is made with ``ccledu.accel.MARGIN``).
Results in benchmarks/README.md ("AMD EPYC, 7 Dec 2026, second session").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ccledu import accel  # noqa: E402

#: (name, F, C·k·k, positions per sample) of the small CNN's two convs (28×28 and 14×14 maps)
SHAPES = [("conv1 1->32 @28x28", 32, 9, 28 * 28), ("conv2 32->64 @14x14", 64, 288, 14 * 14)]


def best_ms(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return 1e3 * best


def measure(batch: int, reps: int, rounds: int) -> list:
    rng = np.random.default_rng(0)
    rows = []
    for name, F, ckk, pos in SHAPES:
        K = batch * pos
        a = rng.standard_normal((F, K), dtype=np.float32)
        b = rng.standard_normal((ckk, K), dtype=np.float32)
        times = {c: float("inf") for c in accel._WEIGHT_GRAD}
        for _ in range(rounds):
            for c, fn in accel._WEIGHT_GRAD.items():
                fn(a, b)                                      # warm-up, untimed
                times[c] = min(times[c], best_ms(lambda fn=fn: fn(a, b), reps))
        accel.reset()
        accel.weight_grad(a, b)
        chosen = accel.choices()[f"weight_grad@{F}x{ckk}x{K}"]["use"]
        rows.append({"piece": name, "shape": f"{F}x{K} @ {K}x{ckk}", **times, "chosen": chosen})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    import speed
    info = speed.machine_info("cpu")
    print("Machine:", ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"| dW product | shape | whole ms | chunked ms (slices of {accel.CHUNK}) | "
          f"weight_grad chooses |")
    print("|---|---|---|---|---|")
    for r in measure(a.batch, a.reps, a.rounds):
        print(f"| {r['piece']} | {r['shape']} | {r['default']:.2f} | {r['chunked']:.2f} | "
              f"{r['chosen']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
