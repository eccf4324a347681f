"""The search driver: Ray Tune (grid, or a multi-objective search with optional early stopping),
a benchd farm for latency, MLflow for everything, the Pareto front at the end.

The samplers (``--sampler``) and schedulers (``--scheduler``) are `raysearch.search.methods`'s tables:
latency-first and every trial to the end by default, what won the replays of the recorded tables
(`raysearch replay`, BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from raysearch.records import names as obj
from raysearch.records.results import Requirement, TrialRow
from raysearch.search.latency import (
    WIRE_KNOBS,
    BenchSettings,
    CpuReservation,
    check_farm_address,
    local_benchd,
    reserve_cpu,
)
from raysearch.search.methods import (
    LATENCY_SWEEPS,
    SAMPLERS,
    SCHEDULERS,
    SWEEP_LIMIT,
    make_scheduler,
    make_searcher,
    method_params,
    needs_latency_first,
    sweeps_all,
)
from raysearch.search.presets import preset
from raysearch.search.ray_console import condense_trial_errors, quiet_worker_exits
from raysearch.search.trial import TrialSettings, latency_oracle, run_trial, sweep_latencies
from raysearch.storage import delete_tree

if TYPE_CHECKING:
    from ray.tune import Tuner

    from raysearch.search.latency_first import LatencyOracle
    from raysearch.tracking.callback import SearchTracker

# Ray, the data pipeline and the end-of-search reporting are imported inside the functions that
# use them: SearchOptions and Space (read by the command line and the replay) stay light to import.

log = logging.getLogger(__name__)

MODES = ("grid", "search")


@dataclass
class BenchOptions:
    """Where and how trials measure latency (--farm, --device-class, --latency-stat, --device-iou,
    and each --bench-X, X being the field of benchd's BenchmarkRequest it becomes)."""

    PREFIXED: ClassVar[tuple[str, ...]] = WIRE_KNOBS  # the fields whose flag is --bench-<field>
    farm: str | None = None  # None: a local benchd on 127.0.0.1 for the duration
    device_class: str = "local"
    latency_stat: str = "p50"
    runs: int | None = None  # None: the preset's
    warmup_runs: int | None = None  # None: the preset's
    intra_op_threads: int = 0  # 0: onnxruntime's default; 1 on the reserved core of a local benchd
    target_rel_ci: float = 0.02  # time until the p50's 95% CI is within +-this share (0: exactly `runs`)
    max_duration_s: float = 30.0  # ... or for this long
    min_duration_s: float | None = None  # time each model at least this long (None: the preset's)
    device_iou: str = "int8"  # whose test IoU the device computes: off, int8 candidates, all

    def __post_init__(self) -> None:
        if self.device_iou not in obj.DEVICE_IOU_MODES:
            raise ValueError(f"--device-iou {self.device_iou!r} is not one of {obj.DEVICE_IOU_MODES}")
        if self.farm and self.farm.endswith((".yaml", ".yml")):
            self._check_inventory()
        elif self.farm:
            check_farm_address(self.farm)

    def _check_inventory(self) -> None:
        """An absolute inventory path (trials run in folders of their own) and a device class it
        has; with a single class and the default ``local``, that class."""
        from benchd.farm import load_inventory

        assert self.farm is not None  # called only with --farm
        path = Path(self.farm).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--farm {self.farm}: farm inventory not found")
        self.farm = str(path.resolve())
        classes = sorted({d.device_class for d in load_inventory(path)})
        if self.device_class not in classes:
            if self.device_class == "local" and len(classes) == 1:
                self.device_class = classes[0]
            else:
                raise ValueError(f"--device-class {self.device_class!r}: {path} has no device of that class; "
                                 f"its classes: {classes}")


@dataclass(frozen=True)
class TrackingOptions:
    """Where the search is logged (--tracking-uri, --experiment)."""

    PREFIXED: ClassVar[tuple[str, ...]] = ("uri",)
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else runs/mlflow.db
    experiment: str = "raysearch"

    def store(self) -> str:
        """The tracking URI in use (the flag's, the environment's or the default)."""
        from raysearch.tracking.runs import tracking_uri

        return tracking_uri(self.uri)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and with what trials run (--address, --storage-path, --concurrency, ...)."""

    PREFIXED: ClassVar[tuple[str, ...]] = ()
    address: str | None = None  # None: $RAY_ADDRESS, else a local Ray
    storage_path: str = "runs/ray"
    concurrency: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # None: 1 when the cluster has GPUs, else 0
    amp: bool = False  # mixed precision for trials on a GPU (the study trained in fp32)
    max_failures: int = 1


@dataclass(frozen=True)
class ScheduleOptions:
    """How --mode search proposes and stops trials (--sampler, --scheduler, --grace-period, --reduction-factor)."""

    PREFIXED: ClassVar[tuple[str, ...]] = ()
    sampler: str = "latency-first"
    scheduler: str = "none"  # no stopping rule beat none on the recorded tables, long curves included (BENCHMARKS.md)
    grace_period: int = 1
    reduction_factor: float = 3.0
    latency_sweep: str = "auto"

    def __post_init__(self) -> None:
        if self.latency_sweep not in LATENCY_SWEEPS:
            raise ValueError(f"--latency-sweep {self.latency_sweep!r} is not one of {LATENCY_SWEEPS}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"--scheduler {self.scheduler!r} is not one of {SCHEDULERS}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {self.sampler!r} is not one of {SAMPLERS}")


OPTION_GROUPS: dict[str, Any] = {"bench": BenchOptions, "tracking": TrackingOptions, "cluster": ClusterOptions,
                                 "schedule": ScheduleOptions}


def flag_dest(group: str, name: str) -> str:
    """The command line's name (argparse's dest) of a grouped option: --bench-runs is bench.runs,
    --farm is bench.farm, --sampler is schedule.sampler."""
    return f"{group}_{name}" if name in OPTION_GROUPS[group].PREFIXED else name


@dataclass
class SearchOptions:
    """Options shared by every stage (the stage scripts' command line), grouped by what they set.
    `from_flags` builds one from the flags' names, `flags` gives them back (the parent run's params)."""

    mode: str = "grid"
    num_samples: int = 10
    quick: bool = False
    data: str = "synthetic"
    limit: int | None = None
    seed: int = 0
    max_latency_ms: float | None = None
    min_iou: float | None = None
    logit_threshold: float = 0.0
    hv_ref_latency_ms: float | None = None
    name: str | None = None
    resume: bool = False
    verbose: bool = False  # Ray Tune's own per-trial tables instead of the concise view
    bench: BenchOptions = field(default_factory=BenchOptions)
    tracking: TrackingOptions = field(default_factory=TrackingOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r} is not one of {MODES}")
        if self.num_samples < 1:
            raise ValueError(f"--num-samples {self.num_samples} must be >= 1")
        _ = self.requirement  # validates the pair, naming the bad value

    @classmethod
    def from_flags(cls, **flags: Any) -> SearchOptions:
        """From the flags' names (``bench_runs=5, sampler="tpe", farm=...``); an unknown name is a TypeError."""
        groups = {}
        for group, kind in OPTION_GROUPS.items():
            dests = {flag_dest(group, f.name): f.name for f in fields(kind)}
            groups[group] = kind(**{dests[k]: flags.pop(k) for k in list(flags) if k in dests})
        return cls(**flags, **groups)

    def flags(self) -> dict[str, Any]:
        """Every option under its flag's name (what `from_flags` takes)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in OPTION_GROUPS}
        for group in OPTION_GROUPS:
            out.update({flag_dest(group, k): v for k, v in asdict(getattr(self, group)).items()})
        return out

    @property
    def requirement(self) -> Requirement:
        return Requirement(self.max_latency_ms, self.min_iou)


@dataclass
class Space:
    """What a search varies: ``grid`` maps knob names (ModelSpec fields, or "model" for a named
    model of ``models``) to the values the study's grid takes; ``fixed`` holds the other knobs."""

    grid: dict[str, list[Any]]
    fixed: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def size(self) -> int:
        n = 1
        for v in self.grid.values():
            n *= len(v)
        return n

    def check(self, limit: int = 100_000) -> None:
        """Every point a valid `ModelSpec` (the first bad value named), before any trial runs."""
        import itertools

        from raysearch.models import ModelSpec

        if not self.grid or any(not v for v in self.grid.values()):
            raise ValueError(f"the search space {self.grid} has no point")
        for values in itertools.islice(itertools.product(*self.grid.values()), limit):
            knobs = {**self.fixed}
            for k, v in zip(self.grid, values):
                knobs.update(self.models.get(v, {}) if k == "model" else {k: v})
            ModelSpec.from_dict(knobs, strict=True)


@dataclass
class SearchOutcome:
    parent_run_id: str
    experiment_path: str
    rows: list[TrialRow]  # every trial's final figures
    front: list[TrialRow]  # the Pareto-optimal candidates, best IoU first
    hypervolume: float
    errors: int = 0
    epochs_spent: int = 0  # training epochs of every trial together
    space_size: int = 0  # configurations in the space searched
    epochs: int = 0  # epochs of a trial trained to the end
    measured_first: int = 0  # configurations whose latency was measured before any training (latency-first)
    grid: str = ""  # the space as the parent's "grid" param (JSON): what finds the same grid's search

    def qualifying(self, requirement: Requirement) -> list[TrialRow]:
        return [r for r in self.front if requirement.qualifies(r)]


class BudgetExpired(KeyboardInterrupt):
    """The search was stopped at its deadline; like Ctrl-C, every run ended KILLED and the search
    continues with ``resume``."""


# ---- plumbing -------------------------------------------------------------------------------
class _Interrupts:
    """Ctrl-C and `kill` (SIGTERM) during a search, counted, so that an interrupted search is never
    taken for a finished one. Inside `tuner.fit()` the first one stops Ray Tune gracefully (its
    own stop handler, reached through SIGUSR1: a final forced experiment snapshot, so --resume
    never names a rotated checkpoint); elsewhere, and the second time, it is a KeyboardInterrupt.
    Ray Tune's SIGINT handler is disabled: it would stop the search without telling us."""

    def __init__(self) -> None:
        self.count = 0
        self.in_fit = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.in_fit and self.count == 1:
            tune_stop = signal.getsignal(signal.SIGUSR1)
            if callable(tune_stop):
                tune_stop(signal.SIGUSR1, frame)
                return
        raise KeyboardInterrupt


INTERRUPTS = _Interrupts()


def local_reservation(opts: SearchOptions) -> CpuReservation | None:
    """A core for the local benchd when the search measures on this machine with a local Ray."""
    if opts.bench.farm or opts.cluster.address or os.environ.get("RAY_ADDRESS"):
        return None
    return reserve_cpu()


def init_ray(address: str | None, reservation: CpuReservation | None = None) -> None:
    import threading

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # a trial's error is Ray Tune's to report (one line, `condense_trial_errors`); the tasks it
    # abandons when a search stops would each print theirs again as an "Unhandled error" traceback
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if ray.is_initialized():
        return
    if not (address or os.environ.get("RAY_ADDRESS")):  # a Ray of our own: its token warning is not news
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
    elif reservation is not None:
        # Ray's processes inherit the driver's CPU mask at start: keep them off the reserved core
        mask = os.sched_getaffinity(0)
        os.sched_setaffinity(0, reservation.ray)
        try:
            # address="local": a Ray of our own even when `ray start` left a head on this machine
            ray.init(address="local", include_dashboard=False, configure_logging=True, logging_level=logging.WARNING,
                     num_cpus=len(reservation.ray))
        finally:
            os.sched_setaffinity(0, mask)
    else:
        ray.init(address="local", include_dashboard=False, configure_logging=True, logging_level=logging.WARNING)
    quiet_worker_exits()  # a retired worker's SIGTERM is not a traceback for the user
    if threading.current_thread() is threading.main_thread():
        # after ray.init, whose own handler aborts the process: `kill` and `ray job stop` end the
        # search like Ctrl-C, so every MLflow run gets a status and --resume can continue
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGTERM, INTERRUPTS.handle)
        signal.signal(signal.SIGINT, INTERRUPTS.handle)


def bench_settings(opts: SearchOptions, farm: str, reservation: CpuReservation | None = None) -> BenchSettings:
    p = preset(opts.quick)
    warmup = opts.bench.warmup_runs if opts.bench.warmup_runs is not None else p.bench_warmup_runs
    min_s = opts.bench.min_duration_s if opts.bench.min_duration_s is not None else p.bench_min_duration_s
    return BenchSettings(farm=farm, device_class=opts.bench.device_class, stat=opts.bench.latency_stat,
                         runs=opts.bench.runs or p.bench_runs, warmup_runs=warmup,
                         intra_op_threads=opts.bench.intra_op_threads or (len(reservation.benchd) if reservation else 0),
                         target_rel_ci=opts.bench.target_rel_ci, max_duration_s=opts.bench.max_duration_s,
                         min_duration_s=min(min_s, opts.bench.max_duration_s))


def storage_uri(opts: SearchOptions) -> str:
    """Ray Tune's storage: an absolute folder, or the object-store URI as given (no trailing /)."""
    text = str(Path(opts.cluster.storage_path).resolve()) if "://" not in opts.cluster.storage_path else opts.cluster.storage_path
    return text.rstrip("/")


def search_state_path(opts: SearchOptions, name: str) -> Path:
    """Where a search keeps its trial -> MLflow run mapping and finished trials (the tracker's state)."""
    from raysearch.tracking.runs import STATE_FILE

    return local_root(opts) / "state" / name / STATE_FILE


def local_root(opts: SearchOptions) -> Path:
    """Where the driver keeps its own files (search state; synthetic data on a local storage): the
    storage folder, or with an object store $RAYSEARCH_STATE_DIR, else ~/.raysearch. Never the
    current folder: under `ray job submit --working-dir` that is a copy made for each job, and a
    resubmitted `--resume` would not find the search it continues."""
    if "://" not in opts.cluster.storage_path:
        return Path(opts.cluster.storage_path).resolve()
    return Path(os.environ.get("RAYSEARCH_STATE_DIR") or Path.home() / ".raysearch").expanduser().resolve()


MIN_FREE_BYTES = 256 * 2**20  # checkpoints, trial states, ONNX files and the experiment's snapshots


def check_writable(folder: Path, what: str, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail in one line, before Ray starts, when the search could not write its files: a folder
    it may not write, or one without working room (a search that fills the disk half-way loses
    time, whatever it ends with)."""
    import shutil

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".raysearch-write-check-"):
            pass
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise ValueError(f"{what} {folder} is not writable ({e.strerror}); pass a folder this user may write "
                         f"(or an object-store URI to --storage-path)") from None
    if free < min_free:
        raise ValueError(f"{what} {folder} has {free / 2**20:.0f} MiB free; a search needs at least "
                         f"{min_free / 2**20:.0f} MiB there (free some space or pass another folder)")


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


# ---- one search -------------------------------------------------------------------------------
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
    `run_trial` (`raysearch.search.replay.simulator.table_trial` replays a recorded table through
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


def preflight(opts: SearchOptions) -> None:
    """What the options name outside this process, checked before anything is created or started:
    the Ray cluster, the data, the tracking store (`ValueError`, one line naming it)."""
    from raysearch.data import check_data
    from raysearch.search.ray_cluster import check_cluster, ray_is_up
    from raysearch.tracking.store import check_store

    if (address := opts.cluster.address or os.environ.get("RAY_ADDRESS")) and not ray_is_up():
        check_cluster(address)  # no cluster there, or one that wants a token this process lacks
    check_data(opts.data, limit=opts.limit, seed=opts.seed)
    check_store(opts.tracking.store(), write=True)


def run_search(req: SearchRequest) -> SearchOutcome:
    """Run one Ray Tune search over ``req.space`` and log it to MLflow (see the module doc)."""

    stage, space, opts = req.stage, req.space, req.opts

    space.check()  # bad input, one line each, before Ray starts
    preflight(opts)
    if needs_latency_first(opts) and opts.schedule.latency_sweep == "all" and space.size() > SWEEP_LIMIT:
        raise ValueError(f"--latency-sweep all measures every configuration's latency before training: this space "
                         f"has {space.size()} configurations (at most {SWEEP_LIMIT}); use --latency-sweep needed")
    check_writable(local_root(opts), "--storage-path" if "://" not in opts.cluster.storage_path else "the driver's state folder")
    storage = storage_uri(opts)
    name = req.name or search_name(stage, opts)
    where = _Where(name, storage, local_root(opts), f"{storage}/{name}", search_state_path(opts, name))
    lock = _SearchLock(where.state_path.with_name("driver.lock"), name)  # released when this returns or the process dies
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


class _SearchLock:
    """One driver per search name: a second search started with the same --name (or a --resume
    while the first still runs) is refused in one line. An advisory lock on a file in the
    driver's own folder, released by the kernel when the process dies, so a killed driver never
    leaves a stale lock."""

    def __init__(self, path: Path, name: str) -> None:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 200).decode(errors="replace").strip() or "another process"
            self.release()
            raise ValueError(f"a search named {name!r} is already running ({holder}); wait for it, stop it, "
                             "or pass another --name") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


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

    with _farm(opts, reservation) as farm:
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
        alarm = _Deadline(req.deadline)
        tracker = None
        if parent:
            _, exp_id, parent_id = parent
        else:
            exp_id, parent_id = open_parent(
                client, opts.tracking.experiment, opts.tracking.store(), state_path, run_name=name,
                tags={obj.TAG_STAGE: stage, obj.TAG_MODE: opts.mode, obj.TAG_SEARCH: name, obj.TAG_STORAGE: exp_path,
                      **(req.tags or {})},
                params={**{k: v for k, v in opts.flags().items() if v is not None}, "epochs": epochs,
                        "grid": json.dumps(space.grid), "fixed": json.dumps(space.fixed), obj.HV_REFERENCE_LATENCY: hv_latency,
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
                    latencies = sweep_latencies(grid_configs(space.grid), settings)
                else:
                    oracle = latency_oracle(settings)
            tuner = _tuner(tune, trainable, space, opts, epochs, name, storage, exp_path, tracker,
                           state_path.with_name("scheduler.json"), latencies, oracle)
            if INTERRUPTS.count:  # a Ctrl-C that some library swallowed on the way here
                raise KeyboardInterrupt
            INTERRUPTS.in_fit = True
            try:
                with alarm, _classic_tune_output(not opts.verbose):
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
                             epochs, measured_first, json.dumps(space.grid))


class _Deadline:
    """At ``deadline``, interrupt the search exactly as Ctrl-C does (SIGINT to this process): Ray
    Tune saves the experiment state, so the search can be resumed where it stopped."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline, self.fired = deadline, False
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired = True
        log.warning("time budget reached: stopping the search (it can be resumed)")
        os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self) -> "_Deadline":
        if self.deadline is not None:
            self._timer = threading.Timer(max(0.0, self.deadline - time.time()), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def _classic_tune_output(quiet: bool) -> Iterator[None]:
    """Ray Tune's classic console output for the concise view: its newer one prints a configuration
    box, the experiment's folder and a TensorBoard hint into Ray's temporary session even at
    verbose=0. For this fit only (Ray Tune reads the variable when the fit starts): nothing else in
    the process is changed."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if quiet:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def shipped_families() -> tuple[Any, ...]:
    """Model families registered in this process beyond the built-in ones. They travel to the
    trials with the settings; a module that trial processes could not import (a script, a
    notebook, a test file) is pickled by value."""
    import sys

    from ray import cloudpickle  # Ray serializes with its own copy of cloudpickle

    from raysearch.models.registry import user_families

    fams = user_families()
    for f in fams:
        mod = sys.modules.get(getattr(f.build, "__module__", ""))
        if mod is not None and mod.__name__ != "__main__" and "-packages" not in (getattr(mod, "__file__", "") or ""):
            cloudpickle.register_pickle_by_value(mod)
    return fams


class _farm:
    """The farm to use: --farm, or a local benchd for the duration of the search."""

    def __init__(self, opts: SearchOptions, reservation: CpuReservation | None = None) -> None:
        self.opts, self.reservation = opts, reservation
        self._ctx: contextlib.AbstractContextManager[str] | None = None

    def __enter__(self) -> str:
        if self.opts.bench.farm:
            return self.opts.bench.farm
        self._ctx = local_benchd(self.opts.bench.device_class, cpus=self.reservation.benchd if self.reservation else ())
        return self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def planned_trials(space: Space, opts: SearchOptions) -> int:
    """Trials the search will run at most: the grid, or --num-samples (every searcher proposes each
    configuration once, so no more than the space holds)."""
    if opts.mode == "grid":
        return space.size()
    return min(opts.num_samples, space.size())  # every sampler proposes each configuration once


def param_space(space: Space, mode: str) -> dict[str, Any]:
    """Ray Tune's param_space for ``space``: the grid itself, or a choice per knob to search."""
    from ray import tune

    if mode == "grid":
        return {k: tune.grid_search(list(v)) for k, v in space.grid.items()}
    return {k: tune.choice(list(v)) for k, v in space.grid.items()}


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
