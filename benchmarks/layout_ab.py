"""The CNN training step in the two memory layouts of ``ccledu.accel.conv_layout``, A/B.

    python benchmarks/layout_ab.py                       # small CNN of the speed report, 5 rules
    python benchmarks/layout_ab.py --rounds 3 --steps 30 --rules bp,dfa --config cnn-paper

Every (rule, layout) is timed in a fresh process (so each layout makes its own tile choices in
``ccledu.accel.run_tiles``), ``--steps`` steps after ``--warmup`` untimed ones, and the processes
alternate between the layouts for ``--rounds`` rounds, so a slow spell of a shared machine hits
both. Printed: the best and the median step time of each layout over all its rounds, and the
ratio of the best times (channel-major / batch-last: above 1, batch-last is faster). PyTorch is
not involved; ``speed.py`` gives the ratio to PyTorch. Results: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYOUTS = ("channel_major", "batch_last")

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
import speed
{check}
spec, N, act = speed.CONFIGS[{config!r}]
step, sync, _ = speed.ccledu_step({rule!r}, spec, N, act, "cpu")
for _ in range({warmup}):
    step(); sync()
times = []
for _ in range({steps}):
    t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def step_times(config: str, rule: str, env: dict, steps: int, warmup: int, check: str = "") -> list:
    """Seconds of each of ``steps`` ccledu training steps (after ``warmup`` untimed ones), timed
    in a fresh Python process whose environment adds ``env``; ``check`` is a line of Python run
    there first (an assertion that the environment took effect). Used by blas_spin_ab.py too."""
    code = CHILD.format(root=str(HERE.parent), here=str(HERE), config=config, rule=rule,
                        steps=steps, warmup=warmup, check=check)
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                         capture_output=True, text=True)
    if out.returncode:
        setting = " ".join(f"{k}={v}" for k, v in env.items())
        raise SystemExit(f"the {config}/{rule} step with {setting} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_times(rule: str, layout: str, steps: int, config: str, warmup: int) -> list:
    return step_times(config, rule, {"CCLEDU_CONV_LAYOUT": layout}, steps, warmup)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", default="bp,fa,dfa,ccl,ff")
    ap.add_argument("--config", default="cnn", choices=["cnn", "cnn-paper"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (the tile "
                    "choices of ccledu.accel.run_tiles are measured in a step's first calls)")
    a = ap.parse_args(argv)
    print(f"| rule | channel-major best / median ms | batch-last best / median ms | "
          f"ratio of best |")
    print("|---|---|---|---|")
    for rule in a.rules.split(","):
        times = {lay: [] for lay in LAYOUTS}
        for _ in range(a.rounds):
            for lay in LAYOUTS:
                times[lay] += child_times(rule, lay, a.steps, a.config, a.warmup)
        b = {lay: 1e3 * min(t) for lay, t in times.items()}
        m = {lay: 1e3 * statistics.median(t) for lay, t in times.items()}
        print(f"| {rule} | {b['channel_major']:.1f} / {m['channel_major']:.1f} | "
              f"{b['batch_last']:.1f} / {m['batch_last']:.1f} | "
              f"{b['channel_major'] / b['batch_last']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
