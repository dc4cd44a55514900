"""Training steps with OpenBLAS's idle threads spinning for different times, A/B.

    python benchmarks/blas_spin_ab.py                          # 28 (OpenBLAS's default) vs 20 (ccledu's)
    python benchmarks/blas_spin_ab.py --timeouts 28,18,20,22 --cases cnn:bp,mlp:ccl --rounds 3

``OPENBLAS_THREAD_TIMEOUT`` = t makes an idle OpenBLAS worker spin for up to 2^t CPU cycles after
a matrix product before it sleeps (``ccledu.blas_threads`` says why ccledu sets 20). OpenBLAS reads
it when NumPy loads it, so every (case, t) runs in a fresh process with the variable set (a value
in the environment wins over ccledu's): ``--warmup`` untimed steps, then ``--steps`` timed ones,
the processes alternating between the values for ``--rounds`` rounds so that a slow spell of a
shared machine hits all of them. Printed per case: the best step time and the median of the
per-process medians for each value, and the ratio of the best times of the first value to each
other (above 1: the other value is faster). PyTorch is not involved (``speed.py`` gives the ratio
to PyTorch). Results: benchmarks/README.md ("AMD EPYC, 7 Dec 2026, second session").
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_CASES = "mlp:bp,mlp:fa,mlp:dfa,mlp:ccl,mlp:ff,cnn:bp,cnn:fa,cnn:dfa,cnn:ccl,cnn:ff"


def child_times(config: str, rule: str, timeout: str, steps: int, warmup: int) -> list:
    from layout_ab import step_times          # the same child process, another variable
    check = ("import ccledu; assert ccledu.blas_threads.STATE['value'] == "
             f"{timeout!r}, ccledu.blas_threads.STATE")
    return step_times(config, rule, {"OPENBLAS_THREAD_TIMEOUT": timeout}, steps, warmup, check)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeouts", default="28,20", help="values of OPENBLAS_THREAD_TIMEOUT, "
                    "comma-separated; the first is the reference of the ratios")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="config:rule pairs (configs: mlp, "
                    "cnn, cnn-paper)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", help="also write the report to this Markdown file")
    a = ap.parse_args(argv)
    timeouts = [t.strip() for t in a.timeouts.split(",") if t.strip()]
    bad = [t for t in timeouts if not t.isdigit() or not 4 <= int(t) <= 30]
    if len(timeouts) < 2 or bad:
        ap.error(f"--timeouts: give at least two whole numbers from 4 to 30 (OpenBLAS clamps to "
                 f"that range), got {a.timeouts!r}")
    cases = []
    for c in a.cases.split(","):
        config, sep, rule = c.strip().partition(":")
        if not sep or not rule:
            ap.error(f"--cases: {c!r} is not config:rule (e.g. cnn:bp)")
        cases.append((config, rule))
    import speed
    from tqdm import tqdm
    info = speed.machine_info("cpu")
    info.pop("blas_thread_timeout", None)             # set per process below
    lines = [f"# OpenBLAS's idle-thread spin: training steps with OPENBLAS_THREAD_TIMEOUT = "
             f"{' and '.join(timeouts)} (CPU)", "",
             f"Each (case, value) in its own processes, {a.warmup} untimed then {a.steps} timed "
             f"steps, {a.rounds} rounds alternating; best / median of the per-process medians "
             f"(ms). 28 is OpenBLAS's default, 20 the value ccledu sets (`ccledu.blas_threads`). "
             f"Discussion: benchmarks/README.md.",
             "", "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
             f"Command: `{speed.command_line('blas_spin_ab.py', argv)}`", ""]
    runs = {(c, t): [] for c in cases for t in timeouts}
    jobs = [(case, t) for _ in range(a.rounds) for case in cases for t in timeouts]
    for case, t in tqdm(jobs, desc="processes", unit="proc", file=sys.stderr):
        runs[(case, t)].append(child_times(*case, t, a.steps, a.warmup))
    ref = timeouts[0]
    lines.append("| config | rule | " + " | ".join(f"t={t}: best / median ms" for t in timeouts)
                 + " | " + " | ".join(f"best t={ref} / t={t}" for t in timeouts[1:]) + " |")
    lines.append("|---|---|" + "---|" * (2 * len(timeouts) - 1))
    for case in cases:
        best = {t: 1e3 * min(min(r) for r in runs[(case, t)]) for t in timeouts}
        med = {t: 1e3 * statistics.median(statistics.median(r) for r in runs[(case, t)])
               for t in timeouts}
        lines.append(f"| {case[0]} | {case[1]} | "
                     + " | ".join(f"{best[t]:.2f} / {med[t]:.2f}" for t in timeouts) + " | "
                     + " | ".join(f"{best[ref] / best[t]:.3f}" for t in timeouts[1:]) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
