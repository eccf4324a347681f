"""What a search is asked to do: its options, grouped as the command line groups them
(`SearchOptions` and its `BenchOptions`, `TrackingOptions`, `ClusterOptions`, `ScheduleOptions`), and
the space it searches (`Space`). No Ray, Optuna or torch at import: the command line and the replay
read these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

from raysearch.models.spec import parse_scalar
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


@dataclass(frozen=True)
class Range:
    """A numeric knob's interval: every ``step`` from ``low`` to ``high`` (an integer knob such as the
    input size in steps of 32: ``64:512:32``), or any number in [low, high] (``step`` None: a
    continuous knob such as the width ``a``: ``0.125:1``)."""

    low: float
    high: float
    step: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"the range {self.text()} is empty: expected LOW:HIGH[:STEP] with LOW < HIGH")
        if self.step is not None:
            levels = (self.high - self.low) / self.step if self.step > 0 else -1.0
            if levels < 1 or abs(levels - round(levels)) > 1e-9:
                raise ValueError(f"the range {self.text()}: the step {self.step:g} must be > 0 and divide "
                                 f"{self.high:g} - {self.low:g}")

    @classmethod
    def parse(cls, text: str) -> Range:
        parts = text.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) not in (2, 3):
            raise ValueError(f"{text!r} is not a range: expected LOW:HIGH (continuous) or LOW:HIGH:STEP")
        return cls(*nums)

    @property
    def continuous(self) -> bool:
        return self.step is None

    @property
    def integer(self) -> bool:
        return self.step is not None and all(float(v).is_integer() for v in (self.low, self.high, self.step))

    def text(self) -> str:
        return f"{self.low:g}:{self.high:g}" + (f":{self.step:g}" if self.step is not None else "")

    def values(self, levels: int = 2) -> list[Any]:
        """Every value of a stepped range; ``levels`` evenly spaced ones (the ends included) of a
        continuous one."""
        if self.step is None:
            n = max(2, levels)
            return [round(self.low + i * (self.high - self.low) / (n - 1), 6) for i in range(n)]
        n = round((self.high - self.low) / self.step)
        out = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in out] if self.integer else [round(v, 9) for v in out]

    def domain(self) -> Any:
        """Ray Tune's domain: a uniform number, or one of the steps (a number to the model-based
        samplers, so that TPE and GP see an order where a choice would be a category)."""
        from ray import tune

        if self.step is None:
            return tune.uniform(self.low, self.high)
        if self.integer:
            return tune.qrandint(int(self.low), int(self.high), int(self.step))
        return tune.quniform(self.low, self.high, self.step)


Knob = list[Any] | Range  # a knob's values in a Space: listed, or a range


def parse_knob(text: str) -> tuple[str, Knob]:
    """``--space KNOB=VALUES``: ``a=0.125:1`` (continuous), ``input_hw=64:512:32`` (every step),
    ``t=6,4,2`` (listed: numbers, or words such as ``precision=fp32,int8``)."""
    name, sep, values = text.partition("=")
    name = "input_hw" if name.strip() == "res" else name.strip()  # --res's knob
    if not sep or not name or not values.strip():
        raise ValueError(f"--space {text!r} is not KNOB=VALUES (e.g. a=0.125:1, input_hw=64:512:32, t=6,4,2)")
    if ":" in values:
        return name, Range.parse(values.strip())
    return name, [parse_scalar(v.strip()) for v in values.split(",") if v.strip()]


@dataclass
class Space:
    """What a search varies: ``grid`` maps knob names (ModelSpec fields, or "model" for a named
    model of ``models``) to the values the knob takes (listed, or a `Range`); ``fixed`` holds the
    other knobs."""

    grid: Mapping[str, Knob]
    fixed: dict[str, Any] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    levels: int = 0  # the evenly spaced values a continuous knob was listed at (`finite`; 0: none was)

    @property
    def ranges(self) -> list[str]:
        """The knobs given as a `Range`."""
        return [k for k, v in self.grid.items() if isinstance(v, Range)]

    @property
    def continuous(self) -> list[str]:
        """The knobs that take any number in their range (the space has no finite size)."""
        return [k for k, v in self.grid.items() if isinstance(v, Range) and v.continuous]

    def size(self) -> int:
        """Configurations in the space: 0 where a knob is continuous (see `finite`)."""
        if self.continuous:
            return 0
        n = 1
        for v in self.grid.values():
            n *= len(v.values() if isinstance(v, Range) else v)
        return n

    def finite(self, levels: int) -> Space:
        """The same space with every range listed: each step, or ``levels`` evenly spaced values of a
        continuous knob (what the grid and the latency-first sampler search)."""
        return Space(self.lists(levels), dict(self.fixed), dict(self.models), levels if self.continuous else self.levels)

    def lists(self, levels: int = 2) -> dict[str, list[Any]]:
        """Every knob's values, listed (see `finite`)."""
        return {k: v.values(levels) if isinstance(v, Range) else list(v) for k, v in self.grid.items()}

    def describe(self) -> dict[str, Any]:
        """The space as JSON can hold it (the parent run's "grid" param): a range as LOW:HIGH[:STEP]."""
        return {k: v.text() if isinstance(v, Range) else v for k, v in self.grid.items()}

    def with_knobs(self, knobs: dict[str, Knob]) -> Space:
        """This space with ``knobs`` searched instead (``--space``): a knob that was fixed becomes searched."""
        fixed = {k: v for k, v in self.fixed.items() if k not in knobs}
        return Space({**self.grid, **knobs}, fixed, dict(self.models), self.levels)

    def check(self, mode: str = "search", limit: int = 100_000) -> None:
        """Every point a valid `ModelSpec` (the first bad value named), before any trial runs; a
        range is checked at its ends and middle; a grid (``mode``) must be finite."""
        import itertools

        from raysearch.models import ModelSpec

        if not self.grid or any(isinstance(v, list) and not v for v in self.grid.values()):
            raise ValueError(f"the search space {self.describe()} has no point")
        grid = self.lists(3)
        for values in itertools.islice(itertools.product(*grid.values()), limit):
            knobs = {**self.fixed}
            for k, v in zip(grid, values):
                knobs.update(self.models.get(v, {}) if k == "model" else {k: v})
            ModelSpec.from_dict(knobs, strict=True)
        if mode == "grid" and self.continuous:
            raise ValueError(f"--mode grid trains every configuration, and {', '.join(self.continuous)} is continuous "
                             f"({self.describe()}): give it a step (LOW:HIGH:STEP) or use --mode search")


def planned_trials(space: Space, opts: SearchOptions) -> int:
    """Trials the search will run at most: the grid, or --num-samples (every searcher proposes each
    configuration once, so no more than a finite space holds)."""
    if opts.mode == "grid":
        return space.size()
    return min(opts.num_samples, space.size()) if space.size() else opts.num_samples


def param_space(space: Space, mode: str) -> dict[str, Any]:
    """Ray Tune's param_space for ``space``: the grid itself, or a domain per knob to search (a
    choice of the listed values, a range's numbers)."""
    from ray import tune

    if mode == "grid":
        assert not space.continuous, "Space.check refuses a continuous grid"
        return {k: tune.grid_search(v) for k, v in space.lists().items()}
    return {k: v.domain() if isinstance(v, Range) else tune.choice(list(v)) for k, v in space.grid.items()}
