"""Pure timing code: one onnxruntime benchmark of one model file, no gRPC in sight.

Method: an explicit `SessionOptions` (graph optimization level, fixed intra-op thread count,
one inter-op thread, sequential execution), the cold first run timed separately, warm-up runs
discarded, then `perf_counter_ns` around `session.run` only. The server runs this inside a
worker process; `benchd bench --local` and the fidelity benchmark call it directly.

Runs until precise: after the warm-up, at least `runs` timed runs and `min_duration_s`, then on
until the 95% confidence interval of the median is within `target_rel_ci` of it (relative
half-width), or `max_runs` / `max_duration_s` is reached. The interval is distribution-free: the
order statistics whose ranks bound the quantile with 95% probability, from the normal
approximation to the binomial (`quantile_ci`); no assumption about the latency's distribution.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchd import sysinfo

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")

# onnxruntime input type string -> numpy dtype. Anything else (string, sequence, map,
# optional, float8...) is refused with ModelInputError.
_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}

_MEMORY_MARKERS = ("bad_alloc", "failed to allocate", "cannot allocate memory", "out of memory")


class BenchmarkError(Exception):
    """A benchmark failed because of the request or the model. Each kind below is a domain
    error; the server alone maps it to a gRPC status."""


class ModelInputError(BenchmarkError):
    """Inputs cannot be fed: unsupported type, unresolved dynamic dimension, bad shape."""


class ModelLoadError(BenchmarkError):
    """onnxruntime refused the model when creating the session."""


class ModelRunError(BenchmarkError):
    """onnxruntime failed inside session.run."""


class MemoryLimitError(BenchmarkError):
    """The model needed more memory than the worker may use."""


class ModelIntegrityError(BenchmarkError):
    """The model file does not hash to the sha256 it was asked for (corrupted or replaced)."""


Z95 = 1.959963984540054  # two-sided 95% normal quantile
MAX_INPUT_BYTES = 1 << 30  # one fed input tensor; more is a request no device here could serve
_NAME_CHARS = 64  # how much of a client-chosen name an error message quotes


def clip(text: str, limit: int = _NAME_CHARS) -> str:
    """``text`` quoted, cut to ``limit`` characters: error messages never echo unbounded input."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def usable_cores() -> int:
    """CPUs this process may run on (its affinity: a pinned worker sees its own core only)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchParams:
    """How to time one model: what a client asks for (on the wire) and what the server decides
    (``max_duration_s``, ``seed``). The defaults are benchd's, the ones the proto's comments
    document; `DEFAULTS` holds them."""

    warmup_runs: int = 5
    runs: int = 20
    min_duration_s: float = 0.0
    max_duration_s: float = 300.0  # safety net: stop timing here even if `runs` is not reached
    intra_op_threads: int = 0  # 0: os.cpu_count()
    batch_size: int = 1
    graph_optimization: str = "all"
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    return_samples: bool = False
    target_rel_ci: float = 0.02  # stop once the p50's 95% CI half-width is within this share; 0: fixed count
    max_runs: int = 2000  # cap on timed runs while chasing the precision target
    seed: int = 0

    def validate(self) -> None:
        if self.warmup_runs < 0 or self.runs < 0:
            raise ModelInputError("warmup_runs and runs must be >= 0")
        if not (math.isfinite(self.target_rel_ci) and 0 <= self.target_rel_ci < 1):
            raise ModelInputError(f"target_rel_ci must be in [0, 1) (0.02 is +-2%), got {self.target_rel_ci}")
        if self.max_runs < max(self.runs, 1):
            raise ModelInputError(f"max_runs={self.max_runs} must be >= runs={self.runs} and >= 1")
        if not (math.isfinite(self.max_duration_s) and self.max_duration_s > 0):
            raise ModelInputError(f"max_duration_s must be a positive number, got {self.max_duration_s}")
        if self.runs == 0 and self.min_duration_s <= 0:
            raise ModelInputError("need runs > 0 or min_duration_s > 0")
        if self.min_duration_s < 0 or not math.isfinite(self.min_duration_s):
            raise ModelInputError(f"min_duration_s must be a finite number >= 0, got {self.min_duration_s}")
        if self.intra_op_threads < 0 or self.intra_op_threads > 256:
            raise ModelInputError(f"intra_op_threads must be in 0..256, got {self.intra_op_threads}")
        if self.batch_size > 1 << 16:
            raise ModelInputError(f"batch_size must be <= 65536, got {self.batch_size}")
        if self.batch_size < 1:
            raise ModelInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ModelInputError(
                f"graph_optimization must be one of {GRAPH_OPTIMIZATIONS}, got {self.graph_optimization!r}"
            )


DEFAULTS = BenchParams()  # the one table of defaults (warm-up 5, runs 20, ...)


def resolved_threads(requested: int) -> int:
    """The intra-op thread count to use: 0 means one per usable core. More threads than cores
    are refused: they only time the scheduler, and under a worker memory limit onnxruntime's
    session constructor can block forever creating them."""
    cores = usable_cores()
    if requested > cores:
        raise ModelInputError(f"intra_op_threads={requested} exceeds the {cores} core(s) this device "
                              f"benchmarks on; ask for 1..{cores} (0: all of them)")
    return requested if requested > 0 else cores


def session_options(threads: int, graph_optimization: str = "all") -> Any:
    """The explicit SessionOptions every benchd timing uses (shared with the fidelity script)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[graph_optimization]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only
    return so


def is_memory_error(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(m in str(exc).lower() for m in _MEMORY_MARKERS)


def input_plan(
    inputs: Sequence[Any], batch_size: int, overrides: Mapping[str, Sequence[int]]
) -> list[tuple[str, str, list[str], list[int]]]:
    """(name, type, graph dims, fed dims) per graph input; raises ModelInputError if not feedable.

    Axis 0 when dynamic takes `batch_size`; other dynamic axes need a full shape in `overrides`.
    """
    unknown = set(overrides) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(clip(n) for n in sorted(unknown)[:5])
        raise ModelInputError(f"input_shapes names {len(unknown)} unknown input(s): {names}")
    plan = []
    for inp in inputs:
        if inp.type not in _DTYPES:
            raise ModelInputError(
                f"input {clip(inp.name)} has unsupported type {inp.type[:80]}; benchd feeds numeric "
                f"and bool tensors only"
            )
        graph_dims = [str(d) if d is not None else "?" for d in inp.shape]
        if inp.name in overrides:
            dims = [int(d) for d in overrides[inp.name]]
            if len(dims) != len(inp.shape):
                raise ModelInputError(
                    f"input {clip(inp.name)} has rank {len(inp.shape)}, input_shapes gives {len(dims)} dimensions"
                )
            for axis, (want, got) in enumerate(zip(inp.shape, dims)):
                if got < 1 or (isinstance(want, int) and want > 0 and want != got):
                    raise ModelInputError(
                        f"input {clip(inp.name)} axis {axis} is {want} in the graph, input_shapes gives {got}"
                    )
        else:
            dims = []
            for axis, d in enumerate(inp.shape):
                if isinstance(d, int) and d > 0:
                    if axis == 0 and batch_size != 1 and d != batch_size:
                        raise ModelInputError(
                            f"input {inp.name!r} has a static batch of {d}; batch_size {batch_size} "
                            f"cannot be fed"
                        )
                    dims.append(d)
                elif axis == 0:
                    dims.append(batch_size)
                else:
                    raise ModelInputError(
                        f"input {clip(inp.name)} has dynamic dimension {clip(str(d))} at axis {axis}; "
                        f"give its full shape in input_shapes (CLI: --shape NAME=1x3x512x512)"
                    )
        nbytes = math.prod(dims) * np.dtype(_DTYPES[inp.type]).itemsize
        if nbytes > MAX_INPUT_BYTES:
            shape = "x".join(map(str, dims))
            raise ModelInputError(f"input {clip(inp.name)} of shape {clip(shape, 80)} would need {nbytes:.3g} "
                                  f"bytes; benchd feeds at most {MAX_INPUT_BYTES >> 20} MiB per input")
        plan.append((inp.name, inp.type, graph_dims, dims))
    return plan


def make_feeds(plan: Sequence[tuple[str, str, list[str], list[int]]], seed: int) -> dict[str, Any]:
    """Deterministic inputs: uniform [0, 1) floats (image-like), zeros for integers/bools."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for name, type_str, _, dims in plan:
        dtype = _DTYPES[type_str]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.random(dims, dtype=np.float32).astype(dtype)
        else:
            feeds[name] = np.zeros(dims, dtype=dtype)
    return feeds


def summarize(samples_ns: Sequence[int]) -> dict[str, float]:
    """Latency statistics in milliseconds (sample std, linear-interpolated percentiles)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return {
        "latency_ms_mean": mean,
        "latency_ms_std": std,
        "latency_ms_min": float(ms.min()),
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p95": p95,
        "latency_ms_p99": p99,
        "latency_ms_max": float(ms.max()),
        "latency_cv": std / mean if mean > 0 else 0.0,
        "timed_total_s": float(ms.sum()) / 1e3,
    }


def quantile_ci(sorted_ms: Sequence[float] | np.ndarray, q: float, z: float = Z95) -> tuple[float, float, bool]:
    """(low, high, bounded) of a distribution-free confidence interval for the ``q`` quantile.

    The interval is [x(l), x(u)] between order statistics (1-based ranks) l = floor(nq - z*s) and
    u = ceil(nq + z*s) + 1, s = sqrt(n q (1 - q)): the binomial count of samples below the quantile
    lies between them with ~95% probability (normal approximation; for n = 100 and the median,
    ranks 40 and 61, as in the exact tables). Where a rank falls outside 1..n the interval is
    unbounded on that side: the sample's extreme is returned and ``bounded`` is False.
    """
    n = len(sorted_ms)
    if n == 0:
        return math.nan, math.nan, False
    s = math.sqrt(n * q * (1 - q))
    lo, hi = math.floor(n * q - z * s), math.ceil(n * q + z * s) + 1
    bounded = lo >= 1 and hi <= n
    return float(sorted_ms[max(lo, 1) - 1]), float(sorted_ms[min(hi, n) - 1]), bounded


def rel_half_width(sorted_ms: Sequence[float] | np.ndarray) -> float:
    """Half the p50's 95% CI width over the p50 (inf while the interval is unbounded)."""
    lo, hi, bounded = quantile_ci(sorted_ms, 0.5)
    mid = float(np.median(sorted_ms))
    return (hi - lo) / 2 / mid if bounded and mid > 0 else math.inf


def precision(samples_ns: Sequence[int], target_rel_ci: float) -> dict[str, Any]:
    """The CI bounds of p50 and p90, the achieved precision, and the drift (the medians of the
    first and of the last tenth of the runs, in run order)."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    srt = np.sort(ms)
    p50_lo, p50_hi, _ = quantile_ci(srt, 0.5)
    p90_lo, p90_hi, _ = quantile_ci(srt, 0.9)
    rel = rel_half_width(srt)
    tenth = max(1, ms.size // 10)
    return {
        "latency_ms_p50_ci_low": p50_lo, "latency_ms_p50_ci_high": p50_hi,
        "latency_ms_p90_ci_low": p90_lo, "latency_ms_p90_ci_high": p90_hi,
        "p50_rel_ci": rel if math.isfinite(rel) else -1.0,  # -1: not enough runs to bound it
        "target_rel_ci": target_rel_ci,
        "precision_met": bool(target_rel_ci > 0 and rel <= target_rel_ci),
        "latency_ms_p50_first_tenth": float(np.median(ms[:tenth])),
        "latency_ms_p50_last_tenth": float(np.median(ms[-tenth:])),
    }


def read_verified(model_path: str | os.PathLike[str], sha256: str | None) -> bytes:
    """The model's bytes, checked against ``sha256`` when given: what is hashed is what is loaded."""
    data = Path(model_path).read_bytes()
    if sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise ModelIntegrityError(f"the cached file of model {sha256} hashes to {digest}; it was removed")
    return data


def run_benchmark(model_path: str | os.PathLike[str], params: BenchParams, sha256: str | None = None,
                  on_loaded: Any = None) -> dict[str, Any]:
    """Time one model; returns a dict keyed like benchd.v1.BenchmarkResponse fields.

    ``sha256``: refuse a file that does not hash to it. ``on_loaded()`` is called once the session
    exists (the worker tells the server, whose watchdog then gives the timing its own limit).
    Warm-up and timing end by ``max_duration_s`` after the call started."""
    import onnxruntime as ort

    params.validate()
    threads = resolved_threads(params.intra_op_threads)
    job_start = time.perf_counter_ns()
    data = read_verified(model_path, sha256)
    throttle_before = sysinfo.read_throttle()
    temp_before, freq_before = sysinfo.cpu_temperature_c(), sysinfo.cpu_freq_mhz()
    sysinfo.reset_peak_rss()
    rss_before = sysinfo.proc_status_bytes("VmRSS")
    window_start = time.time_ns()

    t0 = time.perf_counter_ns()
    try:
        # from bytes: a model cannot point onnxruntime at files beside it (external data)
        session = ort.InferenceSession(
            data,
            sess_options=session_options(threads, params.graph_optimization),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        if is_memory_error(exc):
            raise MemoryLimitError(f"out of memory while loading the model: {exc}") from exc
        raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from exc
    session_create_ns = time.perf_counter_ns() - t0
    del data
    if on_loaded is not None:
        on_loaded()

    plan = input_plan(session.get_inputs(), params.batch_size, params.input_shapes)
    feeds = make_feeds(plan, params.seed)
    outputs = [o.name for o in session.get_outputs()]
    run = session.run

    def timed() -> int:
        start = time.perf_counter_ns()
        run(outputs, feeds)
        return time.perf_counter_ns() - start

    samples: list[int] = []
    hit_max = False
    end_ns = job_start + int(params.max_duration_s * 1e9)
    min_ns = int(params.min_duration_s * 1e9)
    try:
        first_run_ns = timed()
        for _ in range(params.warmup_runs):
            if time.perf_counter_ns() >= end_ns:
                break
            run(outputs, feeds)
        loop_start = time.perf_counter_ns()
        check_at = 0  # precision is re-checked when the count has grown by ~1/8 (sorting is not free)
        while True:
            samples.append(timed())
            now = time.perf_counter_ns()
            if len(samples) >= params.runs and now - loop_start >= min_ns:
                if params.target_rel_ci <= 0 or len(samples) >= params.max_runs:
                    break
                if len(samples) >= check_at:
                    if rel_half_width(sorted(samples)) <= params.target_rel_ci:
                        break
                    check_at = len(samples) + max(8, len(samples) // 8)
            if now >= end_ns:  # the duration cap, before the minimum, the precision or max_runs stopped it
                hit_max = True
                break
    except Exception as exc:
        if is_memory_error(exc):
            raise MemoryLimitError(f"out of memory while running the model: {exc}") from exc
        raise ModelRunError(f"onnxruntime failed to run the model: {exc}") from exc
    window_end = time.time_ns()

    peak_rss = sysinfo.proc_status_bytes("VmHWM")
    temp_after, freq_after = sysinfo.cpu_temperature_c(), sysinfo.cpu_freq_mhz()
    throttle_after = sysinfo.read_throttle()
    throttled = sysinfo.throttled_between(throttle_before, throttle_after)
    del session

    result: dict[str, Any] = summarize(samples)
    result.update(precision(samples, params.target_rel_ci))
    result.update(
        runs=len(samples),
        warmup_runs=params.warmup_runs,
        session_create_ms=session_create_ns / 1e6,
        first_run_ms=first_run_ns / 1e6,
        peak_rss_bytes=peak_rss,
        rss_before_bytes=rss_before,
        cpu_temperature_c_before=temp_before,
        cpu_temperature_c_after=temp_after,
        cpu_freq_mhz_before=freq_before,
        cpu_freq_mhz_after=freq_after,
        throttled=throttled,
        throttled_raw_before=throttle_before.raw,
        throttled_raw_after=throttle_after.raw,
        onnxruntime_version=ort.__version__,
        intra_op_threads=threads,
        batch_size=params.batch_size,
        inputs=[
            {"name": n, "element_type": t, "graph_dims": g, "dims": d} for n, t, g, d in plan
        ],
        timing_start_unix_ns=window_start,
        timing_end_unix_ns=window_end,
        samples_ms=[s / 1e6 for s in samples] if params.return_samples else [],
        hit_max_duration=hit_max,
        graph_optimization=params.graph_optimization,
        governor=sysinfo.governor(),
    )
    return result
