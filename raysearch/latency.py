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
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from raysearch.models import ModelSpec
from raysearch.objectives import LATENCY_MS

log = logging.getLogger(__name__)

LATENCY_STATS = ("p50", "mean")


@dataclass(frozen=True)
class BenchSettings:
    """How trials measure latency. ``farm``: a farm inventory (YAML) or ``HOST:PORT`` of one
    benchd; ``stat``: which figure becomes the ``latency_ms`` objective (p50, or the study's
    mean)."""

    farm: str
    device_class: str = "local"
    runs: int = 30
    warmup_runs: int = 5
    threads: int = 0  # 0: onnxruntime's default
    stat: str = "p50"
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if self.stat not in LATENCY_STATS:
            raise ValueError(f"latency statistic {self.stat!r} is not one of {LATENCY_STATS}")
        if self.runs < 1 or self.warmup_runs < 0:
            raise ValueError(f"bench runs={self.runs} / warmup={self.warmup_runs} must be >= 1 / >= 0")

    def cache_key(self, spec: ModelSpec) -> str:
        # the weights do not matter, everything that shapes the graph and the timing does
        # (the statistic too: the cached reply's latency_ms is the one it chose)
        ident = {"spec": spec.to_dict(), "device_class": self.device_class, "threads": self.threads,
                 "runs": self.runs, "warmup": self.warmup_runs, "stat": self.stat}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def open_farm(settings: BenchSettings):
    """A `BenchFarm` for the settings: the inventory file, or one device at HOST:PORT."""
    from benchd.farm import BenchFarm, FarmDevice

    if settings.farm.endswith((".yaml", ".yml")):
        if not Path(settings.farm).is_file():
            raise FileNotFoundError(f"{settings.farm}: farm inventory not found")
        return BenchFarm.from_file(settings.farm)
    if ":" not in settings.farm:
        raise ValueError(f"--farm {settings.farm!r}: expected a farm inventory (.yaml) or HOST:PORT of one benchd")
    return BenchFarm([FarmDevice(name=settings.farm, address=settings.farm, device_class=settings.device_class)])


def measure(onnx_path: str | Path, settings: BenchSettings, farm=None) -> dict:
    """Benchmark a model on the farm; the reply as a dict plus ``latency_ms`` (the chosen stat)."""
    own = farm is None
    farm = farm or open_farm(settings)
    try:
        r = farm.benchmark(str(onnx_path), device_class=settings.device_class, runs=settings.runs,
                           warmup_runs=settings.warmup_runs, intra_op_threads=settings.threads,
                           timeout_s=settings.timeout_s)
    finally:
        if own:
            farm.close()
    reply = r.to_dict()
    reply[LATENCY_MS.name] = r.latency_ms_p50 if settings.stat == "p50" else r.latency_ms_mean
    return reply


@contextlib.contextmanager
def local_benchd(device_class: str = "local", cache_dir: str | Path | None = None) -> Iterator[str]:
    """Run a benchd on 127.0.0.1 (a free port) for the duration; yields its ``HOST:PORT``."""
    from benchd.server import ServerConfig, create_server

    with tempfile.TemporaryDirectory(prefix="benchd-") as tmp:
        cfg = ServerConfig(device_name="local-benchd", device_class=device_class,
                           cache_dir=str(cache_dir or Path(tmp) / "cache"))
        server, port = create_server("127.0.0.1:0", cfg)
        target = f"127.0.0.1:{port}"
        log.info("started a local benchd on %s (device class %r)", target, device_class)
        try:
            yield target
        finally:
            server.stop(grace=5)
            log.info("stopped the local benchd on %s", target)

