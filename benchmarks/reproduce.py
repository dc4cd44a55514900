"""Reproduce the paper's accuracy tables: Table 1 (MLP) and Table 3 (CNN).

    python benchmarks/reproduce.py run    [--table 1|3] [--rules ...] [--data ...]
                                          [--seeds 0,1,2] [--epochs 100] [--jobs 1]
    python benchmarks/reproduce.py report [--epochs 100]

``run`` trains every (rule, dataset, seed) of a table with the paper's architecture for the
dataset (``--model mlp``: 784-256×5-10 on MNIST-like data, 3072-1024×3-C on CIFAR; ``--model cnn``:
the five-block CIFAR CNN) and the rule's default configuration. It builds a sweep spec
(``table_spec``: one group per dataset and rule) and runs it with ``ccledu.sweep`` (the same
machinery as ``ccledu sweep``: local process pool, or Dask with ``--scheduler``), so every run
lives in ``benchmarks/results/reproduce/e<epochs>/[cnn/]runs/<config hash>/metrics.json``
(Table 3 under ``cnn/``) beside the sweep's ``results.csv`` / ``results.md``. Every run records
the test accuracy of every epoch (``track_test``), so the report can show what other checkpoint
choices would give; the headline number is the public code's choice, the epoch with the lowest
validation loss.

``run`` is resumable: a finished run (its folder is the hash of its resolved configuration) is
not redone; a missing or torn one is. A dataset whose official files are not on this machine is
skipped with the reason (CIFAR: put the archives under $CCLEDU_DATA/cifar10/ and
$CCLEDU_DATA/cifar100/).

``report`` collects whatever has finished into ``benchmarks/results/reproduce/e<epochs>/REPORT.md``
(mean ± std of the test accuracy over seeds, side by side with the paper; the configuration each
row trains with; learning curves) and appends that folder's NOTES.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE / "results" / "reproduce"

#: Kao & Hariharan (NeurIPS 2024): test accuracy %, mean ± std over 5 seeds, 100 epochs
TABLES = {
    "1": {"title": "Table 1 (MLP)", "model": "mlp", "paper": {
        "mnist": {"bp": (98.19, 0.10), "fa": (96.96, 0.05), "dfa": (97.27, 0.06), "ccl": (98.13, 0.10)},
        "fashion-mnist": {"bp": (89.58, 0.25), "fa": (87.38, 0.12), "dfa": (87.35, 0.99),
                          "ccl": (88.58, 0.29)},
        "cifar10": {"bp": (50.03, 0.31), "fa": (45.76, 0.38), "dfa": (42.86, 1.94), "ccl": (52.73, 0.59)},
        "cifar100": {"bp": (22.55, 0.19), "fa": (22.13, 0.41), "dfa": (19.87, 1.50), "ccl": (21.76, 0.22)},
    }},
    "3": {"title": "Table 3 (CNN)", "model": "cnn", "paper": {
        "cifar10": {"bp": (87.12, 1.76), "ccl": (82.94, 0.53)},
        "cifar100": {"bp": (51.92, 0.48), "ccl": (56.29, 0.25)},
    }},
}
#: what `run` trains when --data / --rules are not given
DEFAULT_DATA = {"1": "mnist,fashion-mnist,cifar10,cifar100", "3": "cifar10,cifar100"}
#: settings shown in the report's configuration tables
CONFIG_KEYS = ("model", "batch_size", "optimizer", "lr_forward", "lr_feedback", "momentum_forward",
               "weight_decay_forward", "clip_forward", "clip_feedback", "centralize", "warmup",
               "cosine_tmax", "rule_options")


def table_root(epochs: int, table: str, root: Path = ROOT) -> Path:
    """The sweep folder of a table: ``<root>/e<epochs>/`` (Table 3: ``.../cnn/``); its runs are
    in ``runs/<config hash>/``."""
    base = Path(root) / f"e{epochs}"
    return base if TABLES[table]["model"] == "mlp" else base / TABLES[table]["model"]


def table_spec(table: str, datas: list, rules: list, seeds: list, epochs: int) -> dict:
    """The sweep spec of a table: one group per (dataset, rule), each rule's default
    configuration, the paper's architecture for the dataset, every epoch's test accuracy
    recorded (``track_test``)."""
    return {"name": f"{TABLES[table]['title']}, {epochs} epochs, each rule's default configuration",
            "seeds": list(seeds),
            "base": {"model": TABLES[table]["model"], "epochs": epochs, "track_test": True},
            "groups": [{"name": f"{data}/{rule}", "set": {"rule": rule, "data": data}}
                       for data in datas for rule in rules]}


def missing_data(data: str) -> str | None:
    """None when the official files of ``data`` are on this machine, else why not (one line)."""
    from ccledu.data import dataset_dir

    try:
        dataset_dir(data)
    except FileNotFoundError as e:
        first = str(e).splitlines()[0].removesuffix(" in one of")
        return f"{first} (put them in $CCLEDU_DATA/{data}/)"
    return None


def cmd_run(args):
    """Train the missing runs of a table through ``ccledu.sweep`` (the one mechanism for grids)."""
    from ccledu.sweep import run_sweep

    table = TABLES[args.table]
    rules = (args.rules or ",".join(next(iter(table["paper"].values())))).split(",")
    datas = []
    for data in (args.data or DEFAULT_DATA[args.table]).split(","):
        if data not in table["paper"]:
            raise SystemExit(f"reproduce.py: {data!r} is not in {table['title']}; "
                             f"choose from {sorted(table['paper'])}")
        why = missing_data(data)
        if why:
            print(f"skip {data}: {why}")
            continue
        datas.append(data)
    if not datas:
        return 0
    spec = table_spec(args.table, datas, rules, [int(s) for s in args.seeds.split(",")], args.epochs)
    _, report = run_sweep(spec, root=table_root(args.epochs, args.table, args.root),
                          workers=args.jobs, threads=args.threads, progress=not args.quiet,
                          scheduler=args.scheduler)
    if report["failed"]:
        print(f"{len(report['failed'])} run(s) failed; their folders have no new metrics.json "
              f"(run again to retry)")
    return 1 if report["failed"] else 0


def collect(epochs: int, table: str, root: Path = ROOT) -> dict:
    """{data: {rule: [metrics, ...]}} of the finished runs of ``table`` (its sweep folder)."""
    from ccledu.sweep import read_metrics, run_status

    out = {}
    for d in sorted(table_root(epochs, table, root).glob("runs/*")):
        m = read_metrics(d)
        if run_status(m) != "finished" or "config" not in m:
            continue
        data, rule = m["config"]["data"], m["config"]["rule"]
        if data in TABLES[table]["paper"] and m["config"].get("epochs") == epochs:
            out.setdefault(data, {}).setdefault(rule, []).append(m)
    for by_rule in out.values():
        for runs in by_rule.values():
            runs.sort(key=lambda m: m["config"]["seed"])
    return out


def mean_std(fractions) -> str:
    a = 100 * np.asarray(fractions, dtype=float)
    return f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else float('nan'):.2f}"


def table_lines(table: str, res: dict) -> list:
    lines = ["| data | rule | seeds | lowest val loss (public code) | paper | difference | "
             "highest val accuracy | last epoch | s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for data, by_rule in TABLES[table]["paper"].items():
        why = missing_data(data)
        for rule, p in by_rule.items():
            runs = res.get(data, {}).get(rule, [])
            if not runs:
                reason = "not run: no official files here" if why else "not run yet"
                lines.append(f"| {data} | {rule} | 0 | {reason} | {p[0]:.2f} ± {p[1]:.2f} | — | — | — | — |")
                continue
            acc = np.array([m["test_accuracy"] for m in runs])
            spe = np.mean([np.mean([h["train_seconds"] for h in m["history"]]) for m in runs])
            alt = []
            for choice in ("highest_val_accuracy", "last_epoch"):
                vals = [m["selections"][choice]["test_accuracy"] for m in runs if "selections" in m]
                note = "" if len(vals) == len(runs) else f" ({len(vals)} of {len(runs)} runs)"
                alt.append(mean_std(vals) + note if vals else "not recorded")
            lines.append(f"| {data} | {rule} | {len(acc)} | {mean_std(acc)} | {p[0]:.2f} ± {p[1]:.2f} | "
                         f"{100 * acc.mean() - p[0]:+.2f} | {alt[0]} | {alt[1]} | {spe:.1f} |")
    return lines


def config_lines(table: str, res: dict) -> list:
    """The settings every row trains with: from its runs' metrics.json, else as ``ccledu train``
    resolves them now (so rows that could not run still show the configuration that is ready)."""
    from ccledu.train import TrainConfig, resolve

    lines = ["| data | rule | source | " + " | ".join(CONFIG_KEYS) + " |",
             "|---|---|---|" + "---|" * len(CONFIG_KEYS)]
    for data, by_rule in TABLES[table]["paper"].items():
        for rule in by_rule:
            runs = res.get(data, {}).get(rule, [])
            if runs:
                cfg, source = runs[0]["config"], "runs"
            else:
                cfg = dataclasses.asdict(resolve(TrainConfig(rule=rule, model=TABLES[table]["model"],
                                                             data=data)))
                source = "resolved"
            lines.append(f"| {data} | {rule} | {source} | "
                         + " | ".join(str(cfg.get(k, "—")) for k in CONFIG_KEYS) + " |")
    return lines


def plot_curves(data: str, by_rule: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for rule, runs in by_rule.items():
        curves = np.array([[h["val_accuracy"] for h in m["history"]] for m in runs])
        ep = np.arange(1, curves.shape[1] + 1)
        axes[0].plot(ep, 100 * curves.mean(0), label=rule)
        losses = np.array([[h["train_loss"] for h in m["history"]] for m in runs])
        axes[1].plot(ep, losses.mean(0), label=rule)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[1].set_ylabel("training loss (rule's objective)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
    fig.suptitle(f"{data}: mean over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_report(args):
    base = Path(args.root) / f"e{args.epochs}"
    base.mkdir(parents=True, exist_ok=True)
    e = args.epochs
    lines = [f"# Reproduction of the paper's accuracy tables, {e} epochs", "",
             "Paper: Kao & Hariharan, NeurIPS 2024, Tables 1 and 3 (test accuracy %, mean ± std over "
             "5 seeds, 100 epochs). ccledu: the paper's architecture for each dataset, each rule's "
             "default configuration (tables below). The headline column is the public code's "
             "protocol: the test accuracy of the epoch with the lowest validation loss (10 % of the "
             "training set held out). The two columns after it are the test accuracy of the same "
             "runs under other checkpoint choices (each run records the test accuracy of every "
             "epoch, `--track-test`): the epoch with the highest validation accuracy, and the last "
             "epoch. All three choices look only at validation data.", "",
             f"Commands: `python benchmarks/reproduce.py run --table 1 --epochs {e}` (and "
             f"`--table 3`), then `python benchmarks/reproduce.py report --epochs {e}`. One run is "
             f"`ccledu train --rule RULE --model mlp|cnn --data DATA --epochs {e} --seed SEED "
             f"--track-test`. `run` is a sweep (`ccledu.sweep`): every run is in "
             f"`runs/<config hash>/` beside this report and listed in `results.csv`.", ""]
    every = []
    for key, table in TABLES.items():
        res = collect(e, key, args.root)
        every += [m for by_rule in res.values() for runs in by_rule.values() for m in runs]
        lines += [f"## {table['title']}", ""] + table_lines(key, res) + [""]
        lines += [f"Configurations ({table['title']}; 'resolved' rows had no finished run and show "
                  f"what `ccledu train` would use):", ""] + config_lines(key, res) + [""]
        for data, by_rule in ((d, res[d]) for d in table["paper"] if d in res):
            name = f"curves_{'' if table['model'] == 'mlp' else table['model'] + '_'}{data}.png"
            plot_curves(data, by_rule, base / name)
            lines += [f"![{data}]({name})", ""]
    machines = sorted({json.dumps({k: v for k, v in m.get("machine", {"machine": "not recorded"}).items()
                                   if k != "date"}, sort_keys=True) for m in every})
    dates = sorted(m["machine"]["date"] for m in every if "date" in m.get("machine", {}))
    lines += ["## Where and how", "",
              "s/epoch is the wall time of one epoch's training steps (`train_seconds`), on a "
              "machine that may have been shared with other jobs; clean step timings are in "
              "`benchmarks/results/speed_cpu.md`. 'not run: no official files here' rows need the "
              "dataset's archives (no machine here reaches the CIFAR host); with "
              "`$CCLEDU_DATA/cifar10/cifar-10-python.tar.gz` (and `cifar100/cifar-100-python.tar.gz`) "
              "present, the same `run` commands train them.", "",
              "Machines the runs were trained on (from their metrics.json): " + "; ".join(
                  ", ".join(f"{k} {v}" for k, v in json.loads(m).items()) for m in machines)
              + (f"; runs finished between {dates[0]} and {dates[-1]}." if dates else "."), ""]
    notes = base / "NOTES.md"
    if notes.exists():
        lines += ["## Notes", "", notes.read_text().strip(), ""]
    (base / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {base / 'REPORT.md'}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="Reproduce the paper's accuracy tables (1: MLP, 3: CNN).")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--table", default="1", choices=sorted(TABLES), help="1: MLP (default), 3: CNN")
    r.add_argument("--rules", help="comma-separated (default: every rule of the table)")
    r.add_argument("--data", help="comma-separated (default: every dataset of the table; "
                   "datasets without files here are skipped)")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--epochs", type=int, default=100)
    r.add_argument("--jobs", type=int, default=1, help="runs in parallel (local process pool)")
    r.add_argument("--threads", type=int, default=1, help="BLAS threads per run")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786) "
                   "or 'local', as for `ccledu sweep` (default: the local process pool)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--root", type=Path, default=ROOT, help="results folder (default %(default)s)")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser("report")
    q.add_argument("--epochs", type=int, default=100)
    q.add_argument("--root", type=Path, default=ROOT, help="results folder (default %(default)s)")
    q.set_defaults(func=cmd_report)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
