"""Compare search methods on a recorded table the way HPO papers do: every method replayed over
many seeds (`raysearch.replay.simulator`), the normalized hypervolume of its front (trials
trained to the end) as a share of the grid's, read at budgets of training epochs (a share of the
grid's epochs) and of simulated time; mean +- standard error, and a one-sided Mann-Whitney U test
of each method against random sampling without early stopping at the same budget.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import signal
import statistics
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from raysearch.replay.methods import BASELINE, DEFAULT_METHODS, Method, default_label
from raysearch.replay.table import Table, load
from raysearch.storage import write_atomic

CURVE_POINTS = 41  # budgets 0 .. the largest, evenly, for the anytime curves


def text_table(summary: dict[str, Any]) -> str:
    """The comparison as a console table: mean +- standard error per budget, and the one-sided
    Mann-Whitney p against random sampling without stopping (* below 0.05)."""
    budgets = list(next(iter(summary["methods"].values()))["budgets"])
    width = max(len(m) for m in summary["methods"]) + 2
    head = "method".ljust(width + 10) + "".join(f"at {float(b) * 100:g}% of the grid's epochs".ljust(30) for b in budgets)
    lines = [head, "-" * len(head)]
    for label, m in summary["methods"].items():
        cells = []
        for b in budgets:
            c = m["budgets"][b]
            p = c["p_vs_random"]
            mark = "" if p is None else f"  p={p:.3f}" + ("*" if p < 0.05 else "")
            if c.get("budget_spent_share", 1) < 1:  # some seeds ran out of trials before this budget
                mark += f" ({c['budget_spent_share'] * 100:.0f}% spent it)"
            cells.append(f"{c['hv_share_mean']:.3f} +- {c['hv_share_se']:.3f}{mark}".ljust(30))
        tag = " (default)" if label == summary["default"] else ""
        lines.append((label + tag).ljust(width + 10) + "".join(cells))
    for label, m in summary["methods"].items():
        if "latency_measured_mean" in m:
            lines.append(f"{label}: its latency model had {m['latency_measured_mean']:g} configurations measured for "
                         f"it on average (at most {m['latency_measured_max']}), besides those it trained")
    return "\n".join(lines)


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean (sample standard deviation / sqrt(n)); 0 for one value."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0


def p_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Mann-Whitney U: the p-value of "a tends to be larger than b"."""
    from scipy.stats import mannwhitneyu

    if len(set(a) | set(b)) == 1:  # all equal: no evidence either way
        return 1.0
    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


@dataclass
class SeedResult:
    shares: list[float]  # at each budget of `budgets` (shares of the grid's epochs)
    curve: list[float]  # at each point of the epoch curve
    time_curve: list[float]  # at each point of the time curve
    trials: int
    stopped: int
    epochs_spent: int  # below a budget: the search ran out of trials (num_samples) before spending it
    repeated: int  # trials of a configuration already trained (nothing trained)
    latency_measured: int | None = None  # latency-first's latency model: configurations measured for it
    repeat_proposals: int | None = None  # an Optuna sampler's proposals of configurations already proposed


def _one(args: tuple[Any, ...]) -> SeedResult:
    table_path, method, seed, source, workers, budgets, curve_x, time_x, max_latency_ms = args
    from raysearch.replay.simulator import simulate

    table = _cached_table(table_path)
    top = max(max(budgets), max(curve_x)) * table.grid_epochs
    # the budget ends the search; the cap only bounds a searcher that keeps proposing configurations
    # already trained (free in epochs, not in time: a GP is refitted for every proposal). A search
    # that reaches the cap first keeps the front it has: `epochs_spent` says so.
    num_samples = 10 * len(table.configs)
    with warnings.catch_warnings():  # Optuna warns, per study, that (h, w) choices do not persist
        warnings.filterwarnings("ignore", message="Choices for a categorical distribution", category=UserWarning)
        objects = None
        if method.peer is not None:
            from raysearch.replay.peers import make_peer
            from raysearch.replay.simulator import table_space

            objects = make_peer(method.peer, table_space(table), epochs=table.epochs, seed=seed)
        r = simulate(table, method.options(seed, num_samples, max_latency_ms), source=source, workers=workers,
                     max_epochs=top, objects=objects)
    return SeedResult([r.share_at(b * table.grid_epochs) for b in budgets],
                      [r.share_at(x * table.grid_epochs) for x in curve_x], [r.share_at_time(t * 3600) for t in time_x],
                      len(r.trials), sum(t.outcome == "stopped" for t in r.trials), r.epochs_spent,
                      sum(t.outcome == "duplicate" for t in r.trials), r.latency_measured,
                      r.repeat_proposals)


# bumped whenever the product's search changes what a replay gives (keys a `ReplayCache` file): 2 = each
# configuration proposed once (`DistinctSearch`), latency-first's latency model (issues 31, 32); 3 = front
# stopping decides on the best validation IoU so far (issue 32)
SEARCH_VERSION = 3


class ReplayCache:
    """Finished replays on disk, one JSON file per (table, method, seed, settings), so that a long
    comparison (GP's replays take minutes each) resumes where it was stopped. A file's name hashes
    everything its result depends on: the table's bytes, the method, the seed, the replay's settings
    and the versions of Optuna and Ray, whose samplers and schedulers the replay runs. Changes to
    our own search code are not in it: clear the folder after changing the search."""

    def __init__(self, folder: str | Path, table_path: str | Path) -> None:
        import optuna
        import ray

        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, a read-only place: one line, before any replay
            raise ValueError(f"--cache {folder}: cannot keep replays there ({e.strerror or e}); expected a folder "
                             "(new or one an earlier replay filled)") from None
        self._table_sha = hashlib.sha256(Path(table_path).read_bytes()).hexdigest()
        self._versions = (optuna.__version__, ray.__version__)

    def _path(self, task: tuple[Any, ...]) -> Path:
        _, method, seed, *settings = task
        key = json.dumps([self._table_sha, dataclasses.astuple(method), seed, settings, *self._versions, SEARCH_VERSION])
        return self.folder / f"{method.key}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def get(self, task: tuple[Any, ...]) -> SeedResult | None:
        path = self._path(task)
        try:
            return SeedResult(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):  # not there, or a torn or foreign file: replay it
            return None

    def put(self, task: tuple[Any, ...], result: SeedResult) -> None:
        # a temporary name of its own, then a rename: a replay killed while writing leaves no half
        # file under the real name, and two comparisons sharing the folder do not write one file
        write_atomic(self._path(task), json.dumps(dataclasses.asdict(result)))


_TABLES: dict[str, Table] = {}


def _cached_table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = load(path)
    return _TABLES[path]


@dataclass
class Comparison:
    table: str
    source: str
    seeds: int
    workers: int
    grid_epochs: int
    budgets: list[float]
    curve_x: list[float]
    time_x: list[float]  # simulated hours
    results: dict[str, list[SeedResult]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON document of `raysearch replay --json`."""
        base = self.results.get(BASELINE)
        default = self.results.get(default_label() or "")
        methods = {}
        for label, runs in self.results.items():
            per_budget = {}
            for i, b in enumerate(self.budgets):
                vals = [r.shares[i] for r in runs]
                per_budget[f"{b:g}"] = {
                    "hv_share_mean": round(statistics.fmean(vals), 4), "hv_share_se": round(standard_error(vals), 4),
                    "p_vs_random": None if base is None or label == BASELINE else
                    round(p_greater(vals, [r.shares[i] for r in base]), 5),
                    # one-sided Mann-Whitney U of "the default's shares are larger than this method's"
                    "p_default_ahead": None if default is None or default is runs else
                    round(p_greater([r.shares[i] for r in default], vals), 5),
                    "budget_spent_share": round(sum(r.epochs_spent >= b * self.grid_epochs for r in runs) / len(runs), 3),
                    "hv_shares": [round(v, 4) for v in vals]}
            methods[label] = {"budgets": per_budget,
                              "trials_mean": round(statistics.fmean(r.trials for r in runs), 1),
                              "stopped_mean": round(statistics.fmean(r.stopped for r in runs), 1),
                              "repeated_mean": round(statistics.fmean(r.repeated for r in runs), 1)}
            repeats = [r.repeat_proposals for r in runs if r.repeat_proposals is not None]
            if repeats:  # answered from what the search knew, not trials
                methods[label]["repeat_proposals_mean"] = round(statistics.fmean(repeats), 1)
            measured = [r.latency_measured for r in runs if r.latency_measured is not None]
            if measured:  # what the latency model had measured, at the largest budget
                methods[label]["latency_measured_mean"] = round(statistics.fmean(measured), 1)
                methods[label]["latency_measured_max"] = max(measured)
        return {"table": self.table, "latency_source": self.source, "seeds": self.seeds, "workers": self.workers,
                "grid_epochs": self.grid_epochs, "default": default_label(), "methods": methods}


def _worker_init(parent: int) -> None:
    """A replay process: Ctrl-C, which the terminal sends to the whole process group, is the
    parent's to handle (it terminates the workers); and the worker dies with its parent, however
    the parent ends (Linux's parent-death signal), instead of finishing a replay nobody waits for."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's terminate() is all there is
        pass
    if os.getppid() != parent:  # the parent was gone before the signal was set
        os._exit(1)


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (shutdown alone waits for the running
    replays: minutes each for GP)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # terminate_workers() from Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _run_pool(jobs: int, tasks: list[tuple[Any, ...]], todo: list[int], done: Callable[[int, SeedResult], None]) -> None:
    pool = cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                  initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_one, tasks[i]): i for i in todo}
        for fut in cf.as_completed(futures):
            done(futures[fut], fut.result())
    except BaseException:  # Ctrl-C, SIGTERM made KeyboardInterrupt by the caller, a failed replay
        # a second Ctrl-C must not cut the cleanup short and leave workers behind: ignored for
        # its few seconds (signal handlers belong to the main thread; elsewhere nothing to shield)
        shielded = {}
        if threading.current_thread() is threading.main_thread():
            shielded = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            _stop(pool)
        finally:
            for s, handler in shielded.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: one not set from Python
        raise
    pool.shutdown()


def compare(table_path: str | Path, *, methods: Sequence[Method] = DEFAULT_METHODS, seeds: int = 20,
            source: str = "host", workers: int = 4, budgets: Sequence[float] = (0.1, 0.25, 0.5), jobs: int = 1,
            max_latency_ms: float | None = None, progress: Callable[[int, int], None] | None = None,
            cache: str | Path | ReplayCache | None = None,
            plan: Callable[[list[Method]], None] | None = None) -> Comparison:
    """Replay every method ``seeds`` times on the (complete) table. ``cache``: a folder (or a
    `ReplayCache`) that keeps every finished replay, so that a stopped comparison resumes.
    ``plan``: told the method of each replay still to run (not in the cache), before any runs.
    Interrupted (KeyboardInterrupt, or any error), the replays not started are cancelled and the
    worker processes terminated before the exception goes on; the finished ones are in the cache."""
    table = load(table_path)
    table.require_complete(source)
    top = max(budgets)
    curve_x = [top * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
    # time axis: up to the time the grid would take on `workers` slots at the top budget
    grid_seconds = sum(sum(e.seconds for e in r.curve) + r.fixed_s for r in table.runs.values()) / len(table.seeds)
    t_top = grid_seconds * top / workers / 3600
    time_x = [t_top * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)]
    cmp = Comparison(table.name, source, seeds, workers, table.grid_epochs, list(budgets), curve_x, time_x)
    tasks = [(str(table_path), m, s, source, workers, list(budgets), curve_x, time_x, max_latency_ms)
             for m in methods for s in range(seeds)]
    store = cache if isinstance(cache, ReplayCache) or cache is None else ReplayCache(cache, table_path)
    results: dict[int, SeedResult] = {}
    if store is not None:
        results = {i: r for i, t in enumerate(tasks) if (r := store.get(t)) is not None}
    todo = [i for i in range(len(tasks)) if i not in results]

    def done(i: int, result: SeedResult) -> None:
        results[i] = result
        if store is not None:
            store.put(tasks[i], result)
        if progress:
            progress(len(results), len(tasks))

    if progress and results:
        progress(len(results), len(tasks))
    if plan:
        plan([tasks[i][1] for i in todo])
    if jobs > 1 and len(todo) > 1:
        _run_pool(min(jobs, len(todo)), tasks, todo, done)
    else:
        for i in todo:
            done(i, _one(tasks[i]))
    for i, t in enumerate(tasks):
        cmp.results.setdefault(t[1].label, []).append(results[i])
    return cmp


def plot(cmp: Comparison, path: str | Path) -> Path:
    """Anytime curves: mean hypervolume share +- standard error against epochs and simulated time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for label, runs in cmp.results.items():
        for ax, xs, key in ((axes[0], [x * 100 for x in cmp.curve_x], "curve"), (axes[1], cmp.time_x, "time_curve")):
            cols = list(zip(*(getattr(r, key) for r in runs)))
            mean = [statistics.fmean(c) for c in cols]
            se = [standard_error(c) for c in cols]
            style = dict(lw=2.4) if label == default_label() else dict(lw=1.4)
            line, = ax.plot(xs, mean, label=label, **style)
            ax.fill_between(xs, [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                            color=line.get_color(), alpha=0.15)
    for b in cmp.budgets:
        axes[0].axvline(b * 100, color="0.8", lw=0.8, zorder=0)
    axes[0].set_xlabel("training epochs spent, % of the grid's")
    axes[1].set_xlabel(f"simulated hours on {cmp.workers} workers")
    axes[0].set_ylabel("hypervolume, share of the grid's")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"table {cmp.table} ({cmp.source} latency): mean +- standard error over {cmp.seeds} seeds")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    path = write_atomic(path, buf.getvalue())
    return path
