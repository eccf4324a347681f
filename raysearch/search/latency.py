"""Latency measurement for trials: a benchd farm (or a local benchd) and a cache of measured
latencies keyed by architecture + input size + device class.

Latency does not depend on the weights, so a trial measures its *untrained* model first and a
second trial with the same architecture reads the cached figure instead of benchmarking again.
The cache is a `raysearch.storage.DocumentStore` keyed by `BenchSettings.cache_key`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from benchd.client import BenchResult
from raysearch.models import ModelSpec
from raysearch.records.names import LATENCY_MS, LATENCY_PRECISION

if TYPE_CHECKING:
    from benchd.farm import BenchFarm

log = logging.getLogger(__name__)

LATENCY_STATS = ("p50", "mean")
# the timing knobs: fields of BenchSettings, of benchd's BenchmarkRequest and --bench-X flags, one name each
WIRE_KNOBS = ("runs", "warmup_runs", "intra_op_threads", "min_duration_s", "target_rel_ci", "max_duration_s")


@dataclass(frozen=True)
class BenchSettings:
    """How trials measure latency. ``farm``: a farm inventory (YAML) or ``HOST:PORT`` of one
    benchd; ``stat``: which figure becomes the ``latency_ms`` objective (p50, or the study's
    mean). The timing knobs carry the names of benchd's ``BenchmarkRequest`` fields they become."""

    farm: str
    device_class: str = "local"
    runs: int = 30
    warmup_runs: int = 5
    intra_op_threads: int = 0  # 0: onnxruntime's default
    stat: str = "p50"
    min_duration_s: float = 0.0  # time at least this long (and `runs`)
    target_rel_ci: float = 0.02  # then until the p50's 95% CI is within +-this share (0: exactly `runs`)
    max_duration_s: float = 30.0  # ... or this long
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.stat not in LATENCY_STATS:
            raise ValueError(f"latency statistic {self.stat!r} is not one of {LATENCY_STATS}")
        if self.runs < 1 or self.warmup_runs < 0:
            raise ValueError(f"bench runs={self.runs} / warmup={self.warmup_runs} must be >= 1 / >= 0")
        if not 0 <= self.target_rel_ci < 1:
            raise ValueError(f"bench target_rel_ci {self.target_rel_ci!r} must be in [0, 1) (0.02 is +-2%)")
        if not self.max_duration_s > 0:
            raise ValueError(f"bench max_duration_s {self.max_duration_s!r} must be > 0")
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError(f"bench min_duration_s {self.min_duration_s!r} must be in [0, max_duration_s "
                             f"{self.max_duration_s}]")

    def knobs(self) -> dict[str, Any]:
        """The `BenchmarkRequest` fields these settings set, under their own names."""
        return {k: getattr(self, k) for k in WIRE_KNOBS}

    def _timing(self) -> dict[str, Any]:
        # the key's own names are older than the fields': renaming them would orphan every latency cache
        return {"device_class": self.device_class, "threads": self.intra_op_threads, "runs": self.runs,
                "warmup": self.warmup_runs, "stat": self.stat, "precision": self.target_rel_ci,
                "max_seconds": self.max_duration_s, "min_seconds": self.min_duration_s}

    def cache_key(self, spec: ModelSpec) -> str:
        # the weights do not matter, everything that shapes the graph and the timing does
        # (the statistic too: the cached reply's latency_ms is the one it chose)
        return _digest({"spec": spec.to_dict(), **self._timing()})

    def timing_key(self) -> str:
        """What `cache_key` holds besides the spec: measurements under one timing key are one latency model's."""
        return _digest(self._timing())


def _digest(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def check_farm_address(farm: str) -> None:
    """--farm HOST:PORT of one benchd, or `ValueError` naming it (a port gRPC would wrap too)."""
    from benchd.security import parse_address

    if ":" not in farm:
        raise ValueError(f"--farm {farm!r}: expected a farm inventory (a .yaml file) or HOST:PORT of one benchd")
    parse_address(farm, "--farm")


def open_farm(farm: str, device_class: str) -> BenchFarm:
    """A `BenchFarm`: the inventory file ``farm``, or one device at HOST:PORT (of ``device_class``)."""
    from benchd.farm import BenchFarm, FarmDevice

    if farm.endswith((".yaml", ".yml")):
        if not Path(farm).is_file():
            raise FileNotFoundError(f"{farm}: farm inventory not found")
        return BenchFarm.from_file(farm)
    check_farm_address(farm)
    return BenchFarm([FarmDevice(name=farm, address=farm, device_class=device_class)])


@dataclass(frozen=True)
class Measurement:
    """A model's benchmark as the search uses it: benchd's `BenchResult` and the latency the search
    reads from it (`BenchSettings.stat`: the p50, or the study's mean)."""

    result: BenchResult
    latency_ms: float

    @classmethod
    def of(cls, result: BenchResult, stat: str) -> Measurement:
        return cls(result, result.latency_ms_p50 if stat == "p50" else result.latency_ms_mean)

    @property
    def device(self) -> str:
        """The device that measured it: its farm inventory name, else the name benchd reports."""
        return self.result.farm_device or self.result.device_name

    def precision_metrics(self) -> dict[str, float]:
        """How precise the latency is, as MLflow metrics (see `records.names.LATENCY_PRECISION`)."""
        return {metric: float(getattr(self.result, field)) for metric, field in LATENCY_PRECISION.items()}

    def to_dict(self) -> dict[str, Any]:
        """The document of the latency cache and of a trial's benchmark.json: the reply and ``latency_ms``."""
        return {**self.result.to_dict(), LATENCY_MS.name: self.latency_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        """What `to_dict` gave; a KeyError or TypeError for a document without every field."""
        return cls(BenchResult.from_dict(d), float(d[LATENCY_MS.name]))


def measure(onnx_path: str | Path, settings: BenchSettings, farm: BenchFarm | None = None) -> Measurement:
    """Benchmark a model on the farm (one of ``settings``' own unless ``farm`` is given)."""
    own = farm is None
    farm = farm or open_farm(settings.farm, settings.device_class)
    try:
        r = farm.benchmark(str(onnx_path), device_class=settings.device_class, timeout_s=settings.timeout_s,
                           **settings.knobs())
    finally:
        if own:
            farm.close()
    return Measurement.of(r, settings.stat)


@dataclass(frozen=True)
class CpuReservation:
    """The CPUs of this machine split between the local benchd's worker and Ray's trials, so that
    a latency is never measured on a core that is busy training."""

    benchd: tuple[int, ...]
    ray: tuple[int, ...]

    def describe(self) -> str:
        return (f"latency: CPU {','.join(map(str, self.benchd))} reserved for the local benchd "
                f"({len(self.benchd)} intra-op thread); Ray trains on CPU {','.join(map(str, self.ray))} "
                f"({len(self.ray)} CPU)")


def reserve_cpu() -> CpuReservation | None:
    """The last usable CPU for benchd, the others (at least one) for Ray; None on a 1-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        log.warning("one CPU only: the local benchd shares it with training, so latencies are noisy")
        return None
    return CpuReservation(benchd=(cpus[-1],), ray=tuple(cpus[:-1]))


@contextlib.contextmanager
def _kept_off(cpus: tuple[int, ...]) -> Iterator[None]:
    """Every thread of this process (and what it starts) off ``cpus`` for the duration: the
    driver's own work (the Tune loop, MLflow logging, the benchd server's threads) must not
    preempt the worker timing on the reserved core. Restored after."""
    own = os.sched_getaffinity(0)
    rest = own - set(cpus)
    if not cpus or not rest:
        yield
        return

    def set_all(mask: set[int]) -> None:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), mask)

    set_all(rest)
    try:
        yield
    finally:
        set_all(own)


@contextlib.contextmanager
def local_benchd(device_class: str = "local", cache_dir: str | Path | None = None,
                 cpus: tuple[int, ...] = ()) -> Iterator[str]:
    """Run a benchd on 127.0.0.1 (a free port) for the duration, its worker pinned to ``cpus``
    when given (and this process kept off them meanwhile); yields its ``HOST:PORT``."""
    from benchd.server import ServerConfig, create_server

    with tempfile.TemporaryDirectory(prefix="benchd-") as tmp, _kept_off(cpus):
        cfg = ServerConfig(device_name="local-benchd", device_class=device_class,
                           cache_dir=str(cache_dir or Path(tmp) / "cache"), worker_cpus=cpus)
        server, port = create_server("127.0.0.1:0", cfg)
        target = f"127.0.0.1:{port}"
        log.info("started a local benchd on %s (device class %r)", target, device_class)
        try:
            yield target
        finally:
            server.stop(grace=5)
            log.info("stopped the local benchd on %s", target)

