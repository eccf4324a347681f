"""What early stopping saves (issue 32): for each table, the training epochs a search needs to
reach 90%, 95%, 98%, 99% and 99.5% of the grid's hypervolume, with and without stopping, for the
same sampler; the epochs it spends to train (or stop) its whole space; and its shares at 10/25/50%
of the grid's epochs (no loss where there is nothing to save).
Each search is replayed (`raysearch.replay.simulator.simulate`, the product's searcher and
scheduler) over ``--seeds`` seeds on ``--workers`` simulated workers until it has spent the whole
grid's epochs or proposed every configuration.

    python benchmarks/stopping_epochs.py                          # tables L, A, B; 20 seeds, 4 workers
    python benchmarks/stopping_epochs.py --tables L --workers 1 4 16
    python benchmarks/stopping_epochs.py --pairs latency-first:latency-first-front random:random-front

A target a seed never reaches counts as the whole grid's epochs (and is reported as such: "n of 20
reached it"). Saved: 1 - (mean epochs with stopping) / (mean epochs without). Mean +- standard error
over the seeds; one-sided Mann-Whitney p of "stopping needs fewer epochs".
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch.replay.compare import p_greater, standard_error  # noqa: E402
from raysearch.replay.methods import METHOD_KEYS  # noqa: E402
from raysearch.replay.table import load  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = (0.9, 0.95, 0.98, 0.99, 0.995)  # the three, then the last points of the front
BUDGETS = (0.1, 0.25, 0.5)
PAIRS = ("latency-first:latency-first-front", "random:random-front")


def table_path(name: str) -> Path:
    p = Path(name)
    return p if p.suffix == ".gz" else REPO / "benchmarks" / "tables" / f"{name}.jsonl.gz"


def one(args: tuple[str, str, int, int]) -> dict[str, Any]:
    """One replay: epochs to each target, shares at each budget, trials and stopped trials."""
    path, key, seed, workers = args
    from raysearch.replay.simulator import simulate

    warnings.filterwarnings("ignore", category=UserWarning)
    table = load(path)
    r = simulate(table, METHOD_KEYS[key].options(seed, 10 * len(table.configs)), workers=workers,
                 max_epochs=table.grid_epochs)
    reach = {t: next((e for e, _, hv in r.trace if hv >= t), None) for t in TARGETS}
    return {"epochs_to": reach, "shares": [r.share_at(b * table.grid_epochs) for b in BUDGETS],
            "trials": len(r.trials), "stopped": sum(t.outcome == "stopped" for t in r.trials),
            "spent": r.epochs_spent,
            "final": r.trace[-1][2] if r.trace else 0.0}


def summarize(runs: list[dict[str, Any]], grid_epochs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"trials": statistics.mean(r["trials"] for r in runs),
                           "stopped": statistics.mean(r["stopped"] for r in runs),
                           "final_share": statistics.mean(r["final"] for r in runs),
                           "spent": statistics.mean(r["spent"] for r in runs)}
    for t in TARGETS:
        eps = [r["epochs_to"][t] if r["epochs_to"][t] is not None else grid_epochs for r in runs]
        out[f"epochs_to_{t}"] = {"mean": statistics.mean(eps), "se": standard_error(eps), "values": eps,
                                 "reached": sum(r["epochs_to"][t] is not None for r in runs)}
    for i, b in enumerate(BUDGETS):
        vals = [r["shares"][i] for r in runs]
        out[f"share_at_{b}"] = {"mean": statistics.mean(vals), "se": standard_error(vals), "values": vals}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["L", "A", "B"])
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), help="WITHOUT:WITH method keys (raysearch replay's)")
    p.add_argument("--workers", type=int, nargs="+", default=[4])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "stopping-epochs.json"))
    args = p.parse_args()
    pairs = [tuple(x.split(":")) for x in args.pairs]
    if any(len(pair) != 2 for pair in pairs):
        p.error(f"--pairs: each is WITHOUT:WITH, got {' '.join(args.pairs)}")
    keys = sorted({k for pair in pairs for k in pair})
    unknown = [k for k in keys if k not in METHOD_KEYS]
    if unknown:
        p.error(f"--pairs: no such method {', '.join(unknown)} (one of {', '.join(METHOD_KEYS)})")
    doc: dict[str, Any] = {"machine": machine(), "seeds": args.seeds, "targets": TARGETS, "budgets": BUDGETS,
                           "results": []}
    t0 = time.time()
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        for name in args.tables:
            path = str(table_path(name))
            grid_epochs = load(path).grid_epochs
            for workers in args.workers:
                tasks = [(path, k, s, workers) for k in keys for s in range(args.seeds)]
                runs = list(pool.map(one, tasks, chunksize=4))
                by_key = {k: summarize(runs[i * args.seeds:(i + 1) * args.seeds], grid_epochs)
                          for i, k in enumerate(keys)}
                for without, with_ in pairs:
                    a, b = by_key[without], by_key[with_]
                    row = {"table": name, "workers": workers, "without": without, "with": with_,
                           "grid_epochs": grid_epochs, "no_stop": a, "stop": b}
                    doc["results"].append(row)
                    print(f"\n## table {name}, {workers} workers: {with_} against {without} "
                          f"(stopped {b['stopped']:.1f} of {b['trials']:.1f} trials; the whole space in "
                          f"{a['spent']:.0f} -> {b['spent']:.0f} epochs; final share "
                          f"{a['final_share']:.4f} -> {b['final_share']:.4f})")
                    for t in TARGETS:
                        x, y = a[f"epochs_to_{t}"], b[f"epochs_to_{t}"]
                        saved = 1 - y["mean"] / x["mean"] if x["mean"] else 0.0
                        pv = p_greater(x["values"], y["values"])
                        print(f"  {t:.1%} of the grid's HV: {x['mean']:.0f} +- {x['se']:.0f} epochs -> "
                              f"{y['mean']:.0f} +- {y['se']:.0f} (saved {saved:+.1%}, p {pv:.3f}; reached by "
                              f"{x['reached']} / {y['reached']} of {args.seeds})")
                    for bud in BUDGETS:
                        x, y = a[f"share_at_{bud}"], b[f"share_at_{bud}"]
                        behind = x["mean"] - y["mean"]
                        flag = "  BEHIND by more than 1 SE" if behind > max(x["se"], y["se"]) and behind > 1e-9 else ""
                        print(f"  share at {bud:.0%}: {x['mean']:.3f} +- {x['se']:.3f} -> {y['mean']:.3f} +- "
                              f"{y['se']:.3f}{flag}")
    doc["seconds"] = round(time.time() - t0, 1)
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {args.out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
