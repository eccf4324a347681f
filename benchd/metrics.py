"""Prometheus metrics of one benchd server (own registry, so several servers fit in a process)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Metrics:
    def __init__(self, device: str) -> None:
        self.device = device
        self.registry = CollectorRegistry()
        r = self.registry
        self.benchmarks = Counter(
            "benchd_benchmarks_total", "Benchmark requests by final gRPC status", ["device", "status"], registry=r
        )
        self.predictions = Counter(
            "benchd_predictions_total", "Predict requests by final gRPC status", ["device", "status"], registry=r
        )
        self.predict_seconds = Histogram(
            "benchd_predict_request_seconds", "Predict request time incl. queueing (s)", ["device"], registry=r
        )
        self.latency_p50 = Histogram(
            "benchd_latency_p50_ms", "p50 latency of each successful benchmark (ms)", ["device"],
            buckets=_LATENCY_BUCKETS_MS, registry=r,
        )
        self.request_seconds = Histogram(
            "benchd_benchmark_request_seconds", "Benchmark request time incl. queueing (s)", ["device"], registry=r
        )
        self.queue_depth = Gauge("benchd_queue_depth", "Requests waiting for the device", ["device"], registry=r)
        self.busy = Gauge("benchd_busy", "1 while a benchmark holds the device", ["device"], registry=r)
        self.upload_bytes = Counter("benchd_upload_bytes_total", "Model bytes received", ["device"], registry=r)
        self.cache_hits = Counter(
            "benchd_cache_hits_total", "Model lookups that found the model", ["device"], registry=r
        )
        self.cache_misses = Counter("benchd_cache_misses_total", "Model lookups that missed", ["device"], registry=r)
        self.cache_bytes = Gauge("benchd_cache_bytes", "Bytes in the model cache", ["device"], registry=r)
        self.temperature = Gauge("benchd_cpu_temperature_celsius", "CPU temperature", ["device"], registry=r)
        self.freq = Gauge("benchd_cpu_freq_mhz", "CPU 0 clock (MHz), read by the monitor", ["device"], registry=r)
        self.throttled = Gauge(
            "benchd_cpu_throttled", "1 while the firmware reports throttling now (absent where unknown)", ["device"],
            registry=r,
        )
        self.throttle_events = Counter(
            "benchd_throttle_events_total", "Benchmarks or monitor readings that found the CPU throttled",
            ["device"], registry=r,
        )
        self.runs = Histogram(
            "benchd_benchmark_runs", "Timed runs per successful benchmark (more: a noisier device)", ["device"],
            buckets=(5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000), registry=r,
        )
        self.rel_ci = Gauge(
            "benchd_p50_rel_ci", "Half-width of the last benchmark's p50 95% CI, as a share of the p50", ["device"],
            registry=r,
        )
        self.precision_missed = Counter(
            "benchd_precision_missed_total", "Benchmarks that hit a cap before their precision target", ["device"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "benchd_worker_restarts_total", "Benchmark worker processes lost (crash, memory, kill)", ["device"],
            registry=r,
        )
        # Counters start at 0 per device: a panel shows 0 rather than "no data", and the first
        # event counts in increase()/rate() (a series born at 1 would hide it).
        for counter in (self.upload_bytes, self.cache_hits, self.cache_misses, self.throttle_events,
                        self.worker_restarts, self.precision_missed):
            counter.labels(device)
        self._http: Any = None
        self._lock = threading.Lock()

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP; returns the bound port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
