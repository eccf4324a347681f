"""How `--scheduler front` (`raysearch.search.scheduler.FrontStopping`) behaves as its two settings move,
replayed on the recorded tables: latency-first with front stopping at several (margin, finished
trials before any stop) against latency-first without stopping, 20 seeds each, at 1, 4 and 16
simulated workers. This is the sweep the defaults (margin 0.01, 4 finished trials) were chosen
from; the figures are in BENCHMARKS.md. The choice was made on these two tables, so they are
in-sample: a third table would test it out of sample.

    python benchmarks/front_stopping_sweep.py                   # tables A and B, 1/4/16 workers
    python benchmarks/front_stopping_sweep.py --tables A --workers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

from raysearch.replay.simulator import simulate, table_latencies
from raysearch.replay.table import load
from raysearch.search.latency_first import LatencyFirstSearch
from raysearch.search.options import SearchOptions
from raysearch.search.scheduler import FrontStopping

REPO = Path(__file__).resolve().parents[1]
BUDGETS = (0.1, 0.25, 0.5)
SETTINGS = [None, (0.0, 4), (0.005, 4), (0.01, 2), (0.01, 3), (0.01, 4), (0.01, 5), (0.01, 6), (0.02, 2),
            (0.02, 3), (0.02, 4), (0.03, 2)]  # (margin, min_finished); None: no stopping


def replay(table, latencies: dict, setting, seed: int, workers: int) -> tuple[list[float], int]:
    opts = SearchOptions.from_flags(mode="search", sampler="latency-first", scheduler="none" if setting is None else "front",
                         seed=seed, num_samples=10 * len(table.configs))
    scheduler = None if setting is None else FrontStopping(margin=setting[0], min_finished=setting[1])
    r = simulate(table, opts, workers=workers, max_epochs=max(BUDGETS) * table.grid_epochs,
                 objects=(LatencyFirstSearch(latencies, seed=seed), scheduler))
    return [r.share_at(b * table.grid_epochs) for b in BUDGETS], sum(t.outcome == "stopped" for t in r.trials)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["A", "B"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "front-stopping-sweep.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = []
    print("| table | workers | margin | finished before a stop | at 10% | at 25% | at 50% | stopped |")
    print("|---|---:|---:|---:|---|---|---|---:|")
    for name in args.tables:
        table = load(REPO / "benchmarks" / "tables" / f"{name}.jsonl.gz")
        latencies = table_latencies(table, "host")
        for workers in args.workers:
            for setting in SETTINGS:
                t0 = time.time()
                runs = [replay(table, latencies, setting, seed, workers) for seed in range(args.seeds)]
                cells = []
                for i in range(len(BUDGETS)):
                    vals = [r[0][i] for r in runs]
                    cells.append((statistics.fmean(vals), statistics.stdev(vals) / len(vals) ** 0.5))
                stopped = statistics.fmean(r[1] for r in runs)
                rows.append({"table": name, "workers": workers, "margin": None if setting is None else setting[0],
                             "min_finished": None if setting is None else setting[1],
                             "shares": {f"{b:g}": {"mean": round(m, 4), "se": round(se, 4)}
                                        for b, (m, se) in zip(BUDGETS, cells)}, "stopped_mean": round(stopped, 1),
                             "seconds": round(time.time() - t0, 1)})
                what = ("no stopping", "-") if setting is None else (f"{setting[0]:g}", str(setting[1]))
                print(f"| {name} | {workers} | {what[0]} | {what[1]} | "
                      + " | ".join(f"{m:.4f} +- {se:.4f}" for m, se in cells) + f" | {stopped:.1f} |", flush=True)
    Path(args.out).write_text(json.dumps({"seeds": args.seeds, "budgets": list(BUDGETS), "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
