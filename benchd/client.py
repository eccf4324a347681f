"""BenchClient: talk to one benchd server (upload-if-missing, benchmark, predict, info, status).

Every call carries a deadline; only UNAVAILABLE is retried (with backoff); gRPC failures are
raised as benchd.errors exceptions that keep the server's message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchd import predict, wire
from benchd.cache import SHA256_RE, sha256_file
from benchd.errors import BenchError, BenchNotFound, from_rpc_error
from benchd.predict import PredictParams
from benchd.runner import BenchParams
from benchd.security import ClientTls, auth_metadata, parse_address, read_token_file
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc

T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # well under gRPC's 4 MiB default message limit
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    # Notice a device that vanished (power cut) during a long benchmark.
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 40 << 20),  # Predict outputs of a server with a raised --max-predict-mb
]


@dataclass(frozen=True)
class Model:
    """A model file or blob with its content hash (computed once)."""

    sha256: str
    size_bytes: int
    path: Path | None = None
    data: bytes | None = None
    name: str = ""

    @classmethod
    def of(cls, model: Model | str | os.PathLike[str] | bytes) -> Model:
        if isinstance(model, Model):
            return model
        if isinstance(model, (bytes, bytearray)):
            data = bytes(model)
            return cls(hashlib.sha256(data).hexdigest(), len(data), data=data)
        p = Path(model)
        return cls(sha256_file(p), p.stat().st_size, path=p, name=p.name)

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        if self.data is not None:
            for i in range(0, len(self.data), size):
                yield self.data[i : i + size]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            yield from iter(lambda: f.read(size), b"")


@dataclass(frozen=True)
class BenchResult:
    """One benchmark, as measured by one device (units in names, like the proto)."""

    model_sha256: str
    device_name: str
    device_class: str
    target: str
    runs: int
    warmup_runs: int
    latency_ms_mean: float
    latency_ms_std: float
    latency_ms_min: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_max: float
    latency_cv: float
    session_create_ms: float
    first_run_ms: float
    timed_total_s: float
    peak_rss_bytes: int
    rss_before_bytes: int
    cpu_temperature_c_before: float | None
    cpu_temperature_c_after: float | None
    cpu_freq_mhz_before: float | None
    cpu_freq_mhz_after: float | None
    throttled: bool | None  # None: the device cannot tell
    throttled_raw_before: str
    throttled_raw_after: str
    onnxruntime_version: str
    intra_op_threads: int
    batch_size: int
    graph_optimization: str
    inputs: tuple[dict[str, Any], ...]
    timing_start_unix_ns: int
    timing_end_unix_ns: int
    queue_wait_ms: float
    samples_ms: tuple[float, ...]
    hit_max_duration: bool
    benchd_version: str
    upload_bytes_during_window: int
    governor: str
    latency_ms_p50_ci_low: float
    latency_ms_p50_ci_high: float
    latency_ms_p90_ci_low: float
    latency_ms_p90_ci_high: float
    p50_rel_ci: float  # achieved p50 CI half-width / p50; -1: too few runs to bound it
    target_rel_ci: float
    precision_met: bool
    latency_ms_p50_first_tenth: float
    latency_ms_p50_last_tenth: float
    call_wall_s: float = 0.0  # client-side duration of the Benchmark call
    uploaded: bool = False  # this call had to upload the model first
    farm_device: str | None = None  # inventory name when measured through a BenchFarm
    attempts: int = 1  # devices tried by the farm (> 1 after a fail-over)

    @classmethod
    def from_proto(cls, resp: pb.BenchmarkResponse, target: str, **extra: Any) -> BenchResult:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in extra or f.name in ("target",):
                continue
            if f.name in ("device_name", "device_class"):
                values[f.name] = getattr(resp.device, "name" if f.name == "device_name" else "device_class")
            elif f.name.startswith(("cpu_temperature_c_", "cpu_freq_mhz_")):
                values[f.name] = wire.optional(resp, f.name)
            elif f.name == "throttled":
                values[f.name] = wire.throttle_state(resp.throttled)
            elif f.name == "graph_optimization":
                values[f.name] = wire.graph_optimization_name(resp.graph_optimization)
            elif f.name == "inputs":
                values[f.name] = wire.inputs_of(resp)
            elif f.name == "samples_ms":
                values[f.name] = tuple(resp.samples_ms)
            elif hasattr(resp, f.name):
                values[f.name] = getattr(resp, f.name)
        return cls(target=target, **values, **extra)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = list(d["inputs"])
        d["samples_ms"] = list(d["samples_ms"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        """The result `to_dict` gave (other keys are ignored; a missing field is a KeyError)."""
        values = {f.name: d[f.name] for f in dataclasses.fields(cls)
                  if f.name in d or f.default is dataclasses.MISSING}
        values["inputs"] = tuple(values["inputs"])
        values["samples_ms"] = tuple(values["samples_ms"])
        return cls(**values)


@dataclass(frozen=True)
class Prediction:
    """A model's outputs for a set of inputs, computed by one device (in one or more calls).
    ``output``: (N, H, W) booleans for masks, the first output as float32 for raw."""

    model_sha256: str
    device_name: str
    device_class: str
    target: str
    encoding: str
    output: np.ndarray
    calls: int
    run_ms: float  # session.run on the device, all calls together
    queue_wait_ms: float
    call_wall_s: float  # client-side, all calls together (uploading the model not included)
    bytes_sent: int  # input data on the wire
    bytes_received: int  # output data on the wire
    onnxruntime_version: str
    benchd_version: str
    uploaded: bool = False
    farm_device: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class UploadResult:
    sha256: str
    size_bytes: int
    uploaded: bool  # False: the device already had it


class BenchClient:
    """Client of one benchd server. Thread-safe (one gRPC channel, shared)."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = 30.0,
        benchmark_timeout_s: float = 600.0,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        parse_address(target, "target")  # before gRPC, which would take port 70000 for 4464
        if token is None and token_file is not None:
            token = read_token_file(token_file)
        self.target = target
        self.timeout_s = timeout_s
        self.benchmark_timeout_s = benchmark_timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self.chunk_bytes = chunk_bytes
        self._metadata = auth_metadata(token)
        options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
        self._tls = tls
        if tls is not None:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(target, tls.credentials(), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.BenchServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._limits: pb.Limits | None = None  # the server's Predict limits, asked once per client

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BenchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing

    def _call(self, fn: Callable[[float], T], timeout_s: float, retries: int | None = None) -> T:
        """Run fn(remaining_timeout) under one overall deadline, retrying UNAVAILABLE only."""
        deadline = time.monotonic() + timeout_s
        tries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                return fn(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as err:
                error = self._explained(from_rpc_error(err, self.target))
                pause = self.retry_backoff_s * (2**attempt)
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt >= tries \
                        or time.monotonic() + pause >= deadline:
                    raise error from None
                attempt += 1
                time.sleep(pause)

    def _explained(self, error: BenchError) -> BenchError:
        """gRPC says only "Socket closed" when the TLS handshake fails: say what is likely wrong."""
        if error.code != grpc.StatusCode.UNAVAILABLE or "socket closed" not in error.details.lower():
            return error
        if self._tls is None:
            hint = "does this benchd serve TLS? then pass its CA (--tls-ca, or 'tls: {ca: ...}' in the inventory)"
        elif not self._tls.cert_file:
            hint = ("does this benchd require a client certificate (mutual TLS)? then pass --tls-cert and --tls-key "
                    "(or 'cert' and 'key' under 'tls' in the inventory)")
        else:
            hint = "the server may have refused our client certificate (is it signed by the CA the server trusts?)"
        return type(error)(f"{error.details} ({hint})", code=error.code, target=error.target, reason=error.reason)

    # -- API

    def health(self, service: str = "", timeout_s: float | None = None) -> str:
        """'SERVING' / 'NOT_SERVING' / ... of the standard health service (no token needed)."""
        resp = self._call(
            lambda t: self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=t),
            timeout_s or self.timeout_s,
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def has_model(self, model: Model | str | os.PathLike[str] | bytes) -> bool:
        """Whether the device caches the model (a Model, path, bytes, or a sha256 hex string)."""
        sha = model if isinstance(model, str) and SHA256_RE.match(model) else Model.of(model).sha256
        req = pb.HasModelRequest(model_sha256=sha)
        resp = self._call(lambda t: self._stub.HasModel(req, timeout=t, metadata=self._metadata), self.timeout_s)
        return bool(resp.present)

    def upload(self, model: Model | str | os.PathLike[str] | bytes, timeout_s: float | None = None) -> UploadResult:
        """Stream the model in chunks (the server skips it if it already has the hash)."""
        m = Model.of(model)

        def messages() -> Iterator[pb.UploadModelRequest]:
            yield pb.UploadModelRequest(
                header=pb.UploadHeader(model_sha256=m.sha256, size_bytes=m.size_bytes, filename=m.name)
            )
            for chunk in m.chunks(self.chunk_bytes):
                yield pb.UploadModelRequest(chunk=chunk)

        # Generous deadline: 30 s plus 1 s per MiB (a Pi on Wi-Fi).
        timeout = timeout_s or self.timeout_s + m.size_bytes / 2**20
        resp = self._call(lambda t: self._stub.UploadModel(messages(), timeout=t, metadata=self._metadata), timeout)
        return UploadResult(m.sha256, m.size_bytes, uploaded=not resp.already_cached)

    def ensure_model(self, model: Model | str | os.PathLike[str] | bytes) -> UploadResult:
        """Upload only if the device does not have the model yet."""
        m = Model.of(model)
        if self.has_model(m.sha256):
            return UploadResult(m.sha256, m.size_bytes, uploaded=False)
        return self.upload(m)

    def benchmark(
        self,
        model: Model | str | os.PathLike[str] | bytes,
        options: BenchParams | None = None,
        *,
        reject_if_busy: bool = False,
        timeout_s: float | None = None,
        **knobs: Any,
    ) -> BenchResult:
        """Upload if missing, then time the model. `knobs` are `BenchParams` fields."""
        opts = dataclasses.replace(options or BenchParams(), **knobs)
        m = Model.of(model)
        req = wire.benchmark_request(opts, m.sha256, reject_if_busy=reject_if_busy)  # a bad knob fails before upload
        uploaded = self.ensure_model(m).uploaded
        timeout = timeout_s or self.benchmark_timeout_s + opts.min_duration_s
        for attempt in range(2):
            start = time.monotonic()
            try:
                resp = self._call(
                    lambda t: self._stub.Benchmark(req, timeout=t, metadata=self._metadata), timeout
                )
            except BenchNotFound:
                if attempt:
                    raise
                uploaded = self.upload(m).uploaded or uploaded  # evicted meanwhile: send it again
                continue
            return BenchResult.from_proto(
                resp, self.target, call_wall_s=time.monotonic() - start, uploaded=uploaded
            )
        raise BenchError("unreachable", target=self.target)

    def predict(
        self,
        model: Model | str | os.PathLike[str] | bytes,
        inputs: np.ndarray,
        params: PredictParams | None = None,
        *,
        reject_if_busy: bool = False,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Upload if missing, then run the model on ``inputs`` (N, ...) on the device, in as many
        calls as the server's limits need. ``reject_if_busy`` applies to the first call: once the
        device has started on the set, the remaining calls wait their turn."""
        opts = params or PredictParams()
        opts.validate()
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"inputs must be a batch (N, ...) of at least one item, got shape {list(x.shape)}")
        m = Model.of(model)
        if self._limits is None:
            self._limits = self.info().limits
        limits = self._limits
        max_bytes = limits.max_predict_bytes or 3 << 20  # 0: a server from before Predict (it says UNIMPLEMENTED)
        per_item = x[0].nbytes
        if per_item > max_bytes:
            raise ValueError(f"one input of shape {list(x.shape[1:])} is {per_item} bytes; {self.target} takes at "
                             f"most {max_bytes} bytes per Predict call (benchd serve --max-predict-mb)")
        step = max(1, min(limits.max_predict_batch or 64, max_bytes // per_item))
        uploaded = self.ensure_model(m).uploaded
        timeout = timeout_s or self.benchmark_timeout_s
        outputs: list[np.ndarray] = []
        run_ms = wait_ms = wall = 0.0
        sent = received = calls = 0
        resp = None
        for start in range(0, x.shape[0], step):
            req = wire.predict_request(m.sha256, x[start:start + step], opts, reject_if_busy and not calls)
            t0 = time.monotonic()
            try:
                resp = self._predict_call(req, timeout)
            except BenchNotFound:  # evicted meanwhile: send it again, once per call
                uploaded = self.upload(m).uploaded or uploaded
                resp = self._predict_call(req, timeout)
            wall += time.monotonic() - t0
            calls += 1
            sent += len(req.input_data)
            received += len(resp.output_data)
            run_ms += resp.run_ms
            wait_ms += resp.queue_wait_ms
            dims = list(resp.output_dims)
            if wire.encoding_name(resp.encoding) == "mask":
                outputs.append(predict.unpack_mask(resp.output_data, dims))
            else:
                outputs.append(predict.decode(resp.output_data, dims))
        assert resp is not None
        return Prediction(
            model_sha256=m.sha256, device_name=resp.device.name, device_class=resp.device.device_class,
            target=self.target, encoding=opts.encoding, output=np.concatenate(outputs), calls=calls, run_ms=run_ms,
            queue_wait_ms=wait_ms, call_wall_s=wall, bytes_sent=sent, bytes_received=received,
            onnxruntime_version=resp.onnxruntime_version, benchd_version=resp.benchd_version, uploaded=uploaded)

    def _predict_call(self, req: pb.PredictRequest, timeout_s: float) -> pb.PredictResponse:
        return self._call(lambda t: self._stub.Predict(req, timeout=t, metadata=self._metadata), timeout_s)

    def info(self) -> pb.GetInfoResponse:
        return self._call(
            lambda t: self._stub.GetInfo(pb.GetInfoRequest(), timeout=t, metadata=self._metadata), self.timeout_s
        )

    def status(self, timeout_s: float | None = None, retries: int | None = None) -> pb.GetStatusResponse:
        return self._call(
            lambda t: self._stub.GetStatus(pb.GetStatusRequest(), timeout=t, metadata=self._metadata),
            timeout_s or self.timeout_s,
            retries,
        )
