"""Search efficiency on the stage-6 space at a reduced scale that fits a 2-core machine: the full
grid (every trial to the end, as the study did) against the multi-objective search (Optuna MOTPE
+ ASHA on validation IoU + latency-first pruning): hypervolume reached against training epochs
spent and wall time. Also the share of a trial's time that is not training (export, benchmark,
evaluation, logging).

    python benchmarks/search_efficiency.py [--data ../shared/data/packages] [--res 96] [--epochs 10]

Target (issue 4): >= 95% of the grid's hypervolume for <= 25% of its training epochs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import machine
from raysearch.search import SearchOptions, Space, run_search

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else "synthetic:200")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--res", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--max-latency-ms", type=float, default=None, help="latency budget (prunes before training)")
    ap.add_argument("--hv-ref-latency-ms", type=float, default=2.0)
    ap.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA reduction factor")
    ap.add_argument("--grace-period", type=int, default=1, help="ASHA grace period (epochs)")
    args = ap.parse_args()

    space = Space({"a": [0.25, 0.125], "t": [6, 4, 2], "r": [2, 1]},
                  {"arch": "fastscnn", "pp": 0, "input_hw": args.res})
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("grid", "search"):
            opts = SearchOptions(mode=mode, num_samples=args.num_samples, data=args.data, limit=args.limit,
                                 storage_path=f"{tmp}/ray", tracking_uri=f"sqlite:///{tmp}/mlflow.db", bench_runs=20,
                                 bench_warmup=3, hv_ref_latency_ms=args.hv_ref_latency_ms,
                                 max_latency_ms=args.max_latency_ms if mode == "search" else None,
                                 reduction_factor=args.reduction_factor, grace_period=args.grace_period,
                                 concurrency=1 if mode == "search" else None)
            t0 = time.time()
            out = run_search("stage6", space, opts, epochs=args.epochs, name=f"efficiency-{mode}")
            wall = time.time() - t0
            done = [r for r in out.rows if r.value("time_total_s") and r.value("train_seconds") is not None]
            trial_s = sum(r.value("time_total_s") for r in done)
            train_s = sum(r.value("train_seconds") for r in done)
            rows[mode] = {"trials": len(out.rows), "epochs": out.epochs_spent, "hypervolume": round(out.hypervolume, 4),
                          "wall_s": round(wall, 1), "front": len(out.front),
                          "non_training_share": round(1 - train_s / trial_s, 3) if trial_s else None,
                          "non_training_s_per_trial": round((trial_s - train_s) / len(done), 2) if done else None}
            print(json.dumps({mode: rows[mode]}), flush=True)
    g, s = rows["grid"], rows["search"]
    print(f"\nMachine: {machine()}; data {args.data}; stage-6 space (12 models) at {args.res}x{args.res}, "
          f"{args.epochs} epochs per full trial; hypervolume reference iou=0, latency={args.hv_ref_latency_ms} ms\n")
    print("| run | trials | training epochs | wall s | hypervolume | Pareto size | non-training share of trial time |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['trials']} | {r['epochs']} | {r['wall_s']} | {r['hypervolume']} | {r['front']} | "
              f"{r['non_training_share']:.1%} ({r['non_training_s_per_trial']} s/trial) |")
    print(f"\nsearch / grid: hypervolume {s['hypervolume'] / g['hypervolume']:.1%}, epochs {s['epochs'] / g['epochs']:.1%}, "
          f"wall time {s['wall_s'] / g['wall_s']:.1%}")


if __name__ == "__main__":
    main()
