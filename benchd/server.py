"""The benchd gRPC server: model cache, one-at-a-time device queue, isolated benchmark worker.

`create_server(address, config) -> (server, port)` binds, starts serving and warms the worker
up in the background; health is NOT_SERVING until the worker is ready (and, if configured,
while the CPU is throttled).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from benchd import __version__, predict, runner, sysinfo, wire
from benchd.admission import SPARE_THREADS, AdmissionInterceptor
from benchd.cache import CacheError, ModelCache, check_sha
from benchd.devicelock import DeviceLock, QueueAbandoned, QueueFull, QueueTimeout
from benchd.errors import REASON_KEY
from benchd.metrics import Metrics
from benchd.runner import BenchmarkError, BenchParams
from benchd.security import (
    MalformedRequestInterceptor,
    ServerTls,
    TlsFilesError,
    TokenInterceptor,
    is_loopback,
    parse_address,
)
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc
from benchd.worker import WorkerCancelled, WorkerError, WorkerHandle, predict_job, predict_result

log = logging.getLogger("benchd.server")
R = TypeVar("R")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BenchService"].full_name
DEFAULT_PORT = 50051

# The runner's domain errors, by kind, as gRPC statuses (the only place they become statuses);
# anything else the worker reports is INTERNAL.
ERROR_STATUS = {
    runner.ModelInputError.__name__: grpc.StatusCode.INVALID_ARGUMENT,
    runner.ModelLoadError.__name__: grpc.StatusCode.INVALID_ARGUMENT,
    runner.ModelRunError.__name__: grpc.StatusCode.INVALID_ARGUMENT,
    runner.MemoryLimitError.__name__: grpc.StatusCode.RESOURCE_EXHAUSTED,
    runner.ModelIntegrityError.__name__: grpc.StatusCode.NOT_FOUND,  # the client uploads it again
}
MAX_PREDICT_BYTES = 32 << 20  # the largest --max-predict-mb: a call's data stays well under the worker's frames
MAX_DETAILS = 1024  # characters of an error's details: never echo unbounded client input


def default_worker_memory_bytes() -> int:
    """80% of physical memory: a runaway model fails its request before the OOM killer acts."""
    total, _ = sysinfo.meminfo_bytes()
    return int(total * 0.8) if total else 0


@dataclass
class ServerConfig:
    device_name: str = field(default_factory=socket.gethostname)
    device_class: str = "unknown"
    cache_dir: str = "~/.cache/benchd"
    cache_max_bytes: int = 2 << 30
    max_model_bytes: int = 256 << 20
    queue_size: int = 8  # requests that may wait while one runs; more get RESOURCE_EXHAUSTED
    max_runs: int = 10_000
    max_duration_s: float = 300.0  # cap on min_duration_s and on a benchmark, enforced by a watchdog
    max_load_s: float = 120.0  # cap on creating the onnxruntime session (a hang there is killed)
    max_uploads: int = 4  # uploads received at once; more are refused as busy
    upload_idle_s: float = 30.0  # an upload stream silent this long is cancelled and cleaned up
    max_predict_bytes: int = 3 << 20  # Predict: input and output data per call (under gRPC's 4 MiB messages)
    max_predict_batch: int = 64  # Predict: images per call
    max_calls: int | None = None  # service calls in progress at once; more are busy (None: queue_size + 16)
    worker_memory_bytes: int | None = None  # None: 80% of RAM; 0: unlimited
    worker_prefix: tuple[str, ...] = ()  # e.g. ("nice", "-n", "-5")
    worker_cpus: tuple[int, ...] = ()  # pin the worker to these CPUs (os.sched_setaffinity); (): no pinning
    token: str | None = None
    insecure: bool = False  # allow a non-loopback bind without a token
    tls: ServerTls | None = None
    metrics_port: int | None = None  # None: no metrics endpoint; 0: any free port
    metrics_address: str = "127.0.0.1"
    unhealthy_when_throttled: bool = False
    monitor_interval_s: float = 10.0
    sensors: sysinfo.Sensors = field(default_factory=sysinfo.Sensors)


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason


def _abort(context: grpc.ServicerContext, err: _Abort) -> NoReturn:
    if err.reason:
        context.set_trailing_metadata(((REASON_KEY, err.reason),))
    message = err.message if len(err.message) <= MAX_DETAILS else err.message[:MAX_DETAILS] + "... (cut)"
    context.abort(err.code, message)
    raise AssertionError("unreachable")  # context.abort always raises


class BenchServicer(pb_grpc.BenchServiceServicer):
    def __init__(self, config: ServerConfig, health_servicer: health.HealthServicer) -> None:
        self.cfg = config
        self.health = health_servicer
        self.cache = ModelCache(config.cache_dir, config.cache_max_bytes)
        self.lock = DeviceLock(config.queue_size)
        mem = default_worker_memory_bytes() if config.worker_memory_bytes is None else config.worker_memory_bytes
        self.worker = WorkerHandle(mem, config.worker_prefix, config.worker_cpus)
        self.metrics = Metrics(config.device_name)
        self.device = pb.Device(name=config.device_name, device_class=config.device_class)
        self._ready = False
        self._throttled_now: bool | None = None
        self._upload_bytes = 0  # total received, to flag uploads that overlap a timing window
        self._uploads: dict[int, tuple[float, grpc.ServicerContext]] = {}  # id -> (last activity, call)
        self._upload_slots = threading.BoundedSemaphore(config.max_uploads)
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        dev = config.device_name
        self.metrics.queue_depth.labels(dev).set_function(lambda: self.lock.depth)
        self.metrics.busy.labels(dev).set_function(lambda: 1.0 if self.lock.busy else 0.0)
        self.metrics.cache_bytes.labels(dev).set_function(lambda: self.cache.total_bytes())
        self._set_health()

    # -- lifecycle

    def start_background(self) -> None:
        threading.Thread(target=self._warm_worker, name="benchd-warmup", daemon=True).start()
        threading.Thread(target=self._reap_idle_uploads, name="benchd-upload-reaper", daemon=True).start()
        if self.cfg.monitor_interval_s > 0:
            threading.Thread(target=self._monitor, name="benchd-monitor", daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.worker.close()
        self.metrics.close()

    @property
    def serving(self) -> bool:
        return self._ready and not (self.cfg.unhealthy_when_throttled and self._throttled_now)

    def _set_health(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def _warm_worker(self) -> None:
        while not self._stop.is_set():
            try:
                self.worker.start()
            except WorkerError as exc:
                log.error("benchmark worker failed to start: %s; retrying in 5 s", exc)
                self._stop.wait(5)
                continue
            with self._state_lock:
                self._ready = True
                self._set_health()
            return

    def _restart_worker(self) -> None:
        self.metrics.worker_restarts.labels(self.cfg.device_name).inc()
        with self._state_lock:  # not serving until the new worker is up
            self._ready = False
            self._set_health()
        self.worker.kill()
        threading.Thread(target=self._warm_worker, name="benchd-rewarm", daemon=True).start()

    def _reap_idle_uploads(self) -> None:
        """Cancel upload streams that went silent: each holds an RPC thread and a .part file."""
        while not self._stop.wait(min(1.0, self.cfg.upload_idle_s / 4)):
            now = time.monotonic()
            with self._state_lock:
                idle = [ctx for last, ctx in self._uploads.values() if now - last > self.cfg.upload_idle_s]
            for ctx in idle:
                log.warning("upload from %s idle for %.0f s: cancelled", ctx.peer(), self.cfg.upload_idle_s)
                ctx.cancel()

    def _monitor(self) -> None:
        dev = self.cfg.device_name
        while not self._stop.is_set():
            temp = self.cfg.sensors.temperature_c()
            if temp is not None:
                self.metrics.temperature.labels(dev).set(temp)
            freq = self.cfg.sensors.freq_mhz()
            if freq is not None:
                self.metrics.freq.labels(dev).set(freq)
            now = self.cfg.sensors.throttle().now
            if now is not None:
                self.metrics.throttled.labels(dev).set(1.0 if now else 0.0)
            with self._state_lock:
                if now and not self._throttled_now:
                    self.metrics.throttle_events.labels(dev).inc()
                    log.warning("CPU throttled (%s)", self.cfg.sensors.throttle().raw)
                self._throttled_now = now
                self._set_health()
            self._stop.wait(self.cfg.monitor_interval_s)

    # -- RPCs

    def HasModel(self, request: pb.HasModelRequest, context: grpc.ServicerContext) -> pb.HasModelResponse:
        try:
            size = self.cache.lookup(check_sha(request.model_sha256))
        except CacheError as exc:
            _abort(context, _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
        counter = self.metrics.cache_misses if size is None else self.metrics.cache_hits
        counter.labels(self.cfg.device_name).inc()
        return pb.HasModelResponse(present=size is not None, size_bytes=size or 0)

    def UploadModel(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: grpc.ServicerContext
    ) -> pb.UploadModelResponse:
        try:
            return self._upload(request_iterator, context)
        except _Abort as err:
            _abort(context, err)

    def _upload(
        self, request_iterator: Iterator[pb.UploadModelRequest], context: grpc.ServicerContext
    ) -> pb.UploadModelResponse:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise _Abort(invalid, "the first upload message must be the header (model_sha256, size_bytes)")
        header = first.header
        try:
            sha = check_sha(header.model_sha256)
        except CacheError as exc:
            raise _Abort(invalid, str(exc)) from None
        size, limit = header.size_bytes, self.cfg.max_model_bytes
        if size == 0:
            raise _Abort(invalid, "size_bytes must be > 0")
        if size > limit:
            raise _Abort(
                invalid, f"model is {size / 2**20:.1f} MiB; this server accepts at most {limit / 2**20:.1f} MiB "
                f"(benchd serve --max-model-mb)"
            )
        cached = self.cache.lookup(sha)  # verified: a bad cached file is removed and uploaded anew
        if cached is not None:  # the size of what is cached, not the header's claim
            return pb.UploadModelResponse(model_sha256=sha, size_bytes=cached, already_cached=True)
        if not self._upload_slots.acquire(blocking=False):
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{self.cfg.max_uploads} uploads are in progress; try again shortly", "busy")
        key = id(context)
        try:  # no free inodes or space for the .part file, or a read-only cache: the slot must not leak
            f, tmp = self.cache.new_upload()
        except CacheError as exc:
            self._upload_slots.release()
            raise _Abort(getattr(grpc.StatusCode, exc.code), str(exc)) from None
        except OSError as exc:
            self._upload_slots.release()
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot store the model: {exc.strerror}", "disk") from None
        with self._state_lock:
            self._uploads[key] = (time.monotonic(), context)
        digest = hashlib.sha256()
        received = 0
        try:
            with f:
                for msg in request_iterator:
                    if msg.WhichOneof("part") != "chunk":
                        raise _Abort(invalid, "only the first upload message may be a header")
                    chunk = msg.chunk
                    received += len(chunk)
                    if received > size:
                        raise _Abort(invalid, f"received more than the {size} bytes the header announced")
                    digest.update(chunk)
                    f.write(chunk)
                    with self._state_lock:
                        self._upload_bytes += len(chunk)
                        self._uploads[key] = (time.monotonic(), context)
                    self.metrics.upload_bytes.labels(self.cfg.device_name).inc(len(chunk))
            if not context.is_active():
                raise _Abort(grpc.StatusCode.CANCELLED, "upload cancelled (by the client, or idle too long)")
            if received < size:
                raise _Abort(invalid, f"upload stream ended after {received} of {size} bytes (truncated)")
            self.cache.commit_upload(tmp, sha, size, digest.hexdigest())
        except CacheError as exc:
            raise _Abort(getattr(grpc.StatusCode, exc.code), str(exc)) from None
        except OSError as exc:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"cannot store the model: {exc}", "disk") from None
        except grpc.RpcError:  # the stream broke off (cancelled as idle, or by the client)
            raise _Abort(grpc.StatusCode.CANCELLED, "upload cancelled (by the client, or idle too long)") from None
        finally:
            tmp.unlink(missing_ok=True)
            with self._state_lock:
                self._uploads.pop(key, None)
            self._upload_slots.release()
        log.info("cached model %s (%d bytes)", sha[:12], size)
        return pb.UploadModelResponse(model_sha256=sha, size_bytes=size, received_bytes=received)

    def Benchmark(self, request: pb.BenchmarkRequest, context: grpc.ServicerContext) -> pb.BenchmarkResponse:
        return self._counted(context, lambda: self._benchmark(request, context), self.metrics.benchmarks,
                             self.metrics.request_seconds)

    def _counted(self, context: grpc.ServicerContext, call: Callable[[], R], calls: Any, seconds: Any) -> R:
        """Run an RPC's body: an `_Abort` becomes its status; the call is counted by final status in
        ``calls`` and timed in ``seconds`` (the metrics' counter and histogram)."""
        t0 = time.monotonic()
        status = "OK"
        try:
            return call()
        except _Abort as err:
            status = err.code.name
            _abort(context, err)
        finally:
            dev = self.cfg.device_name
            calls.labels(dev, status).inc()
            seconds.labels(dev).observe(time.monotonic() - t0)

    def _params(self, request: pb.BenchmarkRequest) -> BenchParams:
        cfg = self.cfg
        for name in ("runs", "warmup_runs"):
            value = getattr(request, name)
            if value > cfg.max_runs:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"{name}={value} exceeds this server's limit of {cfg.max_runs} (--max-runs)")
        if not math.isfinite(request.min_duration_s) or request.min_duration_s > cfg.max_duration_s:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"min_duration_s={request.min_duration_s} exceeds this server's limit of "
                         f"{cfg.max_duration_s} s (--max-duration-s)")
        try:
            params = wire.params_of(request, max_runs=cfg.max_runs, max_duration_s=cfg.max_duration_s)
            params.validate()
        except BenchmarkError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return params

    def _cached_sha(self, model_sha256: str) -> str:
        """The request's model hash, checked, of a model this device caches."""
        try:
            sha = check_sha(model_sha256)
        except CacheError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        cached = self.cache.lookup(sha, touch=False) is not None
        (self.metrics.cache_hits if cached else self.metrics.cache_misses).labels(self.cfg.device_name).inc()
        if not cached:
            raise self._not_found(sha)
        return sha

    @staticmethod
    def _not_found(sha: str) -> _Abort:
        return _Abort(grpc.StatusCode.NOT_FOUND, f"model {sha} is not in this device's cache; upload it first")

    def _on_device(self, context: grpc.ServicerContext, sha: str, job: dict[str, Any], *, what: str,
                   reject_if_busy: bool, run_s: float) -> tuple[dict[str, Any], float, int]:
        """Run one worker job on the device: wait in its queue, pin the model in the cache, watch
        the worker. Returns (the worker's result, seconds waited for the device, bytes uploaded
        meanwhile); every failure is an `_Abort` with its status.

        The watchdog: until the worker says the session exists, --max-load-s; then ``run_s``;
        past either, the worker is killed."""
        dev = self.cfg.device_name
        remaining = context.time_remaining()
        client_deadline = time.monotonic() + remaining if remaining is not None and remaining < 1e9 else None
        gone = lambda: not context.is_active()  # noqa: E731
        context.add_callback(self.lock.wake)
        try:
            waited = self.lock.acquire(deadline=client_deadline, abandoned=gone, reject_if_busy=reject_if_busy)
        except QueueFull as exc:
            reason = "busy" if reject_if_busy else "queue-full"
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{dev}: {exc}", reason) from None
        except QueueTimeout as exc:
            raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{dev}: {exc}") from None
        except QueueAbandoned as exc:
            raise _Abort(grpc.StatusCode.CANCELLED, str(exc)) from None

        def cap(seconds: float) -> float:
            own = time.monotonic() + seconds
            return own if client_deadline is None else min(client_deadline, own)

        try:
            with self.cache.pinned(sha) as path:
                if path is None:
                    raise self._not_found(sha)
                uploads_before = self._upload_bytes
                try:
                    reply = self.worker.run({**job, "model_path": str(path), "sha256": sha},
                                            deadline=cap(self.cfg.max_load_s),
                                            cancelled=gone, loaded_deadline=lambda: cap(run_s))
                except WorkerCancelled as exc:
                    self._restart_worker()
                    if gone():
                        raise _Abort(grpc.StatusCode.CANCELLED, f"client went away; {what} aborted") from None
                    if client_deadline is not None and time.monotonic() >= client_deadline:
                        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                     f"the call's deadline passed; {what} aborted") from None
                    why = (f"{what} ran past this server's {run_s:g} s limit (--max-duration-s)"
                           if exc.loaded else
                           f"creating the onnxruntime session took over {self.cfg.max_load_s:g} s (--max-load-s)")
                    raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{why}; aborted, the worker was restarted") from None
                except WorkerError as exc:
                    self._restart_worker()
                    if exc.memory:
                        raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "memory") from None
                    raise _Abort(grpc.StatusCode.INTERNAL, str(exc)) from None
                upload_overlap = self._upload_bytes - uploads_before
            if reply.result is None:
                code = ERROR_STATUS.get(reply.error, grpc.StatusCode.INTERNAL)
                if reply.error == runner.ModelIntegrityError.__name__:
                    self.cache.discard(sha)
                if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL):
                    self._restart_worker()  # a worker that failed that way may be in a bad state
                reason = "memory" if code == grpc.StatusCode.RESOURCE_EXHAUSTED else ""
                raise _Abort(code, reply.message, reason)
        finally:
            self.lock.release()
        return reply.result, waited, upload_overlap

    def _benchmark(self, request: pb.BenchmarkRequest, context: grpc.ServicerContext) -> pb.BenchmarkResponse:
        dev = self.cfg.device_name
        sha = self._cached_sha(request.model_sha256)
        params = self._params(request)
        result, waited, upload_overlap = self._on_device(
            context, sha, {"params": dataclasses.asdict(params)}, what="benchmark",
            reject_if_busy=request.reject_if_busy, run_s=params.max_duration_s * 1.1 + 2)
        resp = wire.benchmark_response(result, self.device, __version__)
        resp.model_sha256 = sha
        resp.queue_wait_ms = waited * 1e3
        resp.upload_bytes_during_window = upload_overlap
        self.metrics.latency_p50.labels(dev).observe(resp.latency_ms_p50)
        self.metrics.runs.labels(dev).observe(resp.runs)
        if resp.target_rel_ci > 0:
            self.metrics.rel_ci.labels(dev).set(resp.p50_rel_ci)
            if not resp.precision_met:
                self.metrics.precision_missed.labels(dev).inc()
        if resp.throttled == pb.THROTTLE_STATE_THROTTLED:
            self.metrics.throttle_events.labels(dev).inc()
        if resp.HasField("cpu_temperature_c_after"):
            self.metrics.temperature.labels(dev).set(resp.cpu_temperature_c_after)
        return resp

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        return self._counted(context, lambda: self._predict(request, context), self.metrics.predictions,
                             self.metrics.predict_seconds)

    def _predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        cfg = self.cfg
        if len(request.input_data) > cfg.max_predict_bytes:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         f"input_data is {len(request.input_data)} bytes; this server takes at most "
                         f"{cfg.max_predict_bytes} per call (--max-predict-mb): send fewer images per call")
        try:
            dims = predict.check_dims(request.input_dims, len(request.input_data), max_batch=cfg.max_predict_batch)
            params = wire.predict_params_of(request)
            params.validate()
        except BenchmarkError as exc:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        sha = self._cached_sha(request.model_sha256)
        job = predict_job("", sha, dataclasses.asdict(params), dims, request.input_data, cfg.max_predict_bytes)
        # the run's cap: the server's benchmark duration limit, as for a benchmark's timing
        result, waited, _ = self._on_device(context, sha, job, what="prediction", reject_if_busy=request.reject_if_busy,
                                            run_s=cfg.max_duration_s * 1.1 + 2)
        out = predict_result(result)
        return pb.PredictResponse(
            model_sha256=sha, device=self.device, encoding=wire.encoding_enum(params.encoding),
            output_dims=out["dims"], output_data=out["data"], run_ms=out["run_ms"], queue_wait_ms=waited * 1e3,
            session_reused=out["session_reused"], onnxruntime_version=out["onnxruntime_version"],
            benchd_version=__version__)

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        facts = sysinfo.host_facts()
        ready = self.worker.ready_info
        entries = self.cache.entries()
        resp = pb.GetInfoResponse(
            device=self.device,
            onnxruntime_version=str(ready.get("onnxruntime_version", "")),
            onnxruntime_providers=list(ready.get("providers", [])),
            benchd_version=__version__,
            cached_models=[
                pb.CachedModel(model_sha256=m.sha256, size_bytes=m.size_bytes, last_used_unix_ns=m.last_used_unix_ns)
                for m in entries
            ],
            cache_size_bytes=sum(m.size_bytes for m in entries),
            cache_capacity_bytes=self.cfg.cache_max_bytes,
            limits=pb.Limits(
                max_model_bytes=self.cfg.max_model_bytes,
                max_runs=self.cfg.max_runs,
                max_duration_s=self.cfg.max_duration_s,
                queue_capacity=self.cfg.queue_size,
                worker_memory_bytes=self.worker.memory_limit_bytes,
                max_predict_bytes=self.cfg.max_predict_bytes,
                max_predict_batch=self.cfg.max_predict_batch,
            ),
            ready=self.serving,
            throttled=wire.throttle_enum(self._throttled_now),
            **facts,  # type: ignore[arg-type]
        )
        temp = self.cfg.sensors.temperature_c()
        if temp is not None:
            resp.cpu_temperature_c = temp
        return resp

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.GetStatusResponse:
        resp = pb.GetStatusResponse(
            device=self.device,
            ready=self.serving,
            busy=self.lock.busy,
            queue_depth=self.lock.depth,
            queue_capacity=self.cfg.queue_size,
            throttled=wire.throttle_enum(self._throttled_now),
        )
        temp, freq = self.cfg.sensors.temperature_c(), self.cfg.sensors.freq_mhz()
        if temp is not None:
            resp.cpu_temperature_c = temp
        if freq is not None:
            resp.cpu_freq_mhz = freq
        return resp


class BenchdServer:
    """A running benchd server (wraps grpc.Server; `stop` also ends the worker and metrics)."""

    def __init__(self, grpc_server: grpc.Server, servicer: BenchServicer, port: int, metrics_port: int | None,
                 admission: AdmissionInterceptor) -> None:
        self.grpc_server = grpc_server
        self.servicer = servicer
        self.admission = admission
        self.port = port
        self.metrics_port = metrics_port

    def stop(self, grace: float | None = None) -> None:
        self.servicer.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        self.servicer.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self.grpc_server.wait_for_termination(timeout))


def create_server(address: str = "127.0.0.1:0", config: ServerConfig | None = None) -> tuple[BenchdServer, int]:
    """Bind `address` (port 0 picks a free port), start serving, return (server, bound port)."""
    cfg = config or ServerConfig()
    host, _ = parse_address(address, "address", any_port=True)
    if not is_loopback(host):
        if cfg.token is None and not cfg.insecure:
            raise ValueError(
                f"refusing to serve on non-loopback address {address} without a token: "
                f"pass --token-file FILE (or --insecure to accept anyone on the network)"
            )
        if cfg.tls is None:
            log.warning("serving on %s without TLS: the bearer token travels in clear text", address)
    if not (1 << 10) <= cfg.max_predict_bytes <= MAX_PREDICT_BYTES or cfg.max_predict_batch < 1:
        raise ValueError(f"Predict limits must be 1 KiB..{MAX_PREDICT_BYTES >> 20} MiB per call and >= 1 image, got "
                         f"{cfg.max_predict_bytes} bytes and {cfg.max_predict_batch} images")
    if cfg.max_model_bytes > cfg.cache_max_bytes:
        raise ValueError(
            f"max model size ({cfg.max_model_bytes} bytes) exceeds the cache cap ({cfg.cache_max_bytes} bytes)"
        )
    # every queued benchmark holds a thread: admit the queue and 16 more calls, refuse the next as
    # busy, and keep spare threads so that health checks are answered through any burst
    admission = AdmissionInterceptor(cfg.max_calls or cfg.queue_size + 16, f"/{SERVICE_NAME}/")
    server = grpc.server(
        ThreadPoolExecutor(max_workers=admission.limit + SPARE_THREADS, thread_name_prefix="benchd-rpc"),
        # the token first (an unauthenticated body is never parsed), then the parse check, then admission
        interceptors=[*([TokenInterceptor(cfg.token)] if cfg.token else []), MalformedRequestInterceptor(), admission],
        options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
            ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0),
            # a Predict call: its data and the message's own fields
            ("grpc.max_receive_message_length", max(4 << 20, cfg.max_predict_bytes + (64 << 10))),
            ("grpc.max_send_message_length", max(4 << 20, cfg.max_predict_bytes + (64 << 10))),
        ],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    servicer = BenchServicer(cfg, health_servicer)
    pb_grpc.add_BenchServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        port = server.add_secure_port(address, cfg.tls.credentials()) if cfg.tls else server.add_insecure_port(address)
    except TlsFilesError:
        servicer.close()
        raise
    except RuntimeError:  # gRPC says only "Failed to bind"; with TLS the usual cause is the key pair
        servicer.close()
        if cfg.tls:
            raise TlsFilesError(f"could not serve TLS on {address} with certificate {cfg.tls.cert_file} and key "
                                f"{cfg.tls.key_file}: does the key belong to the certificate (and is the address "
                                "free)?") from None
        raise OSError(f"could not bind {address}") from None
    if not port:
        servicer.close()
        raise OSError(f"could not bind {address}")
    metrics_port = None
    try:
        if cfg.metrics_port is not None:
            metrics_port = servicer.metrics.serve(cfg.metrics_port, cfg.metrics_address)
    except OSError:
        servicer.close()
        raise
    server.start()
    servicer.start_background()
    log.info("benchd %s serving %s on port %d (device %s, class %s)", __version__, address, port,
             cfg.device_name, cfg.device_class)
    return BenchdServer(server, servicer, port, metrics_port, admission), port
