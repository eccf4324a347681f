"""Replay our own search against a recorded table: the product's searcher (`make_searcher`:
`LatencyFirstSearch` over the table's latencies, or Optuna's sampler behind Ray Tune's
`OptunaSearch`) and scheduler (`make_scheduler`: `FrontStopping`, `ParetoASHA`, Ray Tune's
`ASHAScheduler`, or none), driven through the calls Ray Tune's controller makes, on a simulated
cluster of ``workers`` slots whose trials take the recorded time. A searcher that answers
FINISHED (a finite space exhausted) gets no more trials.

What Ray Tune does, and so what this does (ray/tune/execution/tune_controller.py):
- a free slot asks the searcher for a config (``suggest``), the scheduler is told the trial
  (``on_trial_add``);
- each report goes to the scheduler (``on_trial_result`` -> CONTINUE or STOP); when it continues,
  the searcher sees it too (``on_trial_result``); when it stops, the trial's last result goes to
  the scheduler's and the searcher's ``on_trial_complete`` (OptunaSearch tells Optuna COMPLETE with
  those values);
- a trial that returns (its final report sent) completes the same way with its final result.

What a trial does is `raysearch.search.trial.run_trial`'s sequence with the table instead of training:
latency first (the table's, for the chosen source), pruned without training over
``max_latency_ms``; a configuration already trained to the end reports its figures again and
trains nothing (the results cache); otherwise one report per recorded epoch (validation IoU and
loss, at the epoch's recorded wall time) and a final report with the test IoU of the best epoch
by validation loss after the trial's fixed cost (export, evaluation). Each trial draws one of
the configuration's recorded training seeds (deterministic per ``seed``), so seed-to-seed noise is
replayed. The time to measure a latency is not simulated (seconds against minutes of training);
what latency-first measures with its latency model is read from the table's column and counted.
"""

from __future__ import annotations

import heapq
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ray.tune.search import Searcher

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.records.pareto import hypervolume
from raysearch.replay.table import Run, Table, TableError, load
from raysearch.search.distinct import DistinctSearch
from raysearch.search.latency_first import LatencyFirstSearch, LatencyOracle, config_key, grid_configs
from raysearch.search.latency_model import LatencyModel
from raysearch.search.methods import make_scheduler, make_searcher, needs_latency_first, sweeps_all
from raysearch.search.options import SearchOptions, Space, param_space
from raysearch.search.trial import TrialSettings, base_metrics
from raysearch.storage import DocumentStore

log = logging.getLogger(__name__)


def table_space(table: Table) -> Space:
    """The space a live search of the table's configurations searches (its ``search_space``)."""
    s = table.meta.get("search_space")
    if not isinstance(s, dict) or not isinstance(s.get("grid"), dict):
        raise TableError(f"table {table.name}: its meta has no search_space (the space a live search searches)")
    grid = {k: [tuple(v) if isinstance(v, list) else v for v in values] for k, values in s["grid"].items()}
    return Space(grid, dict(s.get("fixed", {})), dict(s.get("models", {})))


class ConfigIndex:
    """A search config (as the searcher suggests it) -> the table's configuration id."""

    def __init__(self, table: Table, space: Space) -> None:
        self.settings = TrialSettings(data="", bench=None, latency_cache="", fixed=space.fixed,  # type: ignore[arg-type]
                                      models=space.models)
        self.by_spec = {ModelSpec.from_dict(spec).to_json(): cid for cid, spec in table.configs.items()}
        self.table = table

    def __call__(self, config: dict[str, Any]) -> str:
        spec = self.settings.spec_for(config).to_json()
        if spec not in self.by_spec:
            raise TableError(f"table {self.table.name} has no configuration for {config}")
        return self.by_spec[spec]


class SimTrial:
    """What Ray Tune's schedulers read of a trial."""

    def __init__(self, trial_id: str, config: dict[str, Any]) -> None:
        self.trial_id, self.config = trial_id, config
        self.status = "RUNNING"
        self.last_result: dict[str, Any] = {}

    def __repr__(self) -> str:
        return self.trial_id


@dataclass
class TrialRecord:
    trial_id: str
    config: str
    seed: int | None
    epochs: int  # trained
    outcome: str  # "finished", "stopped", "pruned", "duplicate"
    iou: float | None = None  # test IoU (finished or duplicate)
    latency_ms: float | None = None
    end_time: float = 0.0


@dataclass
class Replay:
    """One replayed search: its trials in order, and the anytime trace of its front."""

    trials: list[TrialRecord] = field(default_factory=list)
    # (epochs spent, simulated seconds, hypervolume share) after every event that changed the front
    trace: list[tuple[int, float, float]] = field(default_factory=list)
    epochs_spent: int = 0
    seconds: float = 0.0
    latency_measured: int | None = None  # latency-first with a latency model: configurations measured for it
    latency_known: int | None = None  # ... and those measured by it or by a trial, at the end
    repeat_proposals: int | None = None  # proposals of configurations already proposed (told, asked again)

    def share_at(self, epochs: float) -> float:
        """The front's hypervolume share once ``epochs`` training epochs were spent."""
        return self._share(0, epochs)

    def share_at_time(self, seconds: float) -> float:
        """The front's hypervolume share after ``seconds`` of simulated time."""
        return self._share(1, seconds)

    def _share(self, axis: int, limit: float) -> float:
        reached = [entry[2] for entry in self.trace if entry[axis] <= limit]  # the trace only grows
        return reached[-1] if reached else 0.0


def table_latencies(table: Table, source: str, space: Space | None = None) -> dict[str, float]:
    """Every configuration's latency as the latency sweep gives it to `LatencyFirstSearch`
    (`config_key` of the searched config -> ms), from the table's ``source`` column."""

    space = space or table_space(table)
    to_id = ConfigIndex(table, space)
    return {config_key(c): table.latency_ms(to_id(c), source) for c in grid_configs(space.lists())}


def hv_box(table: Table, source: str) -> dict[str, float]:
    """The hypervolume reference of a table: IoU 0 and its slowest configuration's latency."""
    return {obj.IOU.name: 0.0, obj.LATENCY_MS.name: max(table.latency_ms(c, source) for c in table.configs)}


def grid_hypervolume(table: Table, source: str) -> float:
    """The grid's reference: the hypervolume of every configuration trained to the end, averaged
    over the training seeds (seed s: every configuration's run with seed s)."""
    ref = hv_box(table, source)
    values = []
    for s in table.seeds:
        pts = [{obj.IOU.name: table.runs[(c, s)].test_iou, obj.LATENCY_MS.name: table.latency_ms(c, source)}
               for c in table.configs if (c, s) in table.runs]
        values.append(hypervolume(pts, ref))
    return sum(values) / len(values)


def simulate(table: Table, opts: SearchOptions, *, source: str = "host", workers: int = 4,
             max_epochs: float | None = None, space: Space | None = None, first: list[dict[str, Any]] | None = None,
             objects: tuple[Any, Any] | None = None) -> Replay:
    """Replay one search (``opts``: mode, sampler, scheduler, grace period, factor, seed,
    num_samples, max_latency_ms) on ``table`` with ``workers`` parallel trials, until
    ``opts.num_samples`` trials ran or ``max_epochs`` training epochs were spent. ``first``:
    configs the searcher proposes before its sampler's own (as `make_searcher` takes them).
    ``objects``: (searcher, scheduler) to replay instead of the product's (a peer's search)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per study: noise across hundreds of replays
    space = space or table_space(table)
    to_id = ConfigIndex(table, space)
    rng = random.Random(opts.seed)
    if objects is not None:
        searcher, scheduler = objects
    else:
        latencies, oracle = None, None
        if needs_latency_first(opts) and sweeps_all(opts, space):
            latencies = table_latencies(table, source, space)  # every configuration measured first
        elif needs_latency_first(opts):  # a latency model, measuring (reading) what it needs
            oracle = LatencyOracle(LatencyModel(source), to_id.settings.spec_for,
                                   lambda configs: [table.latency_ms(to_id(c), source) for c in configs])
        searcher = make_searcher(opts, first, latencies, oracle)
        scheduler = make_scheduler(opts, table.epochs, None)
    searcher.set_search_properties(None, None, param_space(space, "search"))  # as Tune's controller does
    ref = hv_box(table, source)
    grid_hv = grid_hypervolume(table, source)
    out = Replay()
    done: dict[str, dict[str, Any]] = {}  # the results cache: config id -> final result
    front_points: list[dict[str, Any]] = []
    events: list[tuple[float, int, str, Iterator[Any]]] = []  # (time, order, trial id, its steps)
    order = 0
    created = 0
    finished = False  # the searcher has nothing left to propose (a finite space, exhausted)

    def start(now: float) -> None:
        nonlocal created, order, finished
        trial_id = f"replay_{created:05d}"
        config = searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            finished = True
            return
        created += 1
        trial = SimTrial(trial_id, config)
        if scheduler is not None:
            scheduler.on_trial_add(None, trial)
        cid = to_id(config)
        steps = _trial_steps(table, cid, source, opts, done, rng)
        record = TrialRecord(trial_id, cid, None, 0, "finished")
        out.trials.append(record)
        heapq.heappush(events, (now, order, trial_id, _drive(trial, steps, record)))
        order += 1

    def complete(trial: SimTrial, result: dict[str, Any]) -> None:
        trial.status = "TERMINATED"
        if scheduler is not None:
            scheduler.on_trial_complete(None, trial, result)
        searcher.on_trial_complete(trial.trial_id, result=result)

    def _drive(trial: SimTrial, steps: Iterator[Any], record: TrialRecord) -> Iterator[float]:
        """Yields the seconds until the trial's next report; handles each report as Tune does."""
        for seconds, result, kind, seed in steps:
            record.seed = seed if seed is not None else record.seed
            yield seconds
            if not result.get(obj.FINAL):
                out.epochs_spent += 1
                record.epochs += 1
            decision = scheduler.on_trial_result(None, trial, result) if scheduler is not None else "CONTINUE"
            trial.last_result = result
            if decision != "STOP":  # Ray Tune shows the searcher only the results it goes on with
                searcher.on_trial_result(trial.trial_id, result)
            if result.get(obj.FINAL):  # the trial's last report: a STOP on it cuts nothing
                record.outcome = kind
                if kind in ("finished", "duplicate"):
                    record.iou, record.latency_ms = result[obj.IOU.name], result[obj.LATENCY_MS.name]
                    front_points.append({obj.IOU.name: record.iou, obj.LATENCY_MS.name: record.latency_ms})
                complete(trial, result)
                return
            if decision == "STOP":
                record.outcome = "stopped"
                complete(trial, result)
                return

    for _ in range(min(workers, opts.num_samples)):
        start(0.0)
    records = {t.trial_id: t for t in out.trials}
    # past the budget by one epoch: a trial whose last epoch was the budget's still reports its end
    while events and (max_epochs is None or out.epochs_spent <= max_epochs):
        now, o, trial_id, gen = heapq.heappop(events)
        out.seconds = now
        try:
            wait = next(gen)  # handles the report due now, returns the wait until the next one
        except StopIteration:  # the trial ended (finished, stopped, pruned or repeated): its slot frees
            record = records.setdefault(trial_id, next(t for t in out.trials if t.trial_id == trial_id))
            record.end_time = now
            if record.outcome in ("finished", "duplicate"):
                hv = hypervolume(front_points, ref) / grid_hv if grid_hv > 0 else 0.0
                if not out.trace or hv > out.trace[-1][2]:
                    out.trace.append((out.epochs_spent, now, hv))
            if created < opts.num_samples and not finished:
                start(now)
            continue
        heapq.heappush(events, (now + wait, o, trial_id, gen))
    if isinstance(searcher, DistinctSearch):
        out.repeat_proposals = searcher.repeats
    if isinstance(searcher, LatencyFirstSearch) and searcher.oracle is not None:
        out.latency_measured = searcher.oracle.measured
        out.latency_known = searcher.latency_counts()[0]
    return out


def _trial_steps(table: Table, cid: str, source: str, opts: SearchOptions, done: dict[str, Any],
                 rng: random.Random) -> Iterator[tuple[float, dict[str, Any], str, int | None]]:
    """The reports of one trial as (seconds before it, result, outcome kind, seed): what
    `run_trial` reports, from the table."""
    latency = table.latency_ms(cid, source)
    if cid in done:  # trained to the end before: its figures again, nothing trained
        yield 0.0, {**done[cid], obj.DUPLICATE: 1}, "duplicate", None
        return
    if opts.max_latency_ms is not None and latency > opts.max_latency_ms:
        yield 0.0, base_metrics(**{obj.LATENCY_MS.name: latency, obj.PRUNED: 1, obj.FINAL: 1}), "pruned", None
        return
    seeds = table.seeds_of(cid)
    seed = seeds[rng.randrange(len(seeds))]
    run: Run = table.runs[(cid, seed)]
    for epoch, e in enumerate(run.curve, 1):
        yield e.seconds, base_metrics(**{obj.IOU.name: e.val_iou, obj.LATENCY_MS.name: latency,
                                         obj.VAL_IOU.name: e.val_iou, obj.VAL_LOSS.name: e.val_loss,
                                         obj.EPOCH: epoch}), "epoch", seed
    last = run.curve[-1]
    final = base_metrics(**{obj.IOU.name: run.test_iou, obj.LATENCY_MS.name: latency, obj.VAL_IOU.name: last.val_iou,
                            obj.VAL_LOSS.name: last.val_loss, obj.EPOCH: len(run.curve), obj.FINAL: 1,
                            obj.EPOCHS_TRAINED: len(run.curve)})
    done[cid] = final
    yield run.fixed_s, final, "finished", seed


def table_trial(table_path: str, source: str = "host", seed: int = 0) -> Callable[[dict[str, Any], TrialSettings], None]:
    """A Ray Tune trainable for `raysearch.search.driver.run_search` (``trial_fn``) that replays the table
    instead of training: the same reports as `simulate`'s trials, sent through the real driver.
    Every trial uses the training seed ``seed`` (so a table with one seed per configuration
    replays identically in both)."""

    def replay_trial(config: dict[str, Any], settings: TrialSettings) -> None:
        import time

        from ray import tune


        table = load(table_path)
        cid = ConfigIndex(table, Space({}, settings.fixed, settings.models))(config)
        cache = DocumentStore(settings.results_cache) if settings.results_cache else None
        done = {}
        if cache is not None and (hit := cache.get(cid)) is not None:
            done[cid] = hit
        opts = SearchOptions(max_latency_ms=settings.max_latency_ms)
        for _, result, kind, _ in _trial_steps(table, cid, source, opts, done, random.Random(seed)):
            if kind == "finished" and cache is not None:
                cache.put(cid, result)
            tune.report(result)
            time.sleep(0.01)

    return replay_trial
