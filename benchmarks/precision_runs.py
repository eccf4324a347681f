"""How many timed runs does benchd need to reach its precision target (the p50's 95% CI within
+-2%), idle and next to a training, with and without the core reservation raysearch uses?

Two models, exported by raysearch (untrained: latency does not depend on the weights):
  * baseline: the study's Fast-SCNN a1 t6 r3 pp1 at 512x512 (the default ModelSpec);
  * small:    a0.125 (t6 r3 pp1) at 128x128.

Four cases, each through a real local benchd (`raysearch.search.latency.local_benchd`) and BenchClient:
  idle-all      nothing else running; benchd worker unpinned, intra_op_threads=0 (all cores)
  idle-pinned   nothing else running; worker pinned to the last CPU, 1 intra-op thread
  train-naive   a torch training loop beside it (unpinned, torch threads = all cores); benchd as
                idle-all: what a setup without a reservation does
  train-pinned  the training pinned to every CPU but the last (torch threads = those CPUs), the
                benchd worker pinned to the last CPU with 1 thread: raysearch's local reservation

The training is a real Fast-SCNN training loop (forward, BCE, backward, Adam) on random 128x128
batches, in a subprocess this script starts and stops by its PID. Rounds interleave the cases
(the order of cases, and of model x case within the idle phase, is shuffled per round by the
round's seed); each benchmark is capped by --max-duration-s and --max-runs.

Reported per case and model: benchd's timed runs until it stopped (median, min-max), the first
run count at which the target was met in the returned samples (no 1/8 check interval), p50 ms
(median and spread across rounds), its ratio to the idle p50 with the same threads, the achieved
relative CI, how often the target was met, and the call's wall seconds.

    python benchmarks/precision_runs.py [--rounds 5] [--max-duration-s 60] [--max-runs 5000] [--json PATH]
    python benchmarks/precision_runs.py --quick   # smoke run: 1 round, small caps
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402

CASES = ("idle-all", "idle-pinned", "train-naive", "train-pinned")
MODELS = {
    "baseline@512": dict(),  # the default ModelSpec: a1 t6 r3 pp1 at 512x512
    "a0.125@128": dict(a=0.125, input_hw=128),
}

# The training beside the benchmark: a real training loop of Fast-SCNN on random data. Affinity
# is set before torch starts its thread pool; each step appends a line to the progress file.
TRAINER = textwrap.dedent("""
    import os, sys, time
    cpus, threads, res, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    import torch
    torch.set_num_threads(threads)
    from raysearch.models import ModelSpec, build_model
    torch.manual_seed(0)
    model = build_model(ModelSpec(input_hw=res))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(8, 3, res, res)
    y = (torch.rand(8, 1, res, res) > 0.5).float()
    step, t0 = 0, time.time()
    while True:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        step += 1
        with open(progress, "a") as f:
            f.write(f"{time.time():.3f} {step}\\n")
""")


# ---- the machine: who else is using it ----------------------------------------------------------
def _cpu_ticks() -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        rest = text[text.rindex(")") + 2:].split()
        out[int(d)] = (name, int(rest[11]) + int(rest[12]))  # utime + stime
    return out


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    text = f.read()
                ppid = int(text[text.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    seen, todo = {pid}, [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in seen:
                seen.add(k)
                todo.append(k)
    return seen


def other_busy(seconds: float = 2.0, threshold: float = 0.15) -> list[dict[str, Any]]:
    """Processes outside this script's own tree that used more than ``threshold`` of a CPU over
    the last ``seconds`` (sampled from /proc, not ps's lifetime average)."""
    hz = os.sysconf("SC_CLK_TCK")
    before = _cpu_ticks()
    time.sleep(seconds)
    after = _cpu_ticks()
    mine = _descendants(os.getpid())
    busy = []
    for pid, (name, ticks) in after.items():
        if pid in mine or pid not in before:
            continue
        share = (ticks - before[pid][1]) / hz / seconds
        if share > threshold:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
            except OSError:
                cmd = name
            busy.append({"pid": pid, "cpu": round(share, 2), "cmd": cmd.strip() or name})
    return sorted(busy, key=lambda b: -b["cpu"])


class Watcher:
    """Samples, every ``interval_s`` while the block runs, which processes outside this script's
    tree used more than ``threshold`` of a CPU: a measurement taken beside them is disturbed."""

    def __init__(self, interval_s: float = 5.0, threshold: float = 0.15) -> None:
        self.interval_s, self.threshold = interval_s, threshold
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        before, t_before = _cpu_ticks(), time.time()
        while not self._stop.wait(self.interval_s):
            after, t_after = _cpu_ticks(), time.time()
            mine = _descendants(os.getpid())
            for pid, (name, ticks) in after.items():
                if pid in mine or pid not in before:
                    continue
                share = (ticks - before[pid][1]) / hz / max(t_after - t_before, 1e-3)
                if share > self.threshold:
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    except OSError:
                        cmd = name
                    self.seen.append({"t": t_after, "pid": pid, "cpu": round(share, 2),
                                      "cmd": (cmd.strip() or name)[:120]})
            before, t_before = after, t_after

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def disturbed(self) -> bool:
        return bool(self.seen)


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's per-CPU tick counters (user nice system idle iowait irq softirq steal ...)."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu"):
            name, *ticks = line.split()
            out[name] = [int(t) for t in ticks]
    return out


def steal_between(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, float]:
    """Share of each CPU's time the hypervisor gave to someone else (steal) between two reads."""
    out = {}
    for name, ticks in after.items():
        delta = [a - b for a, b in zip(ticks, before.get(name, ticks))]
        total = sum(delta[:8])
        out[name] = delta[7] / total if total > 0 else 0.0
    return out


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_for_quiet(max_wait_s: float, log: list) -> list[dict[str, Any]]:
    """Wait (up to ``max_wait_s``) until no other process is busy; returns what was busy last."""
    deadline = time.time() + max_wait_s
    while True:
        busy = other_busy()
        if not busy or time.time() >= deadline:
            if busy:
                print(f"  warning: still busy after waiting: {busy[:3]}", flush=True)
            log.append({"at": time.time(), "loadavg": loadavg(), "other_busy": busy})
            return busy
        print(f"  waiting for other work to end: {busy[:2]}", flush=True)
        time.sleep(min(60.0, max(1.0, deadline - time.time())))


# ---- the training beside it ----------------------------------------------------------------------
class Training:
    """A training subprocess (started here, stopped by its PID)."""

    def __init__(self, cpus: tuple[int, ...], threads: int, res: int, tmp: Path) -> None:
        self.progress = tmp / f"train-{time.time_ns()}.log"
        self.progress.write_text("")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAINER, ",".join(map(str, cpus)), str(threads), str(res), str(self.progress)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.cpus, self.threads = cpus, threads

    def steps(self) -> tuple[float, int]:
        lines = self.progress.read_text().split()
        return (float(lines[-2]), int(lines[-1])) if len(lines) >= 2 else (time.time(), 0)

    def wait_warm(self, steps: int = 3, timeout_s: float = 180.0) -> None:
        deadline = time.time() + timeout_s
        while self.steps()[1] < steps:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the training exited: {self.proc.stderr.read().decode()[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError("the training did not start in time")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---- one benchmark ---------------------------------------------------------------------------------
def first_n_meeting(samples_ms: list[float], target: float, min_runs: int) -> int | None:
    """The first run count (>= min_runs) at which the p50's CI was within target, checked after
    every run (benchd checks when the count has grown by ~1/8)."""
    from benchd.runner import rel_half_width

    srt: list[float] = []
    for n, v in enumerate(samples_ms, 1):
        bisect.insort(srt, v)
        if n >= min_runs and rel_half_width(srt) <= target:
            return n
    return None


def bench_once(client, model: Path, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    before = cpu_times()
    r = client.benchmark(model, runs=args.runs, warmup_runs=args.warmup, target_rel_ci=args.target,
                         min_duration_s=args.min_duration_s,
                         max_runs=args.max_runs, max_duration_s=args.max_duration_s, intra_op_threads=threads,
                         return_samples=True)
    steal = steal_between(before, cpu_times())
    return {"runs": r.runs, "first_n_meeting": first_n_meeting(list(r.samples_ms), args.target, args.runs),
            "p50_ms": r.latency_ms_p50, "p50_ci_low": r.latency_ms_p50_ci_low, "p50_ci_high": r.latency_ms_p50_ci_high,
            "rel_ci": r.p50_rel_ci, "precision_met": r.precision_met, "wall_s": r.call_wall_s,
            "timed_s": r.timed_total_s, "hit_max_duration": r.hit_max_duration, "intra_op_threads": r.intra_op_threads,
            "p50_first_tenth": r.latency_ms_p50_first_tenth, "p50_last_tenth": r.latency_ms_p50_last_tenth,
            "cv": r.latency_cv, "steal": steal}


def export_models(tmp: Path) -> dict[str, Path]:
    from raysearch.models import ModelSpec, build_model
    from raysearch.training.export import export_onnx

    out = {}
    for name, kw in MODELS.items():
        path = tmp / f"{name.replace('@', '_')}.onnx"
        export_onnx(build_model(ModelSpec(**kw)), path)
        out[name] = path
    return out


# ---- the experiment -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchd.client import BenchClient
    from raysearch.search.latency import local_benchd, reserve_cpu

    reservation = reserve_cpu()
    all_cpus = tuple(sorted(os.sched_getaffinity(0)))
    if reservation is None:
        raise SystemExit("needs at least 2 CPUs (a reserved core for benchd)")
    last, others = reservation.benchd, reservation.ray
    cases = [c for c in CASES if c in args.cases]
    results: list[dict[str, Any]] = []
    quiet_log: list[dict[str, Any]] = []
    train_rates: list[dict[str, Any]] = []
    disturbances: list[dict[str, Any]] = []

    with tempfile.TemporaryDirectory(prefix="precision-runs-") as tmpdir:
        tmp = Path(tmpdir)
        models = export_models(tmp)
        with local_benchd("local", cpus=()) as free_target, local_benchd("local", cpus=last) as pinned_target, \
                BenchClient(free_target) as free, BenchClient(pinned_target) as pinned:
            for c in (free, pinned):
                while c.health() != "SERVING":
                    time.sleep(0.05)
                for m in models.values():
                    c.ensure_model(m)
            setups = {"idle-all": (free, 0), "idle-pinned": (pinned, 1),
                      "train-naive": (free, 0), "train-pinned": (pinned, 1)}
            trainings = {"train-naive": (all_cpus, len(all_cpus), ()), "train-pinned": (others, len(others), others)}

            for rnd in range(args.rounds):
                seed = args.seed + rnd
                rng = random.Random(seed)
                # the phases of a round: idle (both idle cases, shuffled), then each loaded case
                phases: list[list[str]] = [[c for c in cases if c.startswith("idle")]] + \
                    [[c] for c in cases if c.startswith("train")]
                phases = [p for p in phases if p]
                rng.shuffle(phases)
                print(f"round {rnd + 1}/{args.rounds} (seed {seed}): {' | '.join(','.join(p) for p in phases)}",
                      flush=True)
                for phase in phases:
                    for attempt in range(args.retries + 1):
                        busy = wait_for_quiet(args.wait_idle_s, quiet_log)
                        with Watcher() as watcher:
                            phase_rows, rate = run_phase(phase, models, setups, trainings, rng, rnd, seed, busy,
                                                         tmp, train_rates, args)
                        if not watcher.disturbed:
                            break
                        print(f"  disturbed by other work ({watcher.seen[:2]}); "
                              + ("redoing the phase" if attempt < args.retries else "kept, marked disturbed"),
                              flush=True)
                        disturbances.append({"round": rnd, "phase": phase, "attempt": attempt, "seen": watcher.seen})
                    for row in phase_rows:
                        row["disturbed"] = watcher.disturbed
                    results.extend(phase_rows)

    return {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "reservation": {"benchd": list(last), "training": list(others)}, "models": {
                k: f"ModelSpec({', '.join(f'{a}={b!r}' for a, b in v.items()) or ''})" for k, v in MODELS.items()},
            "results": results, "summary": summarize(results), "training_rates": train_rates,
            "quiet_checks": quiet_log, "disturbances": disturbances}


def run_phase(phase, models, setups, trainings, rng, rnd, seed, busy, tmp, train_rates, args):
    """One phase of a round: the training beside it (for a loaded case), then its benchmarks in a
    shuffled order; returns (rows, the training's steps/s or None)."""
    training = None
    if phase[0].startswith("train"):
        _, threads, pin = trainings[phase[0]]
        training = Training(pin, threads, args.train_res, tmp)
    jobs = [(c, m) for c in phase for m in models]
    rng.shuffle(jobs)
    rows, rate = [], None
    try:
        if training:
            training.wait_warm()
            time.sleep(args.train_settle_s)
        start = training.steps() if training else None
        for case, name in jobs:
            client, threads = setups[case]
            row = bench_once(client, models[name], threads, args)
            row.update(case=case, model=name, round=rnd, seed=seed, loadavg=loadavg(), other_busy_before=busy)
            rows.append(row)
            print(f"  {case:12s} {name:13s} runs {row['runs']:5d} (first {row['first_n_meeting']}) "
                  f"p50 {row['p50_ms']:8.3f} ms  rel CI {row['rel_ci']:.4f}  "
                  f"met {row['precision_met']!s:5s}  {row['wall_s']:6.2f} s", flush=True)
        if training:  # the training's pace over the phase (both models' benchmarks)
            end = training.steps()
            rate = (end[1] - start[1]) / max(end[0] - start[0], 1e-9)
            train_rates.append({"case": phase[0], "round": rnd, "steps_per_s": rate, "seconds": end[0] - start[0]})
            print(f"  training beside it: {rate:.2f} steps/s (batch 8 at {args.train_res}x{args.train_res}, "
                  f"{training.threads} thread(s))", flush=True)
            for row in rows:
                row["train_steps_per_s"] = rate
    finally:
        if training:
            training.stop()
    return rows, rate


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "cv": statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else 0.0}


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    idle_ref = {}  # the idle p50 with the same threads: idle-all for train-naive, idle-pinned for train-pinned
    for case in CASES:
        for model in MODELS:
            rs = [r for r in results if r["case"] == case and r["model"] == model]
            if not rs:
                continue
            firsts = [r["first_n_meeting"] for r in rs if r["first_n_meeting"] is not None]
            row = {"case": case, "model": model, "rounds": len(rs),
                   "runs": _spread([r["runs"] for r in rs]),
                   "first_n_meeting": _spread(firsts) if firsts else None,
                   "p50_ms": _spread([r["p50_ms"] for r in rs]),
                   "rel_ci": _spread([r["rel_ci"] if r["rel_ci"] >= 0 else math.inf for r in rs]),
                   "precision_met": sum(r["precision_met"] for r in rs),
                   "wall_s": _spread([r["wall_s"] for r in rs]),
                   "disturbed": sum(bool(r.get("disturbed")) for r in rs),
                   "steal_max": max((r["steal"]["cpu"] for r in rs if "steal" in r), default=None)}
            if "train_steps_per_s" in rs[0]:
                row["train_steps_per_s"] = statistics.median(r["train_steps_per_s"] for r in rs)
            if case.startswith("idle"):
                idle_ref[(case, model)] = row["p50_ms"]["median"]
            ref = idle_ref.get(({"train-naive": "idle-all", "train-pinned": "idle-pinned"}.get(case, case), model))
            row["p50_vs_idle"] = row["p50_ms"]["median"] / ref if ref else None
            rows.append(row)
    return rows


def table(summary: list[dict[str, Any]], target: float) -> str:
    lines = [f"| case | model | rounds | runs until stop, median (min-max) | first n within +-{target:.0%}, median "
             f"(min-max) | p50 ms, median (min-max) | CV of p50 across rounds | p50 / idle p50 (same threads) | "
             f"achieved rel CI, median (max) | target met | wall s, median (max) | training steps/s | host steal, max |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        f = r["first_n_meeting"]
        first = f"{f['median']:.0f} ({f['min']:.0f}-{f['max']:.0f})" if f else "never"
        p, ci = r["p50_ms"], r["rel_ci"]
        lines.append(
            f"| {r['case']} | {r['model']} | {r['rounds']} | {r['runs']['median']:.0f} ({r['runs']['min']:.0f}-"
            f"{r['runs']['max']:.0f}) | {first} | {p['median']:.3f} ({p['min']:.3f}-{p['max']:.3f}) | "
            f"{p['cv']:.1%} | {'-' if r['p50_vs_idle'] is None else format(r['p50_vs_idle'], '.2f') + 'x'} | "
            f"{ci['median']:.2%} ({ci['max']:.2%}) | {r['precision_met']}/{r['rounds']} | "
            f"{r['wall_s']['median']:.2f} ({r['wall_s']['max']:.2f}) | "
            f"{format(r['train_steps_per_s'], '.2f') if 'train_steps_per_s' in r else '-'} | "
            f"{'-' if r.get('steal_max') is None else format(r['steal_max'], '.1%')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each case once per round; default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of round 1's order (round k: seed + k - 1)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--target", type=float, default=0.02, help="target_rel_ci (default 0.02: +-2%%)")
    parser.add_argument("--runs", type=int, default=10, help="minimum timed runs (default 10, the quick preset's)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up runs (default 5, benchd's)")
    parser.add_argument("--min-duration-s", type=float, default=0.0,
                        help="time at least this long before the precision target may stop it (default 0, "
                             "as raysearch's BenchSettings)")
    parser.add_argument("--max-runs", type=int, default=5000)
    parser.add_argument("--max-duration-s", type=float, default=60.0)
    parser.add_argument("--train-res", type=int, default=128, help="input size of the training beside it")
    parser.add_argument("--train-settle-s", type=float, default=3.0,
                        help="seconds between the training's first steps and the first benchmark")
    parser.add_argument("--wait-idle-s", type=float, default=2400.0,
                        help="before each phase, wait up to this long for other processes to go quiet (default 40 min)")
    parser.add_argument("--retries", type=int, default=2,
                        help="redo a phase disturbed by other processes up to this many times (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 5 s / 500 runs caps, no waiting")
    parser.add_argument("--json", metavar="PATH", help="write every figure to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.max_duration_s, args.max_runs, args.wait_idle_s, args.train_settle_s = 1, 5.0, 500, 0.0, 1.0
        args.retries = 0
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    t0 = time.time()
    report = run(args)
    report["wall_s"] = time.time() - t0
    print(f"\nmachine: {report['machine']}; benchd reserved CPU {report['reservation']['benchd']}, training on "
          f"{report['reservation']['training']} in train-pinned")
    print(f"each benchmark: {args.warmup} warm-up, >= {args.runs} timed runs and >= {args.min_duration_s:g} s, until the p50's 95% CI is within "
          f"+-{args.target:.0%} or {args.max_runs} runs / {args.max_duration_s:g} s; {args.rounds} round(s); "
          f"{report['wall_s']:.0f} s in all\n")
    print(table(report["summary"], args.target))
    kept = sum(r["disturbed"] for r in report["summary"])
    print(f"\nphases redone because other processes were busy: {len(report['disturbances'])}; "
          f"benchmarks kept although disturbed: {kept}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
