"""`raysearch optimize` per effort level against the study's full grid, for one requirement:
wall time and training epochs until the first qualifying candidate, and in all.

The full grid is the study's stages 2, 4, 5, 6 and 7 at the same input sizes (stage 7 crosses the
sizes with the stage-6 front it just found), every trial to the end, no latency pruning, as the
study ran it. Every run here goes one trial at a time, so "until the first qualifying candidate"
is the order the runs would give on this machine. Latency: a local benchd on this host's CPU.

    python benchmarks/optimize_effort.py [--data ../shared/data/packages] [--res 160 128 96 64]
        [--epochs 8] [--max-latency-ms 0.2] [--min-iou 0.75] [--levels entry intermediate expert grid]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from common import machine
from raysearch.optimize.driver import optimize
from raysearch.optimize.options import OptimizeOptions
from raysearch.records.results import Requirement
from raysearch.search.driver import SearchRequest, run_search
from raysearch.search.options import SearchOptions
from raysearch.search.stages import stage7_space, stage_space
from raysearch.tracking.readback import row_from_run

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"


def trial_runs(client: MlflowClient) -> list:
    """Every trial (child runs that carry a spec), in the order they ended."""
    exp = client.get_experiment_by_name("raysearch")
    runs = client.search_runs([exp.experiment_id], "tags.`raysearch.spec` != ''", max_results=5000)
    return sorted(runs, key=lambda r: r.info.end_time or 0)


def epochs_of(client: MlflowClient, run) -> int:
    if "epochs_trained" in run.data.metrics and run.data.tags.get("stopped_early") != "true":
        return int(run.data.metrics["epochs_trained"])
    return len(client.get_metric_history(run.info.run_id, "val_iou"))


def measure(client: MlflowClient, t0: float, wall: float, max_latency_ms: float, min_iou: float) -> dict:
    runs = trial_runs(client)
    epochs, first, best = 0, None, None
    req = Requirement(max_latency_ms, min_iou)
    for n, r in enumerate(runs, 1):
        epochs += epochs_of(client, r)
        m, row = r.data.metrics, row_from_run(r)
        if r.info.status == "FINISHED" and row.is_candidate() and req.qualifies(row):
            best = m["iou"] if best is None else max(best, m["iou"])
            if first is None:
                first = {"first_s": r.info.end_time / 1000 - t0, "first_epochs": epochs, "first_trials": n,
                         "first_name": r.info.run_name, "first_iou": m["iou"], "first_latency_ms": m["latency_ms"]}
    return {"trials": len(runs), "epochs": epochs, "wall_s": wall, "best_qualifying_iou": best,
            **(first or {"first_s": None, "first_epochs": None, "first_trials": None})}


def run_grid(opts: SearchOptions, res: list[int], epochs: int) -> None:
    for stage in (2, 4, 5, 6, 7):
        space = stage7_space(opts, res) if stage == 7 else stage_space(stage, opts, res)
        run_search(SearchRequest(f"stage{stage}", space, opts, epochs, name=f"grid-stage{stage}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else "synthetic:200")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--res", type=int, nargs="+", default=[160, 128, 96, 64])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-latency-ms", type=float, default=0.2)
    ap.add_argument("--min-iou", type=float, default=0.75)
    ap.add_argument("--levels", nargs="+", default=["entry", "intermediate", "expert", "grid"])
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    results = {}
    for level in args.levels:
        with tempfile.TemporaryDirectory() as tmp:
            search = SearchOptions.from_flags(data=args.data, limit=args.limit, storage_path=f"{tmp}/ray",
                                   tracking_uri=f"sqlite:///{tmp}/mlflow.db", bench_runs=20, bench_warmup_runs=3,
                                   concurrency=1, verbose=0,
                                   max_latency_ms=None if level == "grid" else args.max_latency_ms,
                                   min_iou=None if level == "grid" else args.min_iou)
            t0 = time.time()
            extra = {}
            if level == "grid":
                run_grid(search, args.res, args.epochs)
            else:
                res = optimize(OptimizeOptions(effort=level, search=search, epochs=args.epochs, res=tuple(args.res)))
                extra = {"qualifying": len(res.candidates), "stages": res.stages}
            wall = time.time() - t0
            results[level] = {**measure(MlflowClient(search.tracking.store()), t0, wall, args.max_latency_ms, args.min_iou),
                              **extra}
            print(level, json.dumps(results[level]), flush=True)

    print(f"\nmachine: {machine()}; data {args.data}, inputs {args.res}, {args.epochs} epochs; requirement "
          f"latency <= {args.max_latency_ms} ms (p50, local benchd), IoU >= {args.min_iou}")
    print("| run | trials | training epochs | wall s | first qualifying: s | epochs | trials | its IoU / ms "
          "| best qualifying IoU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for level, r in results.items():
        f = r.get("first_s")
        print(f"| {level} | {r['trials']} | {r['epochs']} | {r['wall_s']:.0f} | "
              + (f"{f:.0f} | {r['first_epochs']} | {r['first_trials']} | {r['first_iou']:.4f} / "
                 f"{r['first_latency_ms']:.3f}" if f is not None else "none | - | - | -")
              + (f" | {r['best_qualifying_iou']:.4f} |" if r["best_qualifying_iou"] is not None else " | - |"))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
