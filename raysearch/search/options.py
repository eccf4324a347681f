"""What a search is asked to do: its options, grouped as the command line groups them
(`SearchOptions` and its `BenchOptions`, `TrackingOptions`, `ClusterOptions`, `ScheduleOptions`), and
the space it searches (`Space`). No Ray, Optuna or torch at import: the command line and the replay
read these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from raysearch.records import names as obj
from raysearch.records.results import Requirement
from raysearch.search.latency import WIRE_KNOBS, check_farm_address
from raysearch.search.methods import LATENCY_SWEEPS, SAMPLERS, SCHEDULERS

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
