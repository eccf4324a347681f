"""Search efficiency where latency matters: stage 7's shape (input 128, 96, 64 x the 12 models of
stage 6, 36 points) on the study's data. For every seed: the full grid (every trial to the end),
then, at the same number of trials, random sampling without stopping, TPE + ASHA on validation
IoU, TPE + Pareto-ASHA and NSGA-II + Pareto-ASHA. Per method: the normalized hypervolume as a
share of that seed's grid (all measured in the grid's box: IoU 0..1 x latency 0..the slowest
latency of the grid), training epochs as a share of the grid's, wall time, how many of the
grid front's points the method's front recovered, and IGD+ to the grid front (in the box's units).

Every run is one trial at a time (the local benchd times on a CPU that nothing else uses in
between), the methods one after the other; the untrained latencies are cached in the storage and
shared by every run.

    python benchmarks/search_efficiency.py [--data ../shared/data/packages] [--seeds 0 1 2]
        [--epochs 10] [--trials 12] [--out runs/search_efficiency.json] [--plot docs/search-efficiency-fronts.png]

Target (issue 11): Pareto-ASHA >= 97% of the grid's normalized hypervolume for <= 25% of its
epochs on average, and ahead of ASHA(IoU) by more than the spread between seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import tempfile
import time
from pathlib import Path

from common import machine
from raysearch.records.pareto import default_reference, normalized_hypervolume, pareto_front
from raysearch.records.results import STOPPED, candidates
from raysearch.search.driver import SearchRequest, run_search
from raysearch.search.options import SearchOptions, Space

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "packages"
# (label, mode, sampler, scheduler)
METHODS = [("grid", "grid", "tpe", "none"), ("random, no stopping", "search", "random", "none"),
           ("TPE + ASHA(IoU)", "search", "tpe", "asha"), ("TPE + Pareto-ASHA", "search", "tpe", "pareto-asha"),
           ("NSGA-II + Pareto-ASHA", "search", "nsga2", "pareto-asha")]


def igd_plus(reference_front: list, front: list, ref_ms: float) -> float:
    """IGD+ of ``front`` to ``reference_front`` in the box's units (IoU, latency / ref_ms): the
    mean over reference points of the distance to the nearest point that is not better."""
    if not front:
        return math.inf
    costs = [(-r.iou, r.latency_ms / ref_ms) for r in front]
    dists = []
    for z in reference_front:
        zc = (-z.iou, z.latency_ms / ref_ms)
        dists.append(min(math.hypot(max(a[0] - zc[0], 0.0), max(a[1] - zc[1], 0.0)) for a in costs))
    return statistics.fmean(dists)


def front_of(rows: list) -> list:
    cands = candidates(rows)
    return [cands[i] for i in pareto_front(cands)]


def plot(results: dict, seed: int, path: Path) -> None:
    from raysearch.reporting.plots import new_figure, save_figure

    runs = results[seed]
    fig = new_figure(4.0 * len(runs), 4.0)
    grid_front = front_of(runs["grid"]["rows"])
    for n, (label, run) in enumerate(runs.items(), 1):
        ax = fig.add_subplot(1, len(runs), n)
        every = candidates(runs["grid"]["rows"])
        ax.scatter([1000 / r.latency_ms for r in every], [r.iou for r in every], s=10, color="0.8", label="grid")
        gf = sorted(grid_front, key=lambda r: r.latency_ms)
        ax.plot([1000 / r.latency_ms for r in gf], [r.iou for r in gf], color="0.5", lw=1, drawstyle="steps-pre")
        mine = candidates(run["rows"])
        ax.scatter([1000 / r.latency_ms for r in mine], [r.iou for r in mine], s=14, color="tab:blue", label=label)
        stopped = [r for r in run["rows"] if r.status == STOPPED and r.iou is not None and r.latency_ms]
        ax.scatter([1000 / r.latency_ms for r in stopped], [r.iou for r in stopped], s=18, marker="x", color="tab:red",
                   label="stopped (IoU at the stop)")
        mf = sorted(front_of(run["rows"]), key=lambda r: r.latency_ms)
        ax.plot([1000 / r.latency_ms for r in mf], [r.iou for r in mf], color="tab:blue", lw=1.5, drawstyle="steps-pre")
        ax.set_title(f"{label}\nHV {run['hv_share']:.1%} of grid, {run['epoch_share']:.0%} of its epochs", fontsize=9)
        ax.set_xlabel("frames per second")
        if n == 1:
            ax.set_ylabel("test IoU")
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(True, color="0.9")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else "synthetic:200")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--res", type=int, nargs="+", default=[128, 96, 64])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--trials", type=int, default=12, help="trials of every searched method")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS], help="labels of the methods to run")
    ap.add_argument("--out", default="runs/search_efficiency.json")
    ap.add_argument("--plot", default="docs/search-efficiency-fronts.png")
    args = ap.parse_args()

    space = Space({"input_hw": args.res, "a": [0.25, 0.125], "t": [6, 4, 2], "r": [2, 1]}, {"arch": "fastscnn", "pp": 0})
    results: dict[int, dict] = {}
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            results[seed] = {}
            for label, mode, sampler, scheduler in METHODS:
                if label != "grid" and label not in args.methods:
                    continue
                opts = SearchOptions.from_flags(mode=mode, num_samples=args.trials, data=args.data, limit=args.limit, seed=seed,
                                     sampler=sampler, scheduler=scheduler, storage_path=f"{tmp}/ray",
                                     tracking_uri=f"sqlite:///{tmp}/mlflow.db", bench_runs=20, bench_warmup_runs=3,
                                     concurrency=1)
                t0 = time.time()
                out = run_search(SearchRequest("efficiency", space, opts, args.epochs,
                                               name=f"s{seed}-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")))
                results[seed][label] = {"rows": out.rows, "epochs": out.epochs_spent, "wall_s": time.time() - t0}
            grid = results[seed]["grid"]
            ref = default_reference(None, [r.latency_ms for r in grid["rows"]])  # the grid's box
            grid_hv = normalized_hypervolume(candidates(grid["rows"]), ref)
            grid_front = front_of(grid["rows"])
            grid_specs = {r.spec for r in grid_front}
            for label, run in results[seed].items():
                front = front_of(run["rows"])
                run.update(hv=normalized_hypervolume(candidates(run["rows"]), ref),
                           epoch_share=run["epochs"] / grid["epochs"],
                           recovered=len(grid_specs & {r.spec for r in front}),
                           igd_plus=igd_plus(grid_front, front, ref["latency_ms"]))
                run["hv_share"] = run["hv"] / grid_hv
                line = {"seed": seed, "method": label, "trials": len(run["rows"]), "epochs": run["epochs"],
                        "epoch_share": round(run["epoch_share"], 4), "hv_normalized": round(run["hv"], 4),
                        "hv_share": round(run["hv_share"], 4), "wall_s": round(run["wall_s"], 1),
                        "recovered": f"{run['recovered']}/{len(grid_front)}", "igd_plus": round(run["igd_plus"], 4),
                        "stopped": sum(r.status == STOPPED for r in run["rows"]),
                        "ref_latency_ms": round(ref["latency_ms"], 4)}
                summary.append(line)
                print(json.dumps(line), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(summary, indent=1))  # after every seed: a long run keeps what it did
            if seed == args.seeds[0]:
                plot(results, seed, Path(args.plot))

    print(f"\nMachine: {machine()}; data {args.data}; {len(args.res)} inputs x 12 models = {space.size()} points, "
          f"{args.epochs} epochs per full trial, {args.trials} trials per searched method, seeds {args.seeds}\n")
    print("| method | normalized HV, share of the grid's (mean ± sd) | epochs, share of the grid's | wall s | "
          "grid front recovered | IGD+ | stopped trials |")
    print("|---|---|---|---|---|---|---|")

    def ms(key: str, rows: list, fmt: str) -> str:
        vals = [r[key] for r in rows]
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{format(statistics.fmean(vals), fmt)} ± {format(sd, fmt)}"

    for label in dict.fromkeys(s["method"] for s in summary):
        rows = [s for s in summary if s["method"] == label]
        print(f"| {label} | {ms('hv_share', rows, '.1%')} | {ms('epoch_share', rows, '.1%')} | "
              f"{ms('wall_s', rows, '.0f')} | {', '.join(r['recovered'] for r in rows)} | {ms('igd_plus', rows, '.4f')} | "
              f"{ms('stopped', rows, '.1f')} |")


if __name__ == "__main__":
    main()
