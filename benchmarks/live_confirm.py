"""Live confirmation of the replay (issue 21): run the default search for real on space A (the
study's stage 7) at the scale of table A, for several seeds, and set each live search's
hypervolume share against the replay's 5-95% band for the same method, budget and concurrency.

    python benchmarks/live_confirm.py                      # 3 seeds, then the comparison
    python benchmarks/live_confirm.py --seeds 0 1 2 3      # more seeds
    python benchmarks/live_confirm.py --report-only        # the comparison of what already ran

Each live search is `python raysearch/stage7.py --mode search` with the product's defaults (sampler,
scheduler, a local benchd on its reserved core, a local Ray on the other cores) and the table's
scale: the study's data with `--limit 120`, 20 epochs, the table's latency settings (1 thread,
+-1% precision, 2-30 s per model). It is interrupted (as Ctrl-C interrupts it) once it has spent
more than the largest budget (a share of the grid's epochs: 36 x 20 = 720): nothing after that counts.

Resumable: a search that finished or spent the budget is read back from MLflow, one interrupted
before is resumed (`--resume`), one never started is started. Everything goes to
`runs/live-confirm/` (MLflow SQLite store, Ray storage); the figures go to
`benchmarks/results/live-A-host.json`.

How a live search is scored, as the replay scores one (`raysearch.replay.simulator`): its front after
each trial that ended trained to the end, in the table's box (IoU 0..1 x latency 0..the table's slowest
configuration), divided by the grid's hypervolume from the table; the share at a budget is the last
one reached with at most that many epochs spent (epochs counted from the epoch reports logged to
MLflow before the trial ended). Latency and IoU are the live search's own measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from raysearch import objectives as obj  # noqa: E402
from raysearch.records.pareto import hypervolume  # noqa: E402
from raysearch.replay.compare import compare  # noqa: E402
from raysearch.replay.methods import METHOD_KEYS, default_label  # noqa: E402
from raysearch.replay.simulator import grid_hypervolume, hv_box  # noqa: E402
from raysearch.replay.table import load  # noqa: E402
from raysearch.tracking.readback import row_from_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "tables" / "A.jsonl.gz"
DATA = REPO.parent / "shared" / "data" / "packages"
WORK = REPO / "runs" / "live-confirm"
OUT = REPO / "benchmarks" / "results" / "live-A-host.json"
EXPERIMENT = "live-confirm"
BUDGETS = (0.1, 0.25)


def search_name(seed: int) -> str:
    return f"live-A-seed{seed}"


def tracking_uri() -> str:
    return f"sqlite:///{WORK / 'mlflow.db'}"


def find_parent(client, name: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_SEARCH}` = '{name}'",
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def epochs_spent(client, parent) -> int:
    """Training epochs the search's trials reported so far (MLflow's per-epoch validation IoU)."""
    kids = client.search_runs([parent.info.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
    return sum(len({m.step for m in client.get_metric_history(k.info.run_id, obj.VAL_IOU.name) if m.step >= 1})
               for k in kids)


def done(client, parent, budget: int) -> bool:
    return parent is not None and (parent.info.status == "FINISHED" or epochs_spent(client, parent) > budget)


def run_search(client, seed: int, budget: int, concurrency: int) -> None:
    """The live search of ``seed``, until it has spent more than ``budget`` epochs (then it is
    interrupted as Ctrl-C interrupts it: nothing it does after that can count) or ran out of
    configurations."""
    parent = find_parent(client, search_name(seed))
    if done(client, parent, budget):
        print(f"seed {seed}: {search_name(seed)} already ran", flush=True)
        return
    cmd = [sys.executable, str(REPO / "raysearch" / "stage7.py"), "--mode", "search", "--num-samples", "36",
           "--epochs", "20", "--data", str(DATA), "--limit", "120", "--seed", str(seed),
           "--name", search_name(seed), "--experiment", EXPERIMENT, "--tracking-uri", tracking_uri(),
           "--storage-path", str(WORK / "ray"), "--concurrency", str(concurrency),
           "--bench-intra-op-threads", "1", "--bench-target-rel-ci", "0.01", "--bench-runs", "50",
           "--bench-min-duration-s", "2", "--bench-max-duration-s", "30"]
    if parent is not None:
        cmd.append("--resume")
    print(f"seed {seed}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO)
    while proc.poll() is None:
        time.sleep(15)
        parent = find_parent(client, search_name(seed))
        if parent is not None and epochs_spent(client, parent) > budget:
            print(f"seed {seed}: past {budget} epochs: interrupting the search", flush=True)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=600)
    print(f"seed {seed}: done in {(time.time() - t0) / 60:.1f} min (exit {proc.returncode})", flush=True)


def live_trace(client, parent, table) -> dict:
    """(epochs spent, share) after each trial that ended trained, as the replay traces a search."""
    ref, grid_hv = hv_box(table, "host"), grid_hypervolume(table, "host")
    kids = client.search_runs([parent.info.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
    epoch_times: list[int] = []
    ended = []
    kid_status = {k.info.run_id: k.info.status for k in kids}
    for kid in kids:
        steps = {m.step: m.timestamp for m in client.get_metric_history(kid.info.run_id, obj.VAL_IOU.name)}
        epoch_times += [ts for step, ts in steps.items() if step >= 1]
        row = row_from_run(kid)
        ended.append((kid.info.end_time or math.inf, row))
    ended.sort(key=lambda e: e[0])
    points, trace, trials = [], [], []
    for end, row in ended:
        spent = sum(ts <= end for ts in epoch_times)
        status = "interrupted" if kid_status[row.run_id] == "KILLED" else row.status  # past the budget
        trials.append({"spec": row.spec.name if row.spec else row.name, "status": status,
                       "iou": row.iou, "latency_ms": row.latency_ms, "epochs_spent_at_end": spent})
        if row.is_candidate():
            points.append({obj.IOU.name: row.iou, obj.LATENCY_MS.name: row.latency_ms})
            trace.append((spent, hypervolume(points, ref) / grid_hv))
    return {"trace": trace, "trials": trials, "epochs_spent": len(epoch_times)}


def share_at(trace: list, epochs: float) -> float:
    reached = [share for spent, share in trace if spent <= epochs]
    return max(reached) if reached else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--concurrency", type=int, default=1,
                   help="trials at once (default 1: the one core a local Ray gets on this 2-CPU machine)")
    p.add_argument("--replay-seeds", type=int, default=100, help="replays for the band (default %(default)s)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    from mlflow import MlflowClient

    table = load(TABLE)
    budget = round(max(BUDGETS) * table.grid_epochs)
    WORK.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri())
    if not args.report_only:
        for seed in args.seeds:
            run_search(client, seed, budget, args.concurrency)

    method = next(m for m in METHOD_KEYS.values() if m.label == default_label())
    cmp = compare(TABLE, methods=[method], seeds=args.replay_seeds, workers=args.concurrency, budgets=BUDGETS)
    band = {}
    for i, b in enumerate(BUDGETS):
        vals = sorted(r.shares[i] for r in cmp.results[method.label])
        q = statistics.quantiles(vals, n=20, method="inclusive")
        band[f"{b:g}"] = {"p5": round(q[0], 4), "p95": round(q[-1], 4), "mean": round(statistics.fmean(vals), 4)}
    live = {}
    for seed in args.seeds:
        parent = find_parent(client, search_name(seed))
        if not done(client, parent, budget):
            print(f"seed {seed}: no search that spent the budget ({search_name(seed)}); left out", flush=True)
            continue
        tr = live_trace(client, parent, table)
        shares = {f"{b:g}": round(share_at(tr["trace"], b * table.grid_epochs), 4) for b in BUDGETS}
        live[seed] = {"shares": shares, **tr, "status": parent.info.status,
                      "minutes": round(((parent.info.end_time or 0) - parent.info.start_time) / 6e4, 1)}

    print(f"\nmethod: {method.label}; {args.concurrency} trial(s) at once; replay band over {args.replay_seeds} seeds")
    print("| budget | replay 5% | replay mean | replay 95% | " + " | ".join(f"live seed {s}" for s in live) + " | inside |")
    print("|---|---:|---:|---:|" + "---:|" * len(live) + "---|")
    inside_total = 0
    for b in BUDGETS:
        key, bd = f"{b:g}", band[f"{b:g}"]
        vals = [live[s]["shares"][key] for s in live]
        inside = sum(bd["p5"] <= v <= bd["p95"] for v in vals)
        inside_total += inside
        print(f"| {b:.0%} ({b * table.grid_epochs:.0f} epochs) | {bd['p5']:.3f} | {bd['mean']:.3f} | {bd['p95']:.3f} | "
              + " | ".join(f"{v:.3f}" for v in vals) + f" | {inside} of {len(vals)} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"method": method.label, "table": str(TABLE.relative_to(REPO)), "budgets": list(BUDGETS),
                               "concurrency": args.concurrency, "replay_seeds": args.replay_seeds, "band": band,
                               "live": live, "inside": inside_total, "machine": machine()}, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
