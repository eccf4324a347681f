"""Latency measurement for trials: a benchd farm (or a local benchd) and a cache of measured
latencies keyed by architecture + input size + device class.

Latency does not depend on the weights, so a trial measures its *untrained* model first and a
second trial with the same architecture reads the cached figure instead of benchmarking again.
The cache is a folder of small JSON files (one per key, written atomically) so that it works for
many trial processes at once and, on a shared filesystem, for many nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from raysearch.models import ModelSpec

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
        ident = {"spec": spec.to_dict(), "device_class": self.device_class, "threads": self.threads,
                 "runs": self.runs, "warmup": self.warmup_runs}
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
    reply["latency_ms"] = r.latency_ms_p50 if settings.stat == "p50" else r.latency_ms_mean
    return reply


def storage_fs(location: str | Path):
    """(pyarrow filesystem, path) for a local folder or a storage URI (s3://, gs://, file://)."""
    import pyarrow.fs as pafs

    text = str(location)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).resolve())


def read_bytes(location: str | Path) -> bytes:
    fs, path = storage_fs(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a whole file at once: a temporary name then a move, so readers never see half a file."""
    fs, path = storage_fs(location)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


class LatencyCache:
    """Small JSON documents by key in a folder that every trial can reach: a local or shared
    folder, or a storage URI on a multi-node cluster without a shared filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(read_bytes(f"{self.root}/{key}.json"))
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: dict) -> None:
        write_bytes(f"{self.root}/{key}.json", json.dumps(value).encode())


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

