"""Helpers shared by the benchmark scripts (machine description, timing loops)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}"


def time_calls(fn: Callable[[], object], *, warmup: int = 5, runs: int = 30, min_seconds: float = 0.0) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` discarded calls; at least ``runs`` calls and at
    least ``min_seconds`` of timed calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / 1e9)
    return times


def stats_ms(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1e3 for t in times)
    return {"n": len(ms), "mean_ms": statistics.fmean(ms), "p50_ms": statistics.median(ms),
            "p90_ms": ms[int(0.9 * (len(ms) - 1))], "min_ms": ms[0]}
