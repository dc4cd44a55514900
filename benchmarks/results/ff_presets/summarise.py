"""Collect the per-epoch curves of FF peer-preset runs into curves.json and curves.png.

    python benchmarks/results/ff_presets/summarise.py NAME=RUN_DIR[:CPU_SECONDS] ...

RUN_DIR is an ``--out`` folder of ``ccledu train --rule ff --preset NAME``; the history is read
from its metrics.json (a finished or interrupted run) or else from checkpoint.npz (the last
completed epoch). CPU_SECONDS (user + system time of the process, e.g. from ``ps -o time``)
is stored beside the curve so the cost per epoch can be projected.
"""
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def history(run: Path) -> tuple[list, str]:
    m = run / "metrics.json"
    if m.exists():
        d = json.loads(m.read_text())
        if d.get("history"):
            return d["history"], d.get("status", "?")
    ck = run / "checkpoint.npz"
    if ck.exists():
        z = np.load(ck, allow_pickle=False)
        st = json.loads(str(z["state"]))
        return st["history"], f"checkpoint after epoch {st['epoch']}"
    return [], "no epoch finished"


def main(argv):
    out = {}
    for arg in argv:
        name, rest = arg.split("=", 1)
        run, _, cpu = rest.partition(":")
        h, status = history(Path(run))
        keep = ("epoch", "train_loss", "val_loss", "val_accuracy", "test_accuracy", "train_seconds")
        rows = [{k: r[k] for k in keep if k in r} for r in h]
        out[name] = {"run": run, "status": status, "epochs": len(rows), "history": rows,
                     "cpu_seconds": float(cpu) if cpu else None,
                     "train_seconds": sum(r.get("train_seconds", 0.0) for r in rows)}
        m = Path(run) / "metrics.json"
        if m.exists():
            d = json.loads(m.read_text())
            for k in ("test_accuracy", "best_epoch", "selections", "resumed_after_epoch"):
                if k in d:
                    out[name][k] = d[k]
    (HERE / "curves.json").write_text(json.dumps(out, indent=1) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, d in out.items():
        rows = [r for r in d["history"] if "test_accuracy" in r]
        if rows:
            ax.plot([r["epoch"] for r in rows], [100 * (1 - r["test_accuracy"]) for r in rows],
                    marker="o", label=f"{name} (ccledu)")
    for name, err in (("loewex", 1.45), ("mpezeshki", 6.84)):
        if any(n.split("-")[0] == name for n in out):      # "mpezeshki-together" too
            ax.axhline(err, ls="--", lw=0.8, color="grey")
            ax.text(0.99, err, f" {name} published {err} %", va="bottom", ha="right",
                    transform=ax.get_yaxis_transform(), fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error %")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("FF peer presets on MNIST: test error at the evaluated epochs", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=120)
    for name, d in out.items():
        print(name, d["status"], [(r["epoch"], r["test_accuracy"]) for r in d["history"]
                                  if "test_accuracy" in r], d.get("selections"))


if __name__ == "__main__":
    main(sys.argv[1:])
