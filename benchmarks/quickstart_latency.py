"""Are the quickstart's latencies trustworthy? The issue's check: "in the quickstart, for each
model, latency never decreases when the input grows, and the ranking of the quickstart's measured
latencies matches the ranking of the same models measured on an idle machine (Spearman >= 0.95)".

1. Runs the quickstart's main job, the command `scripts/quickstart.sh` runs after its set-up
   (`python raysearch/stage7.py --quick`; the set-up is not rerun), with a fresh MLflow store and
   Ray storage in a temporary folder, and times it.
2. Reads every child run of that search back from MLflow (`raysearch.tracking.readback.row_from_run`): its
   spec and `latency_ms` (the trained model's p50, measured while the search ran), with the
   precision figures benchd reported.
3. With nothing else running, exports each distinct spec (`raysearch.training.export.export_onnx`, untrained:
   latency does not depend on the weights) and measures it with the search's own settings
   (`raysearch.search.driver.bench_settings` for --quick: a local benchd whose worker is pinned to the
   last CPU, 1 intra-op thread, 10 runs / 2 warm-up, until +-2% or 30 s) --idle-repeats times,
   interleaved; the idle latency is the median of the repeats.
4. Per model (same spec except the input size): is latency non-decreasing in the input size (every
   pair; violations listed with their figures and CIs)? And the Spearman rank correlation between
   the quickstart's and the idle latencies over all trials.

    python benchmarks/quickstart_latency.py [--idle-repeats 3] [--json PATH]
    python benchmarks/quickstart_latency.py --quick              # smoke: 1 epoch, inputs 96 64
    python benchmarks/quickstart_latency.py --from-mlflow sqlite:///PATH/mlflow.db   # analyse a search that ran
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from precision_runs import Watcher, cpu_times, steal_between, wait_for_quiet  # noqa: E402

from common import machine  # noqa: E402

# what scripts/quickstart.sh runs once set up (its last python line); checked against the script
QUICKSTART = ["raysearch/stage7.py", "--quick"]


def quickstart_command() -> list[str]:
    text = (ROOT / "scripts" / "quickstart.sh").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("python ")]
    if not lines or lines[-1].split()[1:3] != QUICKSTART:
        raise SystemExit(f"scripts/quickstart.sh no longer runs `python {' '.join(QUICKSTART)}`: {lines}")
    return [sys.executable, *QUICKSTART]


# ---- 1. the quickstart --------------------------------------------------------------------------------
def run_quickstart(tmp: Path, extra: list[str], log_path: Path) -> dict[str, Any]:
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cmd = quickstart_command() + ["--tracking-uri", uri, "--storage-path", str(tmp / "ray"), *extra]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # a local Ray, as the quickstart gets
    print("running:", " ".join(cmd[1:]), flush=True)
    t0, cpu0 = time.time(), cpu_times()
    with open(log_path, "w") as log, Watcher() as watcher:  # who else used the machine meanwhile
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        rc = proc.wait()
    wall, steal = time.time() - t0, steal_between(cpu0, cpu_times())
    tail = log_path.read_text()[-4000:]
    if rc != 0:
        print(tail)
        raise SystemExit(f"the quickstart exited with {rc}; its log: {log_path}")
    others = sorted({b["cmd"][:80] for b in watcher.seen})
    return {"command": " ".join(["python", *cmd[1:]]), "wall_s": wall, "tracking_uri": uri, "rc": rc,
            "log_tail": tail, "steal": steal, "busy_samples": watcher.seen, "others_busy_during": others}


# ---- 2. what it measured ------------------------------------------------------------------------------
def read_trials(uri: str, experiment: str = "raysearch") -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    from raysearch.records import names as obj
    from raysearch.tracking.readback import row_from_run

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"{uri}: no experiment {experiment!r}")
    # the search's parent run: tagged with the stage like its children, but with no parent itself
    parents = [r for r in client.search_runs([exp.experiment_id], f"tags.{obj.TAG_STAGE} = 'stage7'",
                                             order_by=["attributes.start_time DESC"])
               if obj.TAG_PARENT not in r.data.tags]
    if not parents:
        raise SystemExit(f"{uri}: no stage-7 search")
    parent = parents[0]
    kids = client.search_runs([exp.experiment_id], f"tags.`{obj.TAG_PARENT}` = '{parent.info.run_id}'")
    rows = []
    for run in kids:
        row = row_from_run(run, parent.info.run_name)
        if row.spec is None or row.latency_ms is None:
            continue
        m = row.metrics
        rows.append({"name": row.name, "run_id": row.run_id, "status": row.status, "spec": row.spec.to_dict(),
                     "input": "x".join(map(str, row.spec.input_hw)), "latency_ms": row.latency_ms,
                     "latency_ms_untrained": m.get(obj.LATENCY_UNTRAINED),
                     "ci_low": m.get("latency_ms_p50_ci_low"), "ci_high": m.get("latency_ms_p50_ci_high"),
                     "rel_ci": m.get("latency_p50_rel_ci"), "precision_met": m.get("latency_precision_met"),
                     "runs": m.get("latency_runs"), "iou": row.iou})
    return sorted(rows, key=lambda r: (group_of(r["spec"]), area(r["spec"])))


def group_of(spec: dict[str, Any]) -> str:
    """The model without its input size ("a0.25-t6-r2-pp0", plus anything else that differs)."""
    rest = {k: v for k, v in spec.items() if k not in ("input_hw", "a", "t", "r", "pp")}
    label = f"a{spec['a']:g}-t{spec['t']}-r{spec['r']}-pp{spec['pp']}"
    default = {"arch": "fastscnn", "in_channels": 3, "num_classes": 1, "precision": "fp32", "extra": {}}
    odd = {k: v for k, v in rest.items() if default.get(k) != v}
    return label + ("".join(f"-{k}{v}" for k, v in sorted(odd.items())) if odd else "")


def area(spec: dict[str, Any]) -> int:
    h, w = spec["input_hw"]
    return h * w


# ---- 3. the idle reference ------------------------------------------------------------------------------
def measure_idle(rows: list[dict[str, Any]], repeats: int, seed: int, wait_s: float, tmp: Path) -> dict[str, Any]:
    from raysearch.models import ModelSpec, build_model
    from raysearch.search.driver import bench_settings
    from raysearch.search.latency import local_benchd, measure, reserve_cpu
    from raysearch.search.options import SearchOptions
    from raysearch.training.export import export_onnx

    specs = {json.dumps(r["spec"], sort_keys=True): r["spec"] for r in rows}
    paths = {}
    for i, (key, spec) in enumerate(specs.items()):
        paths[key] = tmp / f"idle-{i}.onnx"
        export_onnx(build_model(ModelSpec.from_dict(spec)), paths[key])
    reservation = reserve_cpu()
    quiet: list[dict[str, Any]] = []
    measured: dict[str, list[dict[str, Any]]] = {k: [] for k in specs}
    rng = random.Random(seed)
    with local_benchd("local", cpus=reservation.benchd if reservation else ()) as target:
        settings = bench_settings(SearchOptions(quick=True), target, reservation)  # the quickstart's own
        print(f"idle reference: {settings}", flush=True)
        for _ in range(repeats):
            wait_for_quiet(wait_s, quiet)
            order = list(specs)
            rng.shuffle(order)
            for key in order:
                before = cpu_times()
                reply = measure(paths[key], settings).to_dict()
                row = {k: reply[k] for k in ("latency_ms", "latency_ms_p50", "p50_rel_ci", "precision_met", "runs",
                                             "latency_ms_p50_ci_low", "latency_ms_p50_ci_high", "intra_op_threads")}
                row["steal"] = steal_between(before, cpu_times())
                measured[key].append(row)
    return {"settings": {k: getattr(settings, k) for k in ("runs", "warmup_runs", "threads", "stat", "precision",
                                                           "max_seconds")},
            "reserved_cpus": list(reservation.benchd) if reservation else [], "by_spec": measured,
            "quiet_checks": quiet}


# ---- 4. the checks -----------------------------------------------------------------------------------------
def average_ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(x, y).statistic)
    except ImportError:  # Pearson correlation of the average ranks
        rx, ry = average_ranks(x), average_ranks(y)
        mx, my = statistics.fmean(rx), statistics.fmean(ry)
        cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
        return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def monotonicity(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Every pair of one model where the larger input measured faster (by ``key``)."""
    out = []
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_of(r["spec"]), []).append(r)
    for g, rs in groups.items():
        rs = sorted(rs, key=lambda r: area(r["spec"]))
        for i, small in enumerate(rs):
            for big in rs[i + 1:]:
                if area(big["spec"]) > area(small["spec"]) and big[key] < small[key]:
                    v = {"model": g, "smaller": small["input"], "larger": big["input"],
                         "smaller_ms": small[key], "larger_ms": big[key],
                         "drop": 1 - big[key] / small[key]}
                    if key == "latency_ms" and None not in (small["ci_low"], small["ci_high"], big["ci_low"],
                                                            big["ci_high"]):
                        v["cis_overlap"] = big["ci_high"] >= small["ci_low"] and small["ci_high"] >= big["ci_low"]
                    out.append(v)
    return out


def analyse(rows: list[dict[str, Any]], idle: dict[str, Any]) -> dict[str, Any]:
    for r in rows:
        reps = idle["by_spec"][json.dumps(r["spec"], sort_keys=True)]
        r["idle_ms"] = statistics.median(x["latency_ms"] for x in reps)
        r["idle_ms_all"] = [x["latency_ms"] for x in reps]
        r["idle_precision_met"] = sum(bool(x["precision_met"]) for x in reps)
        r["ratio"] = r["latency_ms"] / r["idle_ms"]
    q, i = [r["latency_ms"] for r in rows], [r["idle_ms"] for r in rows]
    out = {"spearman": spearman(q, i), "n": len(rows),
           "violations_quickstart": monotonicity(rows, "latency_ms"),
           "violations_idle": monotonicity(rows, "idle_ms")}
    reps = min(len(r["idle_ms_all"]) for r in rows)
    if reps >= 2:  # the ceiling: how well two idle measurements of the same models agree on the ranking
        pairs = [spearman([r["idle_ms_all"][a] for r in rows], [r["idle_ms_all"][b] for r in rows])
                 for a in range(reps) for b in range(a + 1, reps)]
        out["spearman_idle_repeats"] = {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}
    untrained = [r for r in rows if r["latency_ms_untrained"] is not None]
    if len(untrained) == len(rows):
        out["spearman_untrained"] = spearman([r["latency_ms_untrained"] for r in rows], i)
        out["violations_untrained"] = monotonicity(rows, "latency_ms_untrained")
    out["monotone"] = not out["violations_quickstart"]
    out["rank_ok"] = out["spearman"] >= 0.95
    return out


def _f(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def report_text(rows: list[dict[str, Any]], res: dict[str, Any], qs: dict[str, Any] | None) -> str:
    lines = ["| model | input | quickstart latency_ms (p50) | its 95% CI | rel CI | met | timed runs | "
             "untrained, in the quickstart | idle p50 ms (median of repeats) | idle repeats | quickstart / idle |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        met = "-" if r["precision_met"] is None else ("yes" if r["precision_met"] else "no")
        lines.append(
            f"| {group_of(r['spec'])} | {r['input']} | {r['latency_ms']:.3f} | {_f(r['ci_low'])}-{_f(r['ci_high'])} | "
            f"{_f(r['rel_ci'], '.1%')} | {met} | {_f(r['runs'], '.0f')} | {_f(r['latency_ms_untrained'])} | "
            f"{r['idle_ms']:.3f} | {', '.join(f'{x:.3f}' for x in r['idle_ms_all'])} | {r['ratio']:.2f}x |")
    lines.append("")
    if qs:
        lines.append(f"quickstart: `{qs['command']}` took {qs['wall_s']:.0f} s "
                     f"(host steal {qs['steal']['cpu']:.1%} of CPU time meanwhile)")
        if qs.get("others_busy_during"):
            lines.append(f"other processes busy while it ran: {qs['others_busy_during']}")
    lines.append(f"Spearman(quickstart, idle) over {res['n']} trials: {res['spearman']:.3f} "
                 f"(target >= 0.95: {'met' if res['rank_ok'] else 'MISSED'})")
    if "spearman_idle_repeats" in res:
        sr = res["spearman_idle_repeats"]
        lines.append(f"Spearman between two idle repeats (the same models, idle both times): median {sr['median']:.3f} "
                     f"(min {sr['min']:.3f}, max {sr['max']:.3f})")
    if "spearman_untrained" in res:
        lines.append(f"Spearman(quickstart's untrained measurement, idle): {res['spearman_untrained']:.3f}")
    for label, key in (("quickstart latency_ms", "violations_quickstart"), ("idle", "violations_idle"),
                       ("quickstart untrained", "violations_untrained")):
        if key not in res:
            continue
        vs = res[key]
        lines.append(f"monotone in input size ({label}): {'yes' if not vs else f'NO, {len(vs)} violation(s)'}")
        for v in vs:
            overlap = "" if "cis_overlap" not in v else (" (CIs overlap)" if v["cis_overlap"] else " (CIs disjoint)")
            lines.append(f"  {v['model']}: {v['larger']} {v['larger_ms']:.3f} ms < {v['smaller']} "
                         f"{v['smaller_ms']:.3f} ms ({v['drop']:.1%} faster){overlap}")
    verdict = res["monotone"] and res["rank_ok"]
    lines.append(f"verdict: {'PASS' if verdict else 'FAIL'} (monotone: {'yes' if res['monotone'] else 'no'}, "
                 f"Spearman >= 0.95: {'yes' if res['rank_ok'] else 'no'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-mlflow", metavar="URI", help="analyse the latest stage-7 search of this store "
                                                             "instead of running the quickstart")
    parser.add_argument("--stage-args", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for the quickstart's stage script (last on the line)")
    parser.add_argument("--idle-repeats", type=int, default=3, help="idle measurements per spec (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the idle measurements' order")
    parser.add_argument("--wait-idle-s", type=float, default=2400.0,
                        help="wait up to this long for other processes to go quiet before the quickstart and "
                             "each idle repeat (default 40 min)")
    parser.add_argument("--keep", metavar="DIR", help="keep the quickstart's MLflow store and log in DIR")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, inputs 96 64, 1 idle repeat")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.stage_args = ["--epochs", "1", "--res", "96", "64", *args.stage_args]
        args.idle_repeats, args.wait_idle_s = 1, 0.0
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    with tempfile.TemporaryDirectory(prefix="quickstart-latency-") as tmpdir:
        tmp = Path(args.keep or tmpdir)
        tmp.mkdir(parents=True, exist_ok=True)
        qs = None
        quiet: list[dict[str, Any]] = []
        if args.from_mlflow:
            uri = args.from_mlflow
        else:
            wait_for_quiet(args.wait_idle_s, quiet)
            qs = run_quickstart(tmp, args.stage_args, tmp / "quickstart.log")
            qs["quiet_before"] = quiet
            uri = qs["tracking_uri"]
        rows = read_trials(uri)
        if not rows:
            raise SystemExit(f"{uri}: the stage-7 search has no trial with a latency")
        print(f"{len(rows)} trials read from {uri}", flush=True)
        t0 = time.time()
        idle = measure_idle(rows, args.idle_repeats, args.seed, args.wait_idle_s, tmp)
        idle["wall_s"] = time.time() - t0
        res = analyse(rows, idle)

    print(f"\nmachine: {machine()}\n")
    print(report_text(rows, res, qs))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "quickstart": qs, "trials": rows, "idle": idle,
                                               "result": res}, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0 if res["monotone"] and res["rank_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
