"""benchd against a hostile client: every class of bad input gets its status code, and the server
still benchmarks a good model afterwards. Real servers on 127.0.0.1 (port 0), raw gRPC where the
client library would refuse to send the bad thing; bounded loops only."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

from benchd import errors
from benchd.client import BenchClient
from benchd.server import BenchdServer, ServerConfig, create_server
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc
from tests.helpers import benchd_fixtures as fx

pytestmark = pytest.mark.timeout(180)

TOKEN = "hostile-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
FIXED: dict[str, Any] = {"runs": 3, "warmup_runs": 0, "target_rel_ci": 0}
Code = grpc.StatusCode


def start(tmp: Path, **overrides: Any) -> tuple[BenchdServer, int]:
    cfg = ServerConfig(device_name="hostile", device_class="test", cache_dir=str(tmp / "cache"),
                       monitor_interval_s=0, worker_memory_bytes=1 << 30, token=TOKEN, queue_size=2)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return create_server("127.0.0.1:0", cfg)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BenchdServer, int]]:
    srv, port = start(tmp_path_factory.mktemp("hostile"), max_duration_s=4.0, max_load_s=20.0,
                      upload_idle_s=1.0, max_uploads=2)
    yield srv, port
    srv.stop(0)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.conv_model(tmp_path_factory.mktemp("good") / "good.onnx")


@pytest.fixture()
def client(server: tuple[BenchdServer, int]) -> Iterator[BenchClient]:
    with BenchClient(f"127.0.0.1:{server[1]}", token=TOKEN, retries=1) as c:
        fx.wait_serving(c)
        yield c


@pytest.fixture()
def stub(server: tuple[BenchdServer, int]) -> Iterator[pb_grpc.BenchServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        yield pb_grpc.BenchServiceStub(channel)


def still_serves(client: BenchClient, good: Path) -> None:
    fx.wait_serving(client)
    assert client.benchmark(good, **FIXED).runs == 3


def rpc_error(fn: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=kwargs.pop("timeout", 30), **kwargs)
    return info.value


def upload_messages(data: bytes, sha: str | None = None, size: int | None = None) -> list[pb.UploadModelRequest]:
    header = pb.UploadHeader(model_sha256=sha or hashlib.sha256(data).hexdigest(),
                             size_bytes=len(data) if size is None else size)
    return [pb.UploadModelRequest(header=header), pb.UploadModelRequest(chunk=data)]


# ------------------------------------------------------------------ authentication


def test_tokens_are_checked_before_anything_is_parsed(server: tuple[BenchdServer, int], client: BenchClient,
                                                      stub: pb_grpc.BenchServiceStub, good: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    req = pb.HasModelRequest(model_sha256="0" * 64)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "Basic abc"),),
                     (("authorization", "Bearer"),)):
        assert rpc_error(stub.HasModel, req, metadata=metadata).code() == Code.UNAUTHENTICATED
    # garbage bytes without a token: refused as unauthenticated (not INTERNAL), one log line each
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        raw = channel.unary_unary("/benchd.v1.BenchService/Benchmark")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                assert rpc_error(raw, b"\xff\xff\xff\x00garbage").code() == Code.UNAUTHENTICATED
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 3 and not any(r.exc_info for r in caplog.records)
        # with the token, bytes that are not the request message: INVALID_ARGUMENT, not INTERNAL
        err = rpc_error(raw, b"\xff\xff\xff\x00garbage", metadata=AUTH)
        assert err.code() == Code.INVALID_ARGUMENT and "not a valid" in err.details()
    still_serves(client, good)


# ------------------------------------------------------------------ uploads


def test_bad_uploads(server: tuple[BenchdServer, int], client: BenchClient, stub: pb_grpc.BenchServiceStub,
                     good: Path, tmp_path: Path) -> None:
    data = fx.conv_model(tmp_path / "other.onnx", seed=7).read_bytes()
    cases = {
        "truncated stream": (upload_messages(data, size=len(data) + 10), "truncated"),
        "more than declared": (upload_messages(data, size=len(data) - 1), "more than"),
        "sha mismatch": (upload_messages(data, sha=hashlib.sha256(b"x").hexdigest()), "sha256 mismatch"),
        "oversize declared": (upload_messages(data, size=300 << 20), "at most"),
        "zero length": (upload_messages(b"", sha=hashlib.sha256(b"").hexdigest()), "size_bytes must be > 0"),
        "sha with a newline": (upload_messages(data, sha=hashlib.sha256(data).hexdigest() + "\n"), "64 lowercase"),
        "truncated ONNX": (upload_messages(data[:-10]), "not an ONNX model"),
        "garbage": (upload_messages(b"\xff\x00garbage" * 50), "not an ONNX model"),
        "no header": (upload_messages(data)[1:], "header"),
        "two headers": (upload_messages(data)[:1] * 2, "only the first"),
    }
    for name, (messages, words) in cases.items():
        err = rpc_error(stub.UploadModel, iter(messages), metadata=AUTH)
        assert err.code() == Code.INVALID_ARGUMENT and words in err.details(), name
    tmp_dir = server[0].servicer.cache.tmp_dir
    assert not client.has_model(data) and not list(tmp_dir.iterdir())  # nothing half-written kept
    # a stream cancelled half-way: its .part file goes, the same upload then succeeds
    gate = threading.Event()

    def half() -> Iterator[pb.UploadModelRequest]:
        header, chunk = upload_messages(data)
        yield header
        yield pb.UploadModelRequest(chunk=chunk.chunk[:100])
        gate.wait(10)

    future = stub.UploadModel.future(half(), metadata=AUTH, timeout=30)
    time.sleep(0.5)
    future.cancel()
    gate.set()
    deadline = time.monotonic() + 10
    while list(tmp_dir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(tmp_dir.iterdir())
    assert client.upload(data).uploaded
    still_serves(client, good)
    # an upload of a model already cached answers with the cached size, not the header's claim
    first = stub.UploadModel(iter(upload_messages(data)), metadata=AUTH, timeout=30)
    again = stub.UploadModel(iter(upload_messages(data, size=len(data) + 999)[:1]), metadata=AUTH, timeout=30)
    assert first.size_bytes == len(data) and again.already_cached and again.size_bytes == len(data)


def test_stalled_uploads_are_cancelled_and_never_starve_health(server: tuple[BenchdServer, int],
                                                               client: BenchClient, good: Path,
                                                               tmp_path: Path) -> None:
    data = fx.conv_model(tmp_path / "stall.onnx", seed=8).read_bytes()
    release = threading.Event()
    port = server[1]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(3)]

    def stalled() -> Iterator[pb.UploadModelRequest]:
        yield upload_messages(data)[0]  # a header, then silence
        release.wait(30)

    try:
        futures = [pb_grpc.BenchServiceStub(ch).UploadModel.future(stalled(), metadata=AUTH, timeout=60)
                   for ch in channels]
        # two slots (max_uploads=2): the third is refused as busy at once, saying so
        time.sleep(0.5)
        done = [f for f in futures if f.done()]
        assert len(done) == 1 and done[0].exception().code() == Code.RESOURCE_EXHAUSTED
        assert dict(done[0].exception().trailing_metadata())[errors.REASON_KEY] == "busy"
        assert client.health(timeout_s=2) == "SERVING" and client.info().device.name == "hostile"
        # idle past upload_idle_s (1 s): cancelled by the server, .part files removed
        for f in futures:
            if f not in done:
                assert _wait(f, 10)
                assert f.exception().code() == Code.CANCELLED
        assert not list(server[0].servicer.cache.tmp_dir.iterdir())
    finally:
        release.set()
        for ch in channels:
            ch.close()
    still_serves(client, good)


def test_calls_beyond_the_admission_limit_are_busy_and_health_still_answers(tmp_path: Path, good: Path) -> None:
    """Every held call slot taken (here 2, by stalled uploads): the next call is refused at once as
    busy with benchd's reason (a farm fails over), health checks are answered, and the slots come
    back when the uploads are cancelled."""
    srv, port = start(tmp_path, max_calls=2, max_uploads=4, upload_idle_s=2.0)
    data = fx.conv_model(tmp_path / "held.onnx", seed=9).read_bytes()
    release = threading.Event()
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(2)]

    def stalled() -> Iterator[pb.UploadModelRequest]:
        yield upload_messages(data)[0]
        release.wait(30)

    try:
        with BenchClient(f"127.0.0.1:{port}", token=TOKEN, retries=1) as c:
            fx.wait_serving(c)
            held = [pb_grpc.BenchServiceStub(ch).UploadModel.future(stalled(), metadata=AUTH, timeout=60)
                    for ch in channels]
            deadline = time.monotonic() + 10
            while srv.admission.active < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert srv.admission.active == 2
            with pytest.raises(errors.BenchBusy) as busy:
                c.info()
            assert busy.value.reason == "busy" and "2 calls in progress" in busy.value.details
            assert c.health(timeout_s=2) == "SERVING"
            for f in held:  # cancelled by the server after upload_idle_s
                assert _wait(f, 15) and f.exception().code() == Code.CANCELLED
            assert c.info().device.name == "hostile"
            assert c.benchmark(good, **FIXED).runs == 3
    finally:
        release.set()
        for ch in channels:
            ch.close()
        srv.stop(0)


def test_a_burst_of_calls_is_served_or_busy_and_never_silences_health(server: tuple[BenchdServer, int],
                                                                      client: BenchClient, good: Path) -> None:
    """A burst far above the admission limit (gRPC's own cap once refused it with a bare 'Concurrent
    RPC limit exceeded' and refused health checks with it): each call is answered or busy with
    benchd's reason, and every health check in the middle of it says SERVING."""
    port = server[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.BenchServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        calls, checks = [], []
        for i in range(400):
            calls.append(stub.GetInfo.future(pb.GetInfoRequest(), metadata=AUTH, timeout=60))
            if i % 40 == 0:
                checks.append(health.Check.future(health_pb2.HealthCheckRequest(), timeout=60))
        outcomes = []
        for f in calls:
            exc = f.exception()
            if exc is None:
                outcomes.append("ok")
            else:
                err = errors.from_rpc_error(exc)
                outcomes.append(f"busy:{err.reason}" if isinstance(err, errors.BenchBusy) else repr(err))
        assert set(outcomes) <= {"ok", "busy:busy"} and outcomes.count("ok") > 0, set(outcomes)
        assert [f.result().status for f in checks] == [health_pb2.HealthCheckResponse.SERVING] * len(checks)
    still_serves(client, good)


def _wait(future: grpc.Future, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    return future.done()


# ------------------------------------------------------------------ the cache never lies


def test_a_corrupted_or_replaced_cached_file_is_never_benchmarked(server: tuple[BenchdServer, int],
                                                                   client: BenchClient, good: Path,
                                                                   tmp_path: Path) -> None:
    cache = server[0].servicer.cache
    wanted = fx.conv_model(tmp_path / "wanted.onnx", hw=16, seed=3)
    other = fx.conv_model(tmp_path / "other.onnx", hw=40, seed=4)
    sha = hashlib.sha256(wanted.read_bytes()).hexdigest()
    client.upload(wanted)
    # replaced on disk by another model: removed and reported absent; the client uploads it again
    cache.path(sha).write_bytes(other.read_bytes())
    r = client.benchmark(wanted, **FIXED)
    assert r.uploaded and r.model_sha256 == sha and r.inputs[0]["dims"] == [1, 3, 16, 16]
    # corrupted (a flipped byte): a re-upload is not "already cached", it repairs the file
    raw = bytearray(cache.path(sha).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    cache.path(sha).write_bytes(bytes(raw))
    assert not client.has_model(wanted)
    assert client.upload(wanted).uploaded
    assert hashlib.sha256(cache.path(sha).read_bytes()).hexdigest() == sha
    still_serves(client, good)


def test_garbage_planted_while_down_does_not_survive_a_restart(tmp_path: Path, good: Path) -> None:
    srv, port = start(tmp_path)
    with BenchClient(f"127.0.0.1:{port}", token=TOKEN, retries=1) as c:
        fx.wait_serving(c)
        c.upload(good)
    srv.stop(0)
    models = tmp_path / "cache" / "models"
    planted = models / f"{hashlib.sha256(b'planted').hexdigest()}.onnx"
    planted.write_bytes(good.read_bytes())  # valid ONNX under a name it does not hash to
    (models / "notes.txt").write_text("not a model")
    srv, port = start(tmp_path)
    try:
        with BenchClient(f"127.0.0.1:{port}", token=TOKEN, retries=1) as c:
            fx.wait_serving(c)
            listed = [m.model_sha256 for m in c.info().cached_models]
            assert listed == [hashlib.sha256(good.read_bytes()).hexdigest()]
            assert not planted.exists() and not (models / "notes.txt").exists()
            still_serves(c, good)
    finally:
        srv.stop(0)


def test_cache_fill_evicts_least_recently_used(tmp_path: Path) -> None:
    paths = [fx.big_model(tmp_path / f"big{i}.onnx", mib=1.0 + i / 10) for i in range(4)]
    srv, port = start(tmp_path, cache_max_bytes=3 << 20, max_model_bytes=2 << 20)
    try:
        with BenchClient(f"127.0.0.1:{port}", token=TOKEN, retries=1) as c:
            fx.wait_serving(c)
            for p in paths:
                c.upload(p)
            info = c.info()
            assert info.cache_size_bytes <= 3 << 20
            kept = {m.model_sha256 for m in info.cached_models}
            assert hashlib.sha256(paths[-1].read_bytes()).hexdigest() in kept
            assert hashlib.sha256(paths[0].read_bytes()).hexdigest() not in kept
            assert c.benchmark(paths[0], **FIXED).uploaded  # evicted: uploaded again, then timed
    finally:
        srv.stop(0)


# ------------------------------------------------------------------ requests


def test_absurd_requests_are_invalid_arguments(client: BenchClient, stub: pb_grpc.BenchServiceStub,
                                               good: Path) -> None:
    sha = client.ensure_model(good).sha256
    cores = len(os.sched_getaffinity(0))
    cases = {
        "runs": (pb.BenchmarkRequest(model_sha256=sha, runs=10**9), "exceeds this server's limit"),
        "warm-up": (pb.BenchmarkRequest(model_sha256=sha, warmup_runs=10**9), "exceeds this server's limit"),
        "no runs": (pb.BenchmarkRequest(model_sha256=sha, runs=0), "need runs"),
        "threads above the cores": (pb.BenchmarkRequest(model_sha256=sha, intra_op_threads=cores + 1),
                                    f"exceeds the {cores} core"),
        "threads": (pb.BenchmarkRequest(model_sha256=sha, intra_op_threads=100_000), "0..256"),
        "batch": (pb.BenchmarkRequest(model_sha256=sha, batch_size=10**9), "batch_size"),
        "duration": (pb.BenchmarkRequest(model_sha256=sha, min_duration_s=float("nan")), "min_duration_s"),
        "precision": (pb.BenchmarkRequest(model_sha256=sha, target_rel_ci=5.0), "target_rel_ci"),
        "negative cap": (pb.BenchmarkRequest(model_sha256=sha, max_duration_s=-1), "max_duration_s"),
        "graph optimization": (pb.BenchmarkRequest(model_sha256=sha, graph_optimization=99), "graph_optimization"),
        "sha with a newline": (pb.BenchmarkRequest(model_sha256=sha + "\n"), "64 lowercase"),
        "absurd shape": (pb.BenchmarkRequest(model_sha256=sha, input_shapes=[
            pb.InputShape(name="input", dims=[1, 3, 4611686018427387904, 4611686018427387904])]), "graph"),
    }
    for name, (req, words) in cases.items():
        err = rpc_error(stub.Benchmark, req, metadata=AUTH)
        assert err.code() == Code.INVALID_ARGUMENT and words in err.details(), (name, err.details())
    # an unknown sha: NOT_FOUND (the client's cue to upload)
    assert rpc_error(stub.Benchmark, pb.BenchmarkRequest(model_sha256="0" * 64), metadata=AUTH).code() \
        == Code.NOT_FOUND
    # a 20,000-character input name: a bounded message, INVALID_ARGUMENT (not a transport-level
    # RESOURCE_EXHAUSTED that a client would read as "busy")
    long = pb.BenchmarkRequest(model_sha256=sha, input_shapes=[pb.InputShape(name="n" * 20_000, dims=[1])])
    err = rpc_error(stub.Benchmark, long, metadata=AUTH)
    assert err.code() == Code.INVALID_ARGUMENT and len(err.details()) < 1100 and "20000 characters" in err.details()
    still_serves(client, good)


def test_absurd_dims_in_the_model_itself(client: BenchClient, good: Path, tmp_path: Path) -> None:
    huge = 1 << 62
    path = fx.model_of([helper.make_node("Relu", ["x"], ["y"])],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, huge, huge])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, huge, huge])], tmp_path / "h.onnx")
    with pytest.raises(errors.BenchInvalidArgument, match="at most 1024 MiB"):
        client.benchmark(path, **FIXED)
    still_serves(client, good)


def test_models_that_cannot_be_fed_loaded_or_afforded(client: BenchClient, good: Path, tmp_path: Path) -> None:
    for path, error, words in fx.hostile_models(tmp_path).values():
        with pytest.raises(error, match=words):
            client.benchmark(path, **FIXED)
        still_serves(client, good)  # after each: the worker is back


# ------------------------------------------------------------------ the device is never held


def test_a_run_that_never_ends_is_killed_at_the_duration_cap(server: tuple[BenchdServer, int],
                                                              client: BenchClient, good: Path,
                                                              tmp_path: Path) -> None:
    loop = fx.loop_model(tmp_path / "loop.onnx")
    client.ensure_model(loop)
    client.ensure_model(good)
    queued: dict[str, Any] = {}

    def behind() -> None:  # waits in the queue behind the endless run
        time.sleep(0.5)
        queued["result"] = client.benchmark(good, **FIXED)
        queued["at"] = time.monotonic()

    waiter = threading.Thread(target=behind)
    t0 = time.monotonic()
    waiter.start()
    with pytest.raises(errors.BenchDeadlineExceeded, match="4 s limit"):
        client.benchmark(loop, runs=1, warmup_runs=0, target_rel_ci=0, timeout_s=120)
    ended = time.monotonic() - t0
    waiter.join(60)
    # the cap is 4 s (+10% and 2 s for the run in flight), far below the client's 120 s deadline
    assert ended < 30 and queued["result"].runs == 3
    still_serves(client, good)


def test_worker_sigkill_and_sigstop(server: tuple[BenchdServer, int], client: BenchClient, good: Path) -> None:
    servicer = server[0].servicer
    slow = fx.slow_model(Path(servicer.cache.tmp_dir.parent) / "slow-src.onnx", hw=48, layers=3)
    client.ensure_model(slow)

    def signal_when_busy(sig: int) -> None:
        deadline = time.monotonic() + 20
        while not servicer.lock.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(servicer.worker.pid, sig)

    for sig, error in ((signal.SIGKILL, errors.BenchInternal), (signal.SIGSTOP, errors.BenchDeadlineExceeded)):
        t = threading.Thread(target=signal_when_busy, args=(sig,))
        t.start()
        with pytest.raises(error):
            client.benchmark(slow, runs=1, warmup_runs=0, min_duration_s=3.5, target_rel_ci=0, timeout_s=120)
        t.join()
        still_serves(client, good)


def test_not_serving_while_the_worker_restarts(tmp_path: Path, good: Path) -> None:
    # a worker that takes 2 s to start, so the restart is visible from outside
    srv, port = start(tmp_path, worker_prefix=("sh", "-c", 'sleep 2; exec "$@"', "sh"))
    try:
        with BenchClient(f"127.0.0.1:{port}", token=TOKEN, retries=1) as c:
            fx.wait_serving(c)
            srv.servicer._restart_worker()
            assert c.health(timeout_s=2) == "NOT_SERVING"
            fx.wait_serving(c, 30)
            assert c.benchmark(good, **FIXED).runs == 3
    finally:
        srv.stop(0)


def test_queue_flood_is_refused_and_the_queue_drains(server: tuple[BenchdServer, int], client: BenchClient,
                                                     good: Path) -> None:
    servicer = server[0].servicer
    slow = fx.slow_model(Path(servicer.cache.tmp_dir.parent) / "flood.onnx", hw=48, layers=3)
    client.ensure_model(slow)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            client.benchmark(slow, runs=1, warmup_runs=0, min_duration_s=1.0, target_rel_ci=0, timeout_s=60)
            what = "ok"
        except errors.BenchBusy as exc:
            what = f"busy:{exc.reason}"
        except errors.BenchError as exc:
            what = repr(exc)
        with lock:
            outcomes.append(what)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # one runs, queue_size=2 wait, the rest are refused with the explicit reason
    assert outcomes.count("ok") >= 3 and outcomes.count("busy:queue-full") >= 1, outcomes
    assert set(outcomes) <= {"ok", "busy:queue-full"}
    still_serves(client, good)


def test_a_bare_resource_exhausted_is_not_busy_but_grpcs_rpc_limit_is() -> None:
    class Bare(grpc.RpcError):
        def __init__(self, details: str) -> None:
            self._details = details

        def code(self) -> grpc.StatusCode:
            return Code.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return self._details

        def trailing_metadata(self) -> tuple:
            return ()

    assert type(errors.from_rpc_error(Bare("received metadata size exceeds hard limit"))) is \
        errors.BenchResourceExhausted
    # gRPC's own answer to a burst over maximum_concurrent_rpcs: that device is overloaded, another may serve
    assert type(errors.from_rpc_error(Bare("Concurrent RPC limit exceeded!"))) is errors.BenchBusy
