"""benchd Predict end to end: a real server on 127.0.0.1, real clients, real onnxruntime.

What the device computes must equal what the host's onnxruntime computes for the same model
(same architecture here); and every hostile call gets its status while the server keeps serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from benchd import errors, predict
from benchd.client import BenchClient
from benchd.errors import REASON_KEY
from benchd.predict import PredictParams
from benchd.runner import ModelInputError
from benchd.server import BenchdServer, ServerConfig, create_server
from benchd.v1 import benchd_pb2 as pb
from benchd.v1 import benchd_pb2_grpc as pb_grpc
from tests.helpers import benchd_fixtures as fx

pytestmark = pytest.mark.timeout(120)

TOKEN = "predict-test-token"
HW = 32  # fx.conv_model's input size
MAX_BATCH = 4
MAX_BYTES = 64 << 10  # 5 images of 3x32x32 float32 (12 KiB each) per call at most


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BenchdServer, int]]:
    tmp = tmp_path_factory.mktemp("srv")
    cfg = ServerConfig(device_name="predict-dev", device_class="test", cache_dir=str(tmp / "cache"),
                       monitor_interval_s=0, worker_memory_bytes=1 << 30, token=TOKEN, queue_size=2,
                       max_predict_batch=MAX_BATCH, max_predict_bytes=MAX_BYTES, max_duration_s=4)
    srv, port = create_server("127.0.0.1:0", cfg)
    yield srv, port
    srv.stop(0)


@pytest.fixture()
def client(server: tuple[BenchdServer, int]) -> Iterator[BenchClient]:
    with BenchClient(f"127.0.0.1:{server[1]}", token=TOKEN, retries=1) as c:
        fx.wait_serving(c)
        yield c


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {"conv": fx.conv_model(d / "conv.onnx", hw=HW), "slow": fx.slow_model(d / "slow.onnx", hw=48, layers=3),
            "loop": fx.loop_model(d / "loop.onnx"), "string": fx.string_input_model(d / "str.onnx")}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


def host_output(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def raw_stub(port: int) -> tuple[grpc.Channel, pb_grpc.BenchServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.BenchServiceStub(channel)


AUTH = (("authorization", f"Bearer {TOKEN}"),)


def still_serves(client: BenchClient, model: Path) -> None:
    fx.wait_serving(client, timeout_s=30)  # SERVING again (after a worker restart, once the new one is up)
    x = images(1, seed=9)
    got = client.predict(model, x, PredictParams(encoding="raw")).output
    np.testing.assert_allclose(got, host_output(model, x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the device computes what the host does


def test_masks_and_raw_outputs_equal_the_hosts_onnxruntime_over_several_calls(client: BenchClient,
                                                                              models: dict[str, Path]) -> None:
    x = images(2 * MAX_BATCH + 1)
    host = host_output(models["conv"], x)
    raw = client.predict(models["conv"], x, PredictParams(encoding="raw"))
    np.testing.assert_allclose(raw.output, host, rtol=1e-5, atol=1e-5)
    assert raw.calls == 3  # the batch limit: 4 + 4 + 1
    assert raw.bytes_sent == x.nbytes and raw.bytes_received == host.nbytes
    threshold = float(np.median(host))  # about half the pixels on each side
    mask = client.predict(models["conv"], x, PredictParams(logit_threshold=threshold))
    assert mask.encoding == "mask" and mask.output.dtype == bool and mask.output.shape == (len(x), HW, HW)
    np.testing.assert_array_equal(mask.output, host[:, 0] > threshold)
    assert 0.3 < mask.output.mean() < 0.7
    assert mask.bytes_received == len(x) * HW * HW // 8  # one bit per pixel
    assert (mask.device_name, mask.device_class, mask.onnxruntime_version) == ("predict-dev", "test", ort.__version__)
    assert mask.run_ms > 0


def test_several_channels_are_masked_by_argmax_and_packing_round_trips() -> None:
    logits = np.zeros((2, 3, 2, 5), dtype=np.float32)
    logits[0, 2, 0, 0] = 1.0  # class 2 wins: foreground
    logits[1, 0, 1, 4] = 1.0  # background wins
    logits[1, 1, 0, 3] = 1.0
    mask = predict.foreground(logits)
    expected = np.zeros((2, 2, 5), dtype=bool)
    expected[0, 0, 0] = True
    expected[1, 0, 3] = True
    # ties (all zero) go to channel 0, the background
    np.testing.assert_array_equal(mask, expected)
    packed = predict.pack_mask(mask)
    assert len(packed) == 3  # 20 bits
    np.testing.assert_array_equal(predict.unpack_mask(packed, mask.shape), mask)
    with pytest.raises(ValueError, match="needs 3 bytes, got 2"):
        predict.unpack_mask(packed[:2], mask.shape)


def test_the_session_is_kept_between_calls_and_a_benchmark_gets_a_cold_one(client: BenchClient,
                                                                           models: dict[str, Path],
                                                                           server: tuple[BenchdServer, int]) -> None:
    channel, stub = raw_stub(server[1])
    with channel:
        sha = client.ensure_model(models["conv"]).sha256
        req = pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, HW, HW], input_data=images(1).tobytes())
        stub.Predict(req, metadata=AUTH, timeout=30)
        assert stub.Predict(req, metadata=AUTH, timeout=30).session_reused
        client.benchmark(models["conv"], runs=2, warmup_runs=0, target_rel_ci=0)
        assert not stub.Predict(req, metadata=AUTH, timeout=30).session_reused


def test_getinfo_reports_the_predict_limits_and_whether_the_device_is_emulated(client: BenchClient) -> None:
    info = client.info()
    assert (info.limits.max_predict_bytes, info.limits.max_predict_batch) == (MAX_BYTES, MAX_BATCH)
    assert not info.emulated and info.emulator == "" and info.host_cpu_model == ""  # this host runs natively
    assert info.cpu_features  # what selects onnxruntime's kernels here (x86 flags or aarch64 HWCAP)


# ------------------------------------------------------------------ hostile calls: a status each, serving after


def hostile_requests(sha: str, unknown: str) -> dict[str, tuple[pb.PredictRequest, grpc.StatusCode, str]]:
    one = images(1).tobytes()
    big = np.zeros((MAX_BYTES // 4 + 1,), dtype=np.float32).tobytes()
    return {
        "unknown sha": (pb.PredictRequest(model_sha256=unknown, input_dims=[1, 3, HW, HW], input_data=one),
                        grpc.StatusCode.NOT_FOUND, "not in this device's cache"),
        "not a sha": (pb.PredictRequest(model_sha256="../../etc/passwd", input_dims=[1], input_data=b"\0" * 4),
                      grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
        "dims and data disagree": (pb.PredictRequest(model_sha256=sha, input_dims=[2, 3, HW, HW], input_data=one),
                                   grpc.StatusCode.INVALID_ARGUMENT, "input_data has 12288"),
        "wrong image size": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, 16, 64], input_data=one),
                             grpc.StatusCode.INVALID_ARGUMENT, "axis 2: 16 instead of 32"),
        "wrong rank": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 3 * HW * HW], input_data=one),
                       grpc.StatusCode.INVALID_ARGUMENT, "has rank 4"),
        "batch over the limit": (pb.PredictRequest(model_sha256=sha, input_dims=[MAX_BATCH + 1, 1],
                                                   input_data=b"\0" * 4 * (MAX_BATCH + 1)),
                                 grpc.StatusCode.INVALID_ARGUMENT, "--max-predict-batch"),
        "data over the limit": (pb.PredictRequest(model_sha256=sha, input_dims=[1, len(big) // 4], input_data=big),
                                grpc.StatusCode.INVALID_ARGUMENT, "--max-predict-mb"),
        "negative dims": (pb.PredictRequest(model_sha256=sha, input_dims=[-1, 3], input_data=b""),
                          grpc.StatusCode.INVALID_ARGUMENT, ">= 1"),
        "huge dims (overflow)": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 2**62, 2**62], input_data=one),
                                 grpc.StatusCode.INVALID_ARGUMENT, "input_data has 12288"),
        "no dims": (pb.PredictRequest(model_sha256=sha), grpc.StatusCode.INVALID_ARGUMENT, "1 to 8 dimensions"),
        "unknown encoding": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, HW, HW], input_data=one,
                                               encoding=7), grpc.StatusCode.INVALID_ARGUMENT, "OutputEncoding"),
        "NaN threshold": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, HW, HW], input_data=one,
                                            logit_threshold=float("nan")),
                          grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        "too many threads": (pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, HW, HW], input_data=one,
                                               intra_op_threads=200),
                             grpc.StatusCode.INVALID_ARGUMENT, "intra_op_threads=200 exceeds"),
        "raw output over the limit": (pb.PredictRequest(model_sha256=sha, input_dims=[MAX_BATCH, 3, HW, HW],
                                                        input_data=images(MAX_BATCH).tobytes(),
                                                        encoding=pb.OUTPUT_ENCODING_RAW),
                                      grpc.StatusCode.OK, ""),  # 16 KiB of logits: fits; see the slow model below
    }


def test_bad_requests_get_their_status_and_the_server_keeps_serving(client: BenchClient, models: dict[str, Path],
                                                                    server: tuple[BenchdServer, int]) -> None:
    sha = client.ensure_model(models["conv"]).sha256
    channel, stub = raw_stub(server[1])
    with channel:
        for name, (req, code, words) in hostile_requests(sha, "f" * 64).items():
            if code == grpc.StatusCode.OK:
                stub.Predict(req, metadata=AUTH, timeout=30)
                continue
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(req, metadata=AUTH, timeout=30)
            assert err.value.code() == code, name
            assert words in err.value.details(), (name, err.value.details())
            assert len(err.value.details()) <= 1100, name  # never echoes unbounded input
        # a model whose outputs do not fit one call: 32 channels x 48 x 48 floats for 2 images = 576 KiB
        slow_sha = client.ensure_model(models["slow"]).sha256
        x = np.zeros((2, 3, 48, 48), dtype=np.float32)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(model_sha256=slow_sha, input_dims=list(x.shape), input_data=x.tobytes(),
                                           encoding=pb.OUTPUT_ENCODING_RAW), metadata=AUTH, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "send fewer images" in err.value.details()
        # a model Predict cannot feed (a string input), garbage bytes, no token
        str_sha = client.ensure_model(models["string"]).sha256
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(model_sha256=str_sha, input_dims=[1], input_data=b"\0" * 4),
                         metadata=AUTH, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "float32 inputs only" in err.value.details()
        garbage = channel.unary_unary("/benchd.v1.BenchService/Predict", request_serializer=lambda b: b,
                                      response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            garbage(b"\xff\xff\xff\xff\x0f" * 50, metadata=AUTH, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(model_sha256=sha, input_dims=[1, 3, HW, HW],
                                           input_data=images(1).tobytes()), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # over gRPC's own 4 MiB message limit: refused by the transport, not benchd (no busy reason)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb.PredictRequest(model_sha256=sha, input_dims=[1], input_data=b"\0" * (5 << 20)),
                         metadata=AUTH, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert REASON_KEY not in dict(err.value.trailing_metadata() or ())
    still_serves(client, models["conv"])


def test_the_client_refuses_an_image_larger_than_a_call_before_sending(client: BenchClient,
                                                                      models: dict[str, Path]) -> None:
    x = np.zeros((1, 3, 128, 128), dtype=np.float32)  # 192 KiB > 64 KiB
    with pytest.raises(ValueError, match="at most 65536 bytes per Predict call"):
        client.predict(models["conv"], x)
    with pytest.raises(ModelInputError, match="encoding must be one of"):
        client.predict(models["conv"], images(1), PredictParams(encoding="png"))


def test_a_run_that_never_ends_is_killed_and_a_deadline_is_kept(client: BenchClient, models: dict[str, Path]) -> None:
    t0 = time.monotonic()
    with pytest.raises(errors.BenchDeadlineExceeded, match="prediction ran past"):
        client.predict(models["loop"], np.ones((1,), dtype=np.float32), PredictParams(encoding="raw"), timeout_s=60)
    assert time.monotonic() - t0 < 40  # --max-duration-s 4 (+10%, +2 s, + the load cap not reached)
    still_serves(client, models["conv"])
    t0 = time.monotonic()
    with pytest.raises(errors.BenchDeadlineExceeded):
        client.predict(models["loop"], np.ones((1,), dtype=np.float32), PredictParams(encoding="raw"), timeout_s=1.5)
    assert time.monotonic() - t0 < 15
    still_serves(client, models["conv"])


def test_a_cancelled_call_and_a_killed_worker_leave_a_serving_server(client: BenchClient, models: dict[str, Path],
                                                                    server: tuple[BenchdServer, int]) -> None:
    servicer = server[0].servicer
    sha = client.ensure_model(models["loop"]).sha256
    req = pb.PredictRequest(model_sha256=sha, input_dims=[1], input_data=np.ones(1, np.float32).tobytes(),
                            encoding=pb.OUTPUT_ENCODING_RAW)
    channel, stub = raw_stub(server[1])
    with channel:
        future = stub.Predict.future(req, metadata=AUTH, timeout=60)
        deadline = time.monotonic() + 20
        while not servicer.lock.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert servicer.lock.busy
        future.cancel()
        deadline = time.monotonic() + 20
        while servicer.lock.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not servicer.lock.busy  # the device is freed, the worker restarted
    still_serves(client, models["conv"])

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 20
        while not servicer.lock.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(servicer.worker.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    with pytest.raises(errors.BenchInternal, match="worker died"):
        client.predict(models["loop"], np.ones((1,), dtype=np.float32), PredictParams(encoding="raw"), timeout_s=60)
    killer.join()
    still_serves(client, models["conv"])


def test_the_farm_runs_a_prediction_on_a_device_of_the_class(server: tuple[BenchdServer, int], tmp_path: Path,
                                                              models: dict[str, Path]) -> None:
    from benchd.farm import BenchFarm, FarmDevice

    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    dead = FarmDevice("dead", "127.0.0.1:1", "test", token_file=str(token))
    alive = FarmDevice("alive", f"127.0.0.1:{server[1]}", "test", token_file=str(token))
    x = images(3, seed=4)
    with BenchFarm([dead, alive], probe_after_s=60) as farm:
        got = farm.predict(models["conv"], x, PredictParams(encoding="raw"), device_class="test", timeout_s=60)
    assert got.farm_device == "alive"
    np.testing.assert_allclose(got.output, host_output(models["conv"], x), rtol=1e-5, atol=1e-5)


def test_benchd_serve_takes_the_predict_limits_from_its_flags(tmp_path: Path, models: dict[str, Path]) -> None:
    with fx.serve_subprocess(tmp_path, "flags", "--max-predict-mb", "0.05", "--max-predict-batch", "2") as (_, port):
        with BenchClient(f"127.0.0.1:{port}", retries=1) as c:
            fx.wait_serving(c)
            limits = c.info().limits
            assert (limits.max_predict_bytes, limits.max_predict_batch) == (int(0.05 * 2**20), 2)
            got = c.predict(models["conv"], images(5), PredictParams(encoding="raw"))  # 12 KiB per image
            assert got.calls == 3  # 2 + 2 + 1: the batch limit, read from GetInfo
    bad = subprocess.run([sys.executable, "-m", "benchd.cli", "serve", "--port", "0", "--max-predict-mb", "64",
                          "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Predict limits must be" in bad.stderr and "Traceback" not in bad.stderr
