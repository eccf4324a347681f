"""benchd server + client end to end: real servers on 127.0.0.1 (port 0), real clients."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchd import errors
from benchd.client import BenchClient
from benchd.security import ClientTls, ServerTls
from benchd.server import BenchdServer, ServerConfig, create_server
from benchd.sysinfo import Sensors, Throttle
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc
from tests.helpers import benchd_fixtures as fx

pytestmark = pytest.mark.timeout(120)

FAST: dict[str, Any] = {"runs": 3, "warmup_runs": 1, "target_rel_ci": 0}  # a fixed count


def start(tmp: Path, **overrides: object) -> tuple[BenchdServer, int]:
    cfg = ServerConfig(
        device_name=str(overrides.pop("device_name", "test-dev")), device_class="test",
        cache_dir=str(tmp / "cache"), monitor_interval_s=0, worker_memory_bytes=1 << 30,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return create_server("127.0.0.1:0", cfg)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "conv": fx.conv_model(d / "conv.onnx"),
        "conv2": fx.conv_model(d / "conv2.onnx", seed=2),
        "conv3": fx.conv_model(d / "conv3.onnx", seed=3),
        "big": fx.big_model(d / "big.onnx"),
        "dynamic_hw": fx.dynamic_hw_model(d / "dyn.onnx"),
        "string": fx.string_input_model(d / "str.onnx"),
        "unloadable": fx.unloadable_model(d / "unloadable.onnx"),
        "run_failure": fx.run_failure_model(d / "runfail.onnx"),
        "hog": fx.memory_hog_model(d / "hog.onnx", gib=2.0),
        "slow": fx.slow_model(d / "slow.onnx", hw=48, layers=3),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BenchdServer, int]]:
    srv, port = start(tmp_path_factory.mktemp("srv"), metrics_port=0, queue_size=2)
    yield srv, port
    srv.stop(0)


@pytest.fixture()
def client(server: tuple[BenchdServer, int]) -> Iterator[BenchClient]:
    with BenchClient(f"127.0.0.1:{server[1]}", retries=1) as c:
        fx.wait_serving(c)
        yield c


# ------------------------------------------------------------------ happy paths


def test_upload_and_benchmark_real_torch_export(client: BenchClient, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    path = tmp_path / "exported.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.randn(1, 3, 64, 64),), str(path), dynamo=False,
                          input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    result = client.benchmark(path, runs=5, warmup_runs=2, return_samples=True, target_rel_ci=0)
    assert result.uploaded and result.runs == 5 and len(result.samples_ms) == 5
    assert result.inputs[0]["dims"] == [1, 3, 64, 64] and result.inputs[0]["graph_dims"][0] == "batch"
    assert 0 < result.latency_ms_min <= result.latency_ms_p50 <= result.latency_ms_p99 <= result.latency_ms_max
    assert result.latency_ms_mean == pytest.approx(sum(result.samples_ms) / 5)
    assert result.session_create_ms > 0 and result.first_run_ms > 0 and result.peak_rss_bytes > 0
    assert result.onnxruntime_version and result.device_name == "test-dev" and result.device_class == "test"
    assert result.throttled is None  # no Pi sensor here: unknown, not "false"
    assert result.timing_start_unix_ns < result.timing_end_unix_ns
    assert result.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_big_model_streams_in_chunks_and_cache_hit_skips_upload(client: BenchClient, models: dict[str, Path]) -> None:
    big = models["big"]
    assert big.stat().st_size > 4 * 2**20
    first = client.benchmark(big, runs=2, warmup_runs=0)
    assert first.uploaded
    second = client.benchmark(big, runs=2, warmup_runs=0)
    assert not second.uploaded
    assert client.has_model(big) and client.has_model(first.model_sha256)
    again = client.upload(big)  # the server answers "already cached" without needing the chunks
    assert not again.uploaded
    info = client.info()
    assert first.model_sha256 in {m.model_sha256 for m in info.cached_models}
    assert info.cpu_cores >= 1 and info.architecture and info.onnxruntime_version
    assert "CPUExecutionProvider" in info.onnxruntime_providers
    assert info.limits.max_model_bytes == 256 << 20 and info.ready


def test_duration_threads_batch_and_dynamic_shapes(client: BenchClient, models: dict[str, Path]) -> None:
    r = client.benchmark(models["conv"], runs=1, warmup_runs=0, min_duration_s=0.2, intra_op_threads=1,
                         batch_size=2, graph_optimization="basic")
    assert r.timing_end_unix_ns - r.timing_start_unix_ns >= 0.2e9 and r.runs > 1 and r.timed_total_s > 0.1
    assert r.intra_op_threads == 1 and r.batch_size == 2 and r.inputs[0]["dims"] == [2, 3, 32, 32]
    assert r.graph_optimization == "basic"
    with pytest.raises(errors.BenchInvalidArgument, match="dynamic dimension 'h'"):
        client.benchmark(models["dynamic_hw"], **FAST)
    r = client.benchmark(models["dynamic_hw"], input_shapes={"x": [1, 3, 20, 30]}, **FAST)
    assert r.inputs[0]["dims"] == [1, 3, 20, 30]


def test_health_reflection_and_metrics(server: tuple[BenchdServer, int], client: BenchClient,
                                       models: dict[str, Path]) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert client.health() == "SERVING" and client.health("benchd.v1.BenchService") == "SERVING"
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "benchd.v1.BenchService" in services and "grpc.health.v1.Health" in services
    client.benchmark(models["conv"], **FAST)
    assert server[0].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{server[0].metrics_port}/metrics", timeout=5).read().decode()
    assert 'benchd_benchmarks_total{device="test-dev",status="OK"}' in text
    for name in ("benchd_latency_p50_ms_bucket", "benchd_queue_depth", "benchd_upload_bytes_total",
                 "benchd_cache_hits_total", "benchd_cache_misses_total", "benchd_throttle_events_total"):
        assert name in text


# ------------------------------------------------------------------ bad input


def _raw_upload(port: int, messages: list[pb.UploadModelRequest]) -> grpc.RpcError:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BenchServiceStub(channel).UploadModel(iter(messages), timeout=10)
    return info.value  # type: ignore[return-value]


def _header(data: bytes, size: int | None = None, sha: str | None = None) -> pb.UploadModelRequest:
    return pb.UploadModelRequest(header=pb.UploadHeader(
        model_sha256=sha or hashlib.sha256(data).hexdigest(), size_bytes=len(data) if size is None else size))


def test_bad_uploads_get_clear_statuses(server: tuple[BenchdServer, int], client: BenchClient,
                                        models: dict[str, Path]) -> None:
    port = server[1]
    data = models["conv2"].read_bytes()
    chunk = pb.UploadModelRequest(chunk=data)
    # garbage bytes: refused at upload, not cached
    with pytest.raises(errors.BenchInvalidArgument, match="not an ONNX model"):
        client.upload(b"\xff\x00garbage" * 100)
    # truncated stream: fewer bytes than announced
    err = _raw_upload(port, [_header(data, size=len(data) + 10), chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in err.details()
    # more bytes than announced
    err = _raw_upload(port, [_header(data, size=len(data) - 1), chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "more than" in err.details()
    # sha mismatch
    err = _raw_upload(port, [_header(data, sha=hashlib.sha256(b"other").hexdigest()), chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256 mismatch" in err.details()
    # no header / malformed sha / oversize header
    err = _raw_upload(port, [chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "header" in err.details()
    err = _raw_upload(port, [_header(data, sha="abc"), chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase hex" in err.details()
    err = _raw_upload(port, [_header(data, size=300 << 20), chunk])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256.0 MiB" in err.details()
    assert not client.has_model(data)  # nothing half-written was cached
    # unknown sha
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.BenchServiceStub(channel).Benchmark(pb.BenchmarkRequest(model_sha256="0" * 64), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_bad_models_and_requests_fail_that_request_only(client: BenchClient, models: dict[str, Path]) -> None:
    with pytest.raises(errors.BenchInvalidArgument, match="could not load the model"):
        client.benchmark(models["unloadable"], **FAST)
    with pytest.raises(errors.BenchInvalidArgument, match="failed to run the model"):
        client.benchmark(models["run_failure"], **FAST)
    with pytest.raises(errors.BenchInvalidArgument, match=r"unsupported type tensor\(string\)"):
        client.benchmark(models["string"], **FAST)
    with pytest.raises(errors.BenchInvalidArgument, match="exceeds this server's limit"):
        client.benchmark(models["conv"], runs=10**6)
    with pytest.raises(errors.BenchInvalidArgument, match="min_duration_s"):
        client.benchmark(models["conv"], min_duration_s=10**6)
    with pytest.raises(errors.BenchInvalidArgument, match="need runs"):
        client.benchmark(models["conv"], runs=0)
    assert client.benchmark(models["conv"], **FAST).runs == 3  # still serving


def test_memory_hog_and_worker_crash_fail_one_request(server: tuple[BenchdServer, int], client: BenchClient,
                                                      models: dict[str, Path]) -> None:
    # 2 GiB at run time against the 1 GiB worker limit of these tests.
    with pytest.raises((errors.BenchResourceExhausted, errors.BenchInternal), match="memory"):
        client.benchmark(models["hog"], runs=1, warmup_runs=0)
    assert client.benchmark(models["conv"], **FAST).runs == 3

    # A worker killed mid-benchmark (segfault, OOM killer) fails that request with INTERNAL.
    client.ensure_model(models["slow"])
    servicer = server[0].servicer

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 20
        while not servicer.lock.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        servicer.worker.kill()

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    with pytest.raises(errors.BenchInternal, match="worker died"):
        client.benchmark(models["slow"], runs=1, warmup_runs=0, min_duration_s=5)
    killer.join()
    assert client.benchmark(models["conv"], **FAST).runs == 3


# ------------------------------------------------------------------ concurrency


def test_concurrent_clients_never_overlap(server: tuple[BenchdServer, int], models: dict[str, Path]) -> None:
    results = []
    failures: list[BaseException] = []

    def caller() -> None:
        with BenchClient(f"127.0.0.1:{server[1]}") as c:
            for _ in range(3):
                try:
                    results.append(c.benchmark(models["slow"], runs=2, warmup_runs=0, min_duration_s=0.05))
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(results) == 6
    windows = sorted((r.timing_start_unix_ns, r.timing_end_unix_ns) for r in results)
    for (_, end), (next_start, _) in zip(windows, windows[1:]):
        assert next_start >= end, "two timing windows overlapped on one device"
    assert any(r.queue_wait_ms > 0 for r in results)  # they really contended


def test_queue_full_busy_and_deadline(tmp_path: Path, models: dict[str, Path]) -> None:
    srv, port = start(tmp_path, queue_size=1)
    target = f"127.0.0.1:{port}"
    try:
        with BenchClient(target) as a, BenchClient(target) as b, BenchClient(target) as c:
            fx.wait_serving(a)
            for m in ("slow", "conv"):
                a.ensure_model(models[m])
            holder = threading.Thread(target=a.benchmark, args=(models["slow"],),
                                      kwargs={"runs": 1, "warmup_runs": 0, "min_duration_s": 3.0})
            holder.start()
            while not a.status().busy:
                time.sleep(0.01)
            # busy device: reject_if_busy is refused at once
            t0 = time.monotonic()
            with pytest.raises(errors.BenchBusy):
                b.benchmark(models["conv"], reject_if_busy=True, **FAST)
            assert time.monotonic() - t0 < 0.5
            # a deadline that passes in the queue
            with pytest.raises(errors.BenchDeadlineExceeded):
                b.benchmark(models["conv"], timeout_s=0.4, **FAST)
            # one waiter fills the queue of 1; the next caller is refused immediately
            waiter_result: list[object] = []
            waiter = threading.Thread(target=lambda: waiter_result.append(b.benchmark(models["conv"], **FAST)))
            waiter.start()
            while a.status().queue_depth < 1:
                assert holder.is_alive(), "the holder finished before the queue filled"
                time.sleep(0.01)
            t1 = time.monotonic()
            with pytest.raises(errors.BenchBusy, match="queue full"):
                c.benchmark(models["conv"], **FAST)
            assert time.monotonic() - t1 < 0.5
            holder.join()
            waiter.join()
            assert len(waiter_result) == 1
            st = a.status()
            assert not st.busy and st.queue_depth == 0 and st.queue_capacity == 1
    finally:
        srv.stop(0)


# ------------------------------------------------------------------ cache


def test_cache_lru_eviction_survives_restart(tmp_path: Path, models: dict[str, Path]) -> None:
    size = models["conv"].stat().st_size
    cap = int(size * 2.5)
    srv, port = start(tmp_path, cache_max_bytes=cap, max_model_bytes=size * 2)
    try:
        with BenchClient(f"127.0.0.1:{port}") as c:
            a = c.upload(models["conv"]).sha256
            time.sleep(0.01)
            b = c.upload(models["conv2"]).sha256
            time.sleep(0.01)
            assert c.has_model(a)  # touch a: b is now the least recently used
            d = c.upload(models["conv3"]).sha256
            assert c.has_model(a) and c.has_model(d) and not c.has_model(b)
            assert c.info().cache_size_bytes <= cap
    finally:
        srv.stop(0)
    srv, port = start(tmp_path, cache_max_bytes=cap, max_model_bytes=size * 2)  # same cache dir
    try:
        with BenchClient(f"127.0.0.1:{port}") as c:
            assert c.has_model(a) and c.has_model(d) and not c.has_model(b)
            assert not c.benchmark(models["conv"], **FAST).uploaded
    finally:
        srv.stop(0)


def test_a_read_only_cache_serves_what_it_holds_and_refuses_uploads(tmp_path: Path, models: dict[str, Path]) -> None:
    """`benchd serve --cache-dir D` on a read-only mount (an image baked once for many devices):
    HasModel, Benchmark and Predict answered UNKNOWN "[Errno 30] Read-only file system" (touching
    the file's last-use time) with a traceback in the log. Now the models held are served, their
    times left as they are, and an upload is a FAILED_PRECONDITION naming the folder."""
    import numpy as np

    cache = tmp_path / "cache-ro"  # serve_subprocess's cache folder for the name "ro"
    srv, port = start(tmp_path, cache_dir=str(cache))
    try:
        with BenchClient(f"127.0.0.1:{port}") as c:
            held = c.upload(models["conv"]).sha256
    finally:
        srv.stop(0)
    prefix, why = fx.read_only_prefix(cache)
    if prefix is None:
        pytest.skip(why)
    cached = cache / "models" / f"{held}.onnx"
    mtime = cached.stat().st_mtime_ns
    log = tmp_path / "serve.log"
    with fx.serve_subprocess(tmp_path, "ro", prefix=prefix, log=log) as (_, port), \
            BenchClient(f"127.0.0.1:{port}", retries=0) as c:
        fx.wait_serving(c)
        assert c.has_model(held)
        result = c.benchmark(models["conv"], **FAST)
        assert result.runs == 3 and not result.uploaded
        masks = c.predict(models["conv"], np.zeros((2, 3, 32, 32), np.float32)).output
        assert masks.shape == (2, 32, 32)
        assert [m.model_sha256 for m in c.info().cached_models] == [held]
        assert not c.has_model(models["conv2"])
        for refused in (lambda: c.upload(models["conv2"]), lambda: c.benchmark(models["conv2"], **FAST)):
            with pytest.raises(errors.BenchInvalidArgument) as e:
                refused()
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert e.value.details == (f"the model cache {cache} is read-only: this device serves only the models it "
                                       "holds and cannot store new ones")
    assert cached.stat().st_mtime_ns == mtime  # the read-only mount was real: nothing was touched
    text = log.read_text()
    assert "Traceback" not in text and "Errno" not in text, text
    said = [line for line in text.splitlines() if "read-only" in line and "benchd.cache" in line]
    assert len(said) == 1 and said[0].endswith(f"model cache {cache} is read-only: serving only the 1 model(s) it "
                                               "holds, refusing uploads"), text


# ------------------------------------------------------------------ security and health


def test_token_required_and_checked(tmp_path: Path, models: dict[str, Path]) -> None:
    srv, port = start(tmp_path, token="s3cret-token")
    target = f"127.0.0.1:{port}"
    try:
        with BenchClient(target) as anonymous:
            fx.wait_serving(anonymous)  # health answers without a token
            with pytest.raises(errors.BenchAuthError, match="missing bearer token"):
                anonymous.info()
        with BenchClient(target, token="wrong") as wrong:
            with pytest.raises(errors.BenchAuthError, match="wrong bearer token") as info:
                wrong.upload(models["conv"])
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        token_file = tmp_path / "token"
        token_file.write_text("s3cret-token\n")
        token_file.chmod(0o600)
        with BenchClient(target, token_file=token_file) as good:
            assert good.benchmark(models["conv"], **FAST).runs == 3
    finally:
        srv.stop(0)


def test_non_loopback_bind_needs_token_or_insecure(tmp_path: Path) -> None:
    cfg = ServerConfig(cache_dir=str(tmp_path / "c"), monitor_interval_s=0)
    with pytest.raises(ValueError, match="without a token"):
        create_server("0.0.0.0:0", cfg)
    cfg.insecure = True
    srv, port = create_server("0.0.0.0:0", cfg)
    assert port > 0
    srv.stop(0)


def test_mutual_tls(tmp_path: Path, models: dict[str, Path]) -> None:
    pytest.importorskip("cryptography")
    certs = fx.make_tls(tmp_path)
    tls = ServerTls(str(certs["server_cert"]), str(certs["server_key"]), str(certs["ca"]))
    srv, port = start(tmp_path, tls=tls, token="tok")
    target = f"127.0.0.1:{port}"
    try:
        good = ClientTls(str(certs["ca"]), str(certs["client_cert"]), str(certs["client_key"]))
        with BenchClient(target, tls=good, token="tok") as c:
            fx.wait_serving(c)
            assert c.benchmark(models["conv"], **FAST).runs == 3
        # gRPC says only "Socket closed"; the error says what is likely wrong
        with BenchClient(target, tls=ClientTls(str(certs["ca"])), token="tok", retries=0) as no_cert:
            with pytest.raises(errors.BenchError, match="require a client certificate"):
                no_cert.info()
        with BenchClient(target, token="tok", retries=0) as plaintext:
            with pytest.raises(errors.BenchUnavailable, match="does this benchd serve TLS"):
                plaintext.info()
        (tmp_path / "other").mkdir()
        foreign = fx.make_tls(tmp_path / "other")  # a client certificate of another CA
        with BenchClient(target, tls=ClientTls(str(certs["ca"]), str(foreign["client_cert"]),
                                               str(foreign["client_key"])), token="tok", retries=0) as stranger:
            with pytest.raises(errors.BenchError, match="refused our client certificate"):
                stranger.info()
    finally:
        srv.stop(0)


class FakeSensors(Sensors):
    def __init__(self) -> None:
        self.throttled = False

    def temperature_c(self) -> float | None:
        return 81.5 if self.throttled else 55.0

    def freq_mhz(self) -> float | None:
        return 600.0 if self.throttled else 1500.0

    def throttle(self) -> Throttle:
        return Throttle(0x20002 if self.throttled else 0)


def test_not_serving_until_ready_and_while_throttled(tmp_path: Path) -> None:
    sensors = FakeSensors()
    srv, port = start(
        tmp_path, sensors=sensors, unhealthy_when_throttled=True, monitor_interval_s=0.05,
        worker_prefix=("bash", "-c", 'sleep 2; exec "$@"', "slow-start"),
    )
    try:
        with BenchClient(f"127.0.0.1:{port}") as c:
            assert c.health() == "NOT_SERVING"  # the worker is still starting
            assert not c.status().ready
            fx.wait_serving(c)
            st = c.status()
            assert st.ready and st.cpu_temperature_c == 55.0 and st.cpu_freq_mhz == 1500.0
            assert st.throttled == pb.THROTTLE_STATE_NOT_THROTTLED
            sensors.throttled = True
            deadline = time.monotonic() + 5
            while c.health() == "SERVING" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert c.health() == "NOT_SERVING" and c.status().throttled == pb.THROTTLE_STATE_THROTTLED
            sensors.throttled = False
            fx.wait_serving(c, timeout_s=5)
    finally:
        srv.stop(0)


def test_an_upload_the_cache_cannot_store_frees_its_slot(tmp_path: Path, models: dict[str, Path]) -> None:
    """Creating the upload's .part file failing (no free inodes, a broken cache folder) is a clear
    RESOURCE_EXHAUSTED, and the upload slot is not leaked (with --max-uploads 1 every later upload
    was refused as busy)."""
    import shutil

    from benchd.errors import BenchError

    srv, port = start(tmp_path, max_uploads=1)
    tmp_dir = srv.servicer.cache.tmp_dir
    try:
        with BenchClient(f"127.0.0.1:{port}", retries=0) as c:
            fx.wait_serving(c)
            shutil.rmtree(tmp_dir)
            tmp_dir.write_text("not a folder")  # mkstemp inside it fails with an OSError
            for _ in range(2):
                with pytest.raises(BenchError, match="cannot store the model"):
                    c.upload(models["conv"])
            tmp_dir.unlink()
            tmp_dir.mkdir()
            assert c.upload(models["conv"]).uploaded  # the one slot is free again
    finally:
        srv.stop(grace=1)
