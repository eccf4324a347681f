"""The search driver: one search (`SearchRequest`) run by Ray Tune (grid, or a multi-objective search
with optional early stopping) with a benchd farm for latency, MLflow for everything and the Pareto
front at the end (`run_search`). Its options and space are `raysearch.search.options`'s, the process
it runs in (Ray, signals, deadline, lock, storage) `raysearch.search.runtime`'s, and its samplers and
schedulers `raysearch.search.methods`'s tables: latency-first and every trial to the end by default,
what won the replays of the recorded tables (`raysearch replay`, BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from raysearch.records import names as obj
from raysearch.records.results import Requirement, TrialRow
from raysearch.search.latency import (
    BenchSettings,
    CpuReservation,
)
from raysearch.search.methods import (
    SWEEP_LIMIT,
    make_scheduler,
    make_searcher,
    method_params,
    needs_latency_first,
    searched_space,
    sweeps_all,
)
from raysearch.search.options import SearchOptions, Space, param_space, planned_trials
from raysearch.search.presets import preset
from raysearch.search.ray_console import condense_trial_errors
from raysearch.search.runtime import (
    INTERRUPTS,
    BudgetExpired,
    Deadline,
    SearchLock,
    check_writable,
    classic_tune_output,
    farm_for,
    init_ray,
    local_reservation,
    local_root,
    preflight,
    search_state_path,
    shipped_families,
    storage_uri,
)
from raysearch.search.trial import TrialSettings, latency_oracle, run_trial, sweep_latencies
from raysearch.storage import delete_tree

if TYPE_CHECKING:
    from ray.tune import Tuner

    from raysearch.search.latency_first import LatencyOracle
    from raysearch.tracking.callback import SearchTracker

# Ray, the data pipeline and the end-of-search reporting are imported inside the functions that
# use them: importing the driver starts nothing.

log = logging.getLogger(__name__)

@dataclass
class SearchOutcome:
    parent_run_id: str
    experiment_path: str
    rows: list[TrialRow]  # every trial's final figures
    front: list[TrialRow]  # the Pareto-optimal candidates, best IoU first
    hypervolume: float
    errors: int = 0
    epochs_spent: int = 0  # training epochs of every trial together
    space_size: int = 0  # configurations in the space searched (0: a continuous space)
    epochs: int = 0  # epochs of a trial trained to the end
    measured_first: int = 0  # configurations whose latency was measured before any training (latency-first)
    grid: str = ""  # the space as the parent's "grid" param (JSON): what finds the same grid's search

    def qualifying(self, requirement: Requirement) -> list[TrialRow]:
        return [r for r in self.front if requirement.qualifies(r)]


def search_name(label: str, opts: SearchOptions) -> str:
    """``--name``, else ``<stage>-<mode>-<timestamp>`` for a new search, and with ``--resume`` the
    latest search of that stage and mode."""
    if opts.name:
        return opts.name
    prefix = f"{label}-{opts.mode}-"
    if opts.resume:
        from raysearch.tracking.runs import STATE_FILE

        # a folder holding only a driver's lock never got as far as a run: nothing to resume there
        states = sorted((p for p in (local_root(opts) / "state").glob(prefix + "*") if (p / STATE_FILE).is_file()),
                        key=lambda p: p.stat().st_mtime)
        if not states:
            raise ValueError(f"--resume: no earlier {label} search in {opts.mode} mode under {opts.cluster.storage_path}")
        return states[-1].name
    return prefix + time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class SearchRequest:
    """One search for `run_search`: the stage's label, the space, the options and the epochs, and
    what a caller other than a stage script may add.

    ``parent``: (client, experiment id, parent run id) to log under an existing parent (stage 1's
    second phase, which then ends it); otherwise a parent run is opened (or reopened with
    ``opts.resume``), tagged with ``tags`` as well, and ended unless ``keep_parent_open``.
    ``init_checkpoint``: the weights every trial starts from; ``init_checkpoints``: weights per named
    model of ``space.models`` (with ``epochs=0``). ``deadline`` (``time.time()`` seconds): stop there
    like Ctrl-C and raise `BudgetExpired`; the search continues with ``opts.resume``.
    ``results_cache``: where finished trials are kept by spec (default: per search), so searches
    sharing one never train a configuration twice. ``trial_fn``: the trainable instead of
    `run_trial` (`raysearch.replay.simulator.table_trial` replays a recorded table through
    this very driver)."""

    stage: str
    space: Space
    opts: SearchOptions
    epochs: int
    name: str | None = None  # default: search_name(stage, opts)
    init_checkpoint: str | None = None
    init_checkpoints: dict[str, Any] | None = None
    parent: tuple[Any, ...] | None = None
    keep_parent_open: bool = False
    tags: dict[str, Any] | None = None
    deadline: float | None = None
    results_cache: str | None = None
    trial_fn: Callable[[dict[str, Any], TrialSettings], None] | None = None


@dataclass(frozen=True)
class _Where:
    """Where a search lives: its name, its storage (a folder or URI) and local root, its experiment
    folder in the storage and its state file beside the driver."""

    name: str
    storage: str
    root: Path
    exp_path: str
    state_path: Path


def run_search(req: SearchRequest) -> SearchOutcome:
    """Run one Ray Tune search over ``req.space`` and log it to MLflow (see the module doc)."""

    req.space.check(req.opts.mode)  # bad input, one line each, before Ray starts
    req = dataclasses.replace(req, space=searched_space(req.opts, req.space))
    stage, space, opts = req.stage, req.space, req.opts
    preflight(opts)
    if needs_latency_first(opts) and opts.schedule.latency_sweep == "all" and space.size() > SWEEP_LIMIT:
        raise ValueError(f"--latency-sweep all measures every configuration's latency before training: this space "
                         f"has {space.size()} configurations (at most {SWEEP_LIMIT}); use --latency-sweep needed")
    check_writable(local_root(opts), "--storage-path" if "://" not in opts.cluster.storage_path else "the driver's state folder")
    storage = storage_uri(opts)
    name = req.name or search_name(stage, opts)
    where = _Where(name, storage, local_root(opts), f"{storage}/{name}", search_state_path(opts, name))
    lock = SearchLock(where.state_path.with_name("driver.lock"), name)  # released when this returns or the process dies
    if not opts.resume and where.state_path.exists():
        lock.release()
        raise ValueError(f"a search named {name!r} already exists under {storage} (state {where.state_path}); "
                         f"pass --resume to continue it or --name to start another")
    reservation = local_reservation(opts)
    try:
        init_ray(opts.cluster.address, reservation)
        INTERRUPTS.count = 0
        if reservation is not None:
            print(reservation.describe(), flush=True)
        if "://" not in opts.cluster.storage_path:
            # snapshots of the experiment state to a local folder are cheap: Ray Tune's warning about
            # frequent ones (short epochs with num_to_keep=2) would bury the search's own output
            os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        return _run_locked(req, where, reservation)
    finally:
        lock.release()


def _run_locked(req: SearchRequest, where: _Where, reservation: CpuReservation | None) -> SearchOutcome:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from raysearch.data import prepare_data
    from raysearch.reporting.finish import finish_search
    from raysearch.reporting.interactive import search_page
    from raysearch.tracking.callback import WRITE_ERRORS, SearchTracker
    from raysearch.tracking.runs import open_parent

    stage, space, opts, epochs, parent = req.stage, req.space, req.opts, req.epochs, req.parent
    WRITE_ERRORS.clear()
    name, storage, exp_path, state_path = where.name, where.storage, where.exp_path, where.state_path
    remote = "://" in opts.cluster.storage_path
    data = prepare_data(opts.data, None if remote else where.root, opts.seed)
    hv_latency = opts.hv_ref_latency_ms or opts.max_latency_ms  # None: the largest latency measured
    client = parent[0] if parent else MlflowClient(opts.tracking.store())

    import ray

    gpus = opts.cluster.gpus_per_trial
    have_gpus = ray.cluster_resources().get("GPU", 0)
    if gpus is None:
        gpus = 1.0 if have_gpus > 0 else 0.0
    elif gpus > have_gpus:  # the trials would wait for it forever
        raise ValueError(f"--gpus-per-trial {gpus:g}: the Ray cluster has {have_gpus:g} GPU(s)")
    if gpus > 0:
        from raysearch.search.gpu_nodes import unusable_gpu_nodes

        for line in unusable_gpu_nodes():  # its trials will fail there, each saying so
            log.warning("%s: torch cannot use its GPU; trials placed there will fail", line)

    with farm_for(opts, reservation) as farm:
        settings = TrialSettings(
            # trial-side files live in the storage every node reaches (a folder or an object store)
            data=data, bench=bench_settings(opts, farm, reservation), latency_cache=f"{storage}/latency_cache",
            results_cache=req.results_cache or f"{storage}/results/{name}", trial_state=f"{storage}/trial_state/{name}",
            data_seed=opts.seed, limit=opts.limit, epochs=epochs, seed=opts.seed, amp=opts.cluster.amp,
            max_latency_ms=opts.max_latency_ms,
            logit_threshold=opts.logit_threshold, device_iou=opts.bench.device_iou,
            init_checkpoint=req.init_checkpoint, fixed=space.fixed, models=space.models,
            init_checkpoints=req.init_checkpoints or {}, families=shipped_families())
        t0 = time.time()
        alarm = Deadline(req.deadline)
        tracker = None
        if parent:
            _, exp_id, parent_id = parent
        else:
            exp_id, parent_id = open_parent(
                client, opts.tracking.experiment, opts.tracking.store(), state_path, run_name=name,
                tags={obj.TAG_STAGE: stage, obj.TAG_MODE: opts.mode, obj.TAG_SEARCH: name, obj.TAG_STORAGE: exp_path,
                      **(req.tags or {})},
                params={**{k: v for k, v in opts.flags().items() if v is not None}, "epochs": epochs,
                        "grid": json.dumps(space.describe()), "fixed": json.dumps(space.fixed), obj.HV_REFERENCE_LATENCY: hv_latency,
                        **method_params(opts)})
        try:  # from the moment the parent exists: a Ctrl-C anywhere below ends it KILLED (inside, open_parent does)
            tracker = SearchTracker(opts.tracking.store(), exp_id, parent_id, stage, state_path, settings.spec_for,
                                    hv_latency, planned_trials(space, opts), on_trial_end=search_page)
            trainable = tune.with_resources(tune.with_parameters(req.trial_fn or run_trial, settings=settings),
                                            {"cpu": opts.cluster.cpus_per_trial, "gpu": gpus})
            latencies, oracle = None, None
            if needs_latency_first(opts):
                if sweeps_all(opts, space):  # every latency before any training
                    from raysearch.search.latency_first import grid_configs

                    log.info("--latency-sweep all: measuring the latency of all %d configurations before training",
                             space.size())
                    latencies = sweep_latencies(grid_configs(space.lists()), settings)
                else:
                    oracle = latency_oracle(settings)
            tuner = _tuner(tune, trainable, space, opts, epochs, name, storage, exp_path, tracker,
                           state_path.with_name("scheduler.json"), latencies, oracle)
            if INTERRUPTS.count:  # a Ctrl-C that some library swallowed on the way here
                raise KeyboardInterrupt
            INTERRUPTS.in_fit = True
            try:
                with alarm, classic_tune_output(not opts.verbose):
                    results = tuner.fit()
            finally:
                INTERRUPTS.in_fit = False
            errors = results.num_errors
            if alarm.fired:  # Ray Tune caught our SIGINT, saved its state and returned
                raise BudgetExpired
            if INTERRUPTS.count or not tracker.ended_cleanly(state_path):  # stopped by Ctrl-C / SIGTERM
                raise KeyboardInterrupt
        except BaseException:
            if tracker is not None:
                tracker.reload().close("KILLED")  # the state file knows every run, even after a restore
            client.set_terminated(parent_id, "KILLED")
            if WRITE_ERRORS and not alarm.fired:  # the tracker stopped the search: say why, not "interrupted"
                raise WRITE_ERRORS[0] from None
            if alarm.fired:  # the deadline's SIGINT landed before Ray Tune's own handler was in place
                raise BudgetExpired from None
            raise
        tracker = tracker.reload()  # what Ray Tune's copy of the callback recorded
        tracker.close("KILLED")  # anything the tuner left open
        try:  # the search ended: no trial continues (the ones the scheduler stopped left theirs)
            assert settings.trial_state is not None  # set above
            delete_tree(settings.trial_state)
        except OSError as e:  # only storage is wasted
            log.warning("could not remove %s: %s", settings.trial_state, e)
        rows = list(tracker.state.finals.values())
        front, hv = finish_search(client, parent_id, stage, rows, tracker.state.hv_history, opts.requirement, hv_latency)
        if (page := search_page(tracker, live=False)) is not None:  # self-contained now: the parent's artifact
            client.log_artifact(parent_id, str(page))
        if errors:
            client.set_tag(parent_id, obj.TAG_TRIAL_ERRORS, str(errors))
        if not req.keep_parent_open:
            client.set_terminated(parent_id, "FINISHED")
        log.info("%s: %d trials, %d errors, %.0f s", name, len(rows), errors, time.time() - t0)
        measured_first = len(latencies) if latencies else (oracle.measured if oracle else 0)
        if oracle is not None:
            log.info("latency model: %d configurations measured for the search, %d predicted (of %d)",
                     oracle.measured, space.size() - oracle.measured, space.size())
            client.log_metric(parent_id, obj.LATENCY_MEASURED, oracle.measured)
            client.log_metric(parent_id, obj.LATENCY_PREDICTED, space.size() - oracle.measured)
        return SearchOutcome(parent_id, exp_path, rows, front, hv, errors, tracker.state.epochs_spent, space.size(),
                             epochs, measured_first, json.dumps(space.describe()))


def bench_settings(opts: SearchOptions, farm: str, reservation: CpuReservation | None = None) -> BenchSettings:
    p = preset(opts.quick)
    warmup = opts.bench.warmup_runs if opts.bench.warmup_runs is not None else p.bench_warmup_runs
    min_s = opts.bench.min_duration_s if opts.bench.min_duration_s is not None else p.bench_min_duration_s
    return BenchSettings(farm=farm, device_class=opts.bench.device_class, stat=opts.bench.latency_stat,
                         runs=opts.bench.runs or p.bench_runs, warmup_runs=warmup,
                         intra_op_threads=opts.bench.intra_op_threads or (len(reservation.benchd) if reservation else 0),
                         target_rel_ci=opts.bench.target_rel_ci, max_duration_s=opts.bench.max_duration_s,
                         min_duration_s=min(min_s, opts.bench.max_duration_s))


def _tuner(tune: ModuleType, trainable: Any, space: Space, opts: SearchOptions, epochs: int, name: str, storage: str,
           exp_path: str, tracker: SearchTracker, scheduler_state: Path, latencies: dict[str, float] | None,
           oracle: LatencyOracle | None) -> Tuner:
    if not opts.verbose:  # the concise view: a failed trial in one line (its traceback in its error file)
        condense_trial_errors()
    if opts.resume and tune.Tuner.can_restore(exp_path):
        log.info("resuming the search at %s", exp_path)
        restored: Tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
        return restored
    run_config = tune.RunConfig(
        # the tracker prints a concise view (a line per trial); Ray Tune's own tables with -v
        name=name, storage_path=storage, callbacks=[tracker], verbose=2 if opts.verbose else 0,
        failure_config=tune.FailureConfig(max_failures=opts.cluster.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))
    if opts.mode == "grid":  # the study's grid: every trial to the end
        tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=opts.cluster.concurrency)
    else:
        tune_config = tune.TuneConfig(search_alg=make_searcher(opts, latencies=latencies, oracle=oracle), scheduler=make_scheduler(opts, epochs, scheduler_state),
                                      num_samples=opts.num_samples, max_concurrent_trials=opts.cluster.concurrency)
    tuner: Tuner = tune.Tuner(trainable, param_space=param_space(space, opts.mode), tune_config=tune_config,
                              run_config=run_config)
    return tuner
