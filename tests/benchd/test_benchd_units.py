"""benchd pieces without a server: timing maths, input plans, ONNX framing, queue, stubs, imports."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchd import runner
from benchd.cache import CacheError, check_onnx_framing
from benchd.devicelock import DeviceLock, QueueFull, QueueTimeout
from benchd.sysinfo import Throttle, throttled_between
from tests.helpers import REPO as ROOT
from tests.helpers import benchd_fixtures as fx


def test_summarize_statistics() -> None:
    stats = runner.summarize([1_000_000, 2_000_000, 3_000_000, 4_000_000])
    assert stats["latency_ms_mean"] == pytest.approx(2.5)
    assert stats["latency_ms_p50"] == pytest.approx(2.5)
    assert stats["latency_ms_min"] == 1.0 and stats["latency_ms_max"] == 4.0
    assert stats["latency_ms_std"] == pytest.approx(1.2909944)  # sample std (n-1)
    assert stats["latency_cv"] == pytest.approx(1.2909944 / 2.5)
    assert stats["timed_total_s"] == pytest.approx(0.01)
    assert runner.summarize([5_000_000])["latency_ms_std"] == 0.0


def _inp(name: str, type_: str, shape: list[object]) -> SimpleNamespace:
    return SimpleNamespace(name=name, type=type_, shape=shape)


def test_input_plan_rules() -> None:
    plan = runner.input_plan([_inp("x", "tensor(float)", ["batch", 3, 8, 8])], 4, {})
    assert plan[0][3] == [4, 3, 8, 8]
    plan = runner.input_plan([_inp("x", "tensor(uint8)", [None, 3])], 1, {})
    assert plan[0][3] == [1, 3] and plan[0][2] == ["?", "3"]
    with pytest.raises(runner.ModelInputError, match="static batch of 2"):
        runner.input_plan([_inp("x", "tensor(float)", [2, 3])], 5, {})
    with pytest.raises(runner.ModelInputError, match="axis 1 is 3"):
        runner.input_plan([_inp("x", "tensor(float)", ["b", 3])], 1, {"x": [1, 4]})
    with pytest.raises(runner.ModelInputError, match="unknown input"):
        runner.input_plan([_inp("x", "tensor(float)", [1])], 1, {"y": [1]})
    with pytest.raises(runner.ModelInputError, match="unsupported type"):
        runner.input_plan([_inp("x", "seq(tensor(float))", [])], 1, {})
    feeds = runner.make_feeds(runner.input_plan([_inp("x", "tensor(float16)", [2, 2]),
                                                 _inp("i", "tensor(int64)", [3])], 1, {}), seed=0)
    assert feeds["x"].dtype.name == "float16" and feeds["i"].tolist() == [0, 0, 0]


def test_run_benchmark_locally(tmp_path: Path) -> None:
    model = fx.conv_model(tmp_path / "m.onnx")
    r = runner.run_benchmark(model, runner.BenchParams(warmup_runs=1, runs=4, intra_op_threads=1,
                                                       return_samples=True, target_rel_ci=0))
    assert r["runs"] == 4 and len(r["samples_ms"]) == 4 and r["intra_op_threads"] == 1
    assert r["timing_start_unix_ns"] < r["timing_end_unix_ns"] and r["peak_rss_bytes"] >= r["rss_before_bytes"] > 0
    r = runner.run_benchmark(model, runner.BenchParams(warmup_runs=0, runs=1, max_duration_s=0.05,
                                                       min_duration_s=0.04))
    assert r["runs"] >= 1
    with pytest.raises(runner.ModelLoadError):
        runner.run_benchmark(fx.unloadable_model(tmp_path / "u.onnx"), runner.BenchParams())
    with pytest.raises(runner.ModelInputError, match="graph_optimization"):
        runner.BenchParams(graph_optimization="max").validate()


def test_max_duration_stops_the_loop(tmp_path: Path) -> None:
    model = fx.conv_model(tmp_path / "m.onnx")
    r = runner.run_benchmark(model, runner.BenchParams(warmup_runs=0, runs=10**7, max_runs=10**7, max_duration_s=0.05))
    assert r["hit_max_duration"] and r["runs"] < 10**7


def test_onnx_framing_check(tmp_path: Path) -> None:
    check_onnx_framing(fx.conv_model(tmp_path / "ok.onnx"))
    for name, data in {"garbage": b"\xff" * 64, "text": b"hello, world", "empty-ish": b"\x08\x07",
                       "truncated": (tmp_path / "ok.onnx").read_bytes()[:-10]}.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CacheError, match="not an ONNX model"):
            check_onnx_framing(p)


def test_throttle_reading() -> None:
    assert throttled_between(Throttle(None), Throttle(0)) is None
    assert throttled_between(Throttle(0), Throttle(0)) is False
    assert throttled_between(Throttle(0), Throttle(0x40000)) is True  # throttled during the run
    assert throttled_between(Throttle(0x50000), Throttle(0x50000)) is False  # old sticky bits only
    assert throttled_between(Throttle(0x4), Throttle(0)) is True
    assert Throttle(0x50005).raw == "0x50005" and Throttle(None).raw == ""


def test_device_lock_fifo_capacity_and_deadline() -> None:
    lock = DeviceLock(capacity=1)
    assert lock.acquire() == 0.0
    with pytest.raises(QueueFull, match="busy"):
        lock.acquire(reject_if_busy=True)
    with pytest.raises(QueueTimeout):
        lock.acquire(deadline=time.monotonic() + 0.05)
    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire()))
    waiter.start()
    while lock.depth < 1:
        time.sleep(0.005)
    with pytest.raises(QueueFull, match="queue full"):
        lock.acquire()
    lock.release()
    waiter.join()
    assert got and got[0] > 0 and lock.busy
    lock.release()
    assert not lock.busy and lock.depth == 0


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    from importlib.metadata import version

    subprocess.run(["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True,
                   env=dict(os.environ, PYTHON=sys.executable))
    fresh, committed = tmp_path / "benchd" / "v1", ROOT / "benchd" / "v1"

    def descriptor(path: Path) -> str:
        return re.search(r"AddSerializedFile\((b'.*')\)", path.read_text()).group(1)  # type: ignore[union-attr]

    # The serialized descriptor is the proto itself: it must match whatever grpcio-tools runs.
    assert descriptor(fresh / "benchd_pb2.py") == descriptor(committed / "benchd_pb2.py"), (
        "benchd/v1 stubs are stale: run scripts/gen_protos.sh")
    generated_by = (committed / "benchd_pb2_grpc.py").read_text().split("GRPC_GENERATED_VERSION = '")[1][:20]
    if not generated_by.startswith(version("grpcio-tools") + "'"):
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} differs from the one that generated the stubs; "
                    "compared the descriptor only")
    for name in ("benchd_pb2.py", "benchd_pb2.pyi", "benchd_pb2_grpc.py"):
        assert filecmp.cmp(fresh / name, committed / name, shallow=False), (
            f"benchd/v1/{name} is stale: run scripts/gen_protos.sh")


def test_benchd_never_imports_the_search_stack() -> None:
    code = ("import sys, benchd.cli, benchd.server, benchd.client, benchd.farm, benchd.runner, benchd.worker;"
            "bad = [m for m in ('torch', 'ray', 'mlflow', 'onnx') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_pyproject_pins_match_generated_code() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    stub = (ROOT / "benchd" / "v1" / "benchd_pb2_grpc.py").read_text()
    generated = stub.split("GRPC_GENERATED_VERSION = '")[1].split("'")[0]
    assert f"grpcio>={generated}" in deps
    assert "protobuf>=7.35.1,<8" in deps
    assert not any(d.startswith(("torch", "ray", "onnx>", "onnx=", "mlflow")) for d in deps)


def test_wire_round_trips_params_and_refuses_unknown_enums() -> None:
    from benchd import wire
    from benchd.v1 import benchd_pb2 as pb

    params = runner.BenchParams(warmup_runs=2, runs=7, min_duration_s=0.5, intra_op_threads=1, batch_size=2,
                                graph_optimization="basic", input_shapes={"x": [1, 3, 8, 8]}, return_samples=True)
    req = wire.benchmark_request(params, "ab" * 32)
    assert wire.params_of(req, max_runs=params.max_runs, max_duration_s=params.max_duration_s) == params
    # left out on the wire: the one table of defaults; the caps: the server's when smaller
    bare = wire.params_of(pb.BenchmarkRequest(model_sha256="ab" * 32), max_runs=500, max_duration_s=60)
    assert (bare.warmup_runs, bare.runs, bare.graph_optimization, bare.target_rel_ci) == (
        runner.DEFAULTS.warmup_runs, runner.DEFAULTS.runs, "all", runner.DEFAULTS.target_rel_ci)
    assert (bare.max_runs, bare.max_duration_s) == (500, 60)
    # an older client never sends max_runs: asking for more runs than its default is not refused
    many = wire.params_of(pb.BenchmarkRequest(model_sha256="ab" * 32, runs=2500), max_runs=10_000, max_duration_s=60)
    assert (many.runs, many.max_runs) == (2500, 2500)
    many.validate()
    asked = wire.benchmark_request(runner.BenchParams(max_runs=50, max_duration_s=5.0), "ab" * 32)
    assert wire.params_of(asked, max_runs=500, max_duration_s=60).max_duration_s == 5.0
    with pytest.raises(runner.ModelInputError, match="graph_optimization=99"):
        wire.params_of(pb.BenchmarkRequest(model_sha256="ab" * 32, graph_optimization=99), max_runs=9, max_duration_s=9)
    with pytest.raises(runner.ModelInputError, match="'fast'"):
        wire.benchmark_request(runner.BenchParams(graph_optimization="fast"), "ab" * 32)
    assert [wire.throttle_state(wire.throttle_enum(s)) for s in (None, False, True)] == [None, False, True]


def test_the_proto_documents_the_defaults_the_code_uses() -> None:
    proto = (ROOT / "protos" / "benchd" / "v1" / "benchd.proto").read_text()
    for name in ("warmup_runs", "runs"):
        line = next(ln for ln in proto.splitlines() if re.search(rf"optional uint32 {name} =", ln))
        assert f"default {getattr(runner.DEFAULTS, name)}" in line, line


def test_quantile_ci_ranks_match_the_exact_tables() -> None:
    xs = [float(i) for i in range(1, 101)]  # x(i) = i: the interval's ends are its ranks
    assert runner.quantile_ci(xs, 0.5) == (40.0, 61.0, True)  # n = 100: ranks 40 and 61
    # n = 100, q = 0.9: 90 -+ 1.96 * 3 -> ranks 84 and 97
    assert runner.quantile_ci(xs, 0.9) == (84.0, 97.0, True)
    lo, hi, bounded = runner.quantile_ci([1.0, 2.0, 3.0], 0.5)  # too few runs: unbounded
    assert (lo, hi, bounded) == (1.0, 3.0, False) and runner.rel_half_width([1.0, 2.0, 3.0]) == float("inf")
    # the half-width over the median: (61 - 40) / 2 / 50.5
    assert runner.rel_half_width(xs) == pytest.approx(10.5 / 50.5)


def test_precision_and_drift_figures() -> None:
    samples_ns = [int(1e6)] * 10 + [int(2e6)] * 80 + [int(3e6)] * 10  # 1 ms first tenth, 3 ms last tenth
    p = runner.precision(samples_ns, 0.02)
    assert p["latency_ms_p50_first_tenth"] == 1.0 and p["latency_ms_p50_last_tenth"] == 3.0
    assert p["latency_ms_p50_ci_low"] == p["latency_ms_p50_ci_high"] == 2.0 and p["precision_met"]
    assert p["p50_rel_ci"] == 0.0 and p["target_rel_ci"] == 0.02
    few = runner.precision([int(1e6), int(2e6)], 0.02)
    assert few["p50_rel_ci"] == -1.0 and not few["precision_met"]


def test_runs_until_precise_then_stops(tmp_path: Path) -> None:
    model = fx.conv_model(tmp_path / "m.onnx")
    r = runner.run_benchmark(model, runner.BenchParams(warmup_runs=2, runs=10, intra_op_threads=1, target_rel_ci=0.05))
    assert r["runs"] >= 10 and r["precision_met"] and 0 <= r["p50_rel_ci"] <= 0.05
    assert r["latency_ms_p50_ci_low"] <= r["latency_ms_p50"] <= r["latency_ms_p50_ci_high"]
    # an unreachable target: stopped by the run cap, saying the target was not met
    r = runner.run_benchmark(model, runner.BenchParams(warmup_runs=0, runs=5, max_runs=40, intra_op_threads=1,
                                                       target_rel_ci=1e-9))
    assert r["runs"] == 40 and not r["precision_met"] and not r["hit_max_duration"]


def test_a_model_file_that_does_not_hash_to_its_sha_is_refused(tmp_path: Path) -> None:
    model = fx.conv_model(tmp_path / "m.onnx")
    with pytest.raises(runner.ModelIntegrityError, match="hashes to"):
        runner.run_benchmark(model, runner.BenchParams(runs=1, target_rel_ci=0), sha256="0" * 64)


def test_threads_beyond_the_cores_are_refused() -> None:
    cores = runner.usable_cores()
    assert runner.resolved_threads(0) == cores
    with pytest.raises(runner.ModelInputError, match=f"exceeds the {cores} core"):
        runner.resolved_threads(cores + 1)


def test_the_local_benchd_gets_a_core_of_its_own(tmp_path: Path) -> None:
    import os

    from benchd.client import BenchClient
    from raysearch.search.latency import local_benchd, reserve_cpu

    cpus = sorted(os.sched_getaffinity(0))
    reservation = reserve_cpu()
    if len(cpus) < 2:
        assert reservation is None
        return
    assert reservation.benchd == (cpus[-1],) and reservation.ray == tuple(cpus[:-1])
    assert "reserved for the local benchd" in reservation.describe()
    model = fx.conv_model(tmp_path / "m.onnx")
    with local_benchd(cpus=reservation.benchd) as target, BenchClient(target, retries=1) as client:
        fx.wait_serving(client)
        r = client.benchmark(model, runs=3, target_rel_ci=0)
        assert r.intra_op_threads == 1  # 0 resolves to the worker's own cores: the reserved one
        # meanwhile nothing of this process (any of its threads) runs on the reserved core
        for tid in os.listdir("/proc/self/task"):
            assert reservation.benchd[0] not in os.sched_getaffinity(int(tid)), tid
    assert sorted(os.sched_getaffinity(0)) == cpus  # the caller's own mask is restored after


def test_a_bench_result_survives_its_dict(tmp_path) -> None:
    """`BenchResult.to_dict` -> JSON -> `from_dict` gives the same record (the search's latency cache
    and benchmark.json hold it so); a document without a field is refused."""
    import dataclasses
    import json

    from benchd.client import BenchResult

    values = {}
    for f in dataclasses.fields(BenchResult):
        kind = str(f.type)
        values[f.name] = (() if f.name in ("inputs", "samples_ms") else 1 if "int" in kind and "float" not in kind
                          else 1.5 if "float" in kind else True if "bool" in kind else "x")
    values["inputs"], values["samples_ms"] = ({"name": "input", "shape": [1, 3, 8, 8]},), (1.0, 2.0)
    result = BenchResult(**values)
    assert BenchResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    broken = result.to_dict()
    del broken["latency_ms_p50"]
    with pytest.raises(KeyError):
        BenchResult.from_dict(broken)


def test_a_worker_reply_crosses_the_pipe_as_a_frame() -> None:
    import json

    from benchd.worker import WorkerReply

    for reply in (WorkerReply(result={"runs": 3}), WorkerReply(error="MemoryLimitError", message="out of memory"),
                  WorkerReply(message="RuntimeError: boom")):
        back = WorkerReply.from_frame(json.loads(json.dumps(reply.frame())))
        assert back == reply and back.ok == (reply.result is not None)
    assert not WorkerReply().ok


def test_addresses_are_parsed_in_one_place_and_ports_grpc_would_wrap_are_refused(tmp_path: Path) -> None:
    """gRPC takes a port modulo 65536: `benchd info --target 127.0.0.1:70000` asked port 4464."""
    from benchd.client import BenchClient
    from benchd.farm import FarmDevice
    from benchd.security import parse_address

    assert parse_address("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_address(" pi4-01.lan:1 ") == ("pi4-01.lan", 1)
    assert parse_address("[::1]:65535") == ("::1", 65535)
    assert parse_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)
    for address, says in (("127.0.0.1:70000", "port 70000 is outside 1-65535"),
                          ("[::1]:65536", "port 65536 is outside 1-65535"),
                          ("127.0.0.1:0", "port 0 is outside 1-65535"),
                          ("127.0.0.1:" + "9" * 5000, f"port {'9' * 5000} is outside 1-65535"),
                          ("127.0.0.1:-1", "port '-1' is not a number"),
                          ("127.0.0.1:٣", "port '٣' is not a number"),
                          ("127.0.0.1", "expected HOST:PORT (an IPv6 host in brackets: [::1]:50051)"),
                          ("[::1]", "expected HOST:PORT (an IPv6 host in brackets: [::1]:50051)"),
                          (":50051", "expected HOST:PORT (an IPv6 host in brackets: [::1]:50051)"),
                          ("::1:50051", "an IPv6 host goes in brackets, e.g. [::1:50051]:50051 or [::1]:50051")):
        with pytest.raises(ValueError) as e:
            parse_address(address, "--farm")
        assert str(e.value) == f"--farm {address}: {says}"
    with pytest.raises(ValueError, match="^target 127.0.0.1:70000: port 70000 is outside 1-65535$"):
        BenchClient("127.0.0.1:70000")
    with pytest.raises(ValueError, match="^farm device pi: address 127.0.0.1:70000: port 70000 is outside 1-65535$"):
        FarmDevice("pi", "127.0.0.1:70000", "rpi4")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args, says in ((["info", "--target", "127.0.0.1:70000"],
                        "benchd info: --target 127.0.0.1:70000: port 70000 is outside 1-65535"),
                       (["bench", "m.onnx", "--target", "[::1]:70000"],
                        "benchd bench: --target [::1]:70000: port 70000 is outside 1-65535"),
                       (["serve", "--port", "70000", "--cache-dir", str(tmp_path / "cache")],
                        "benchd serve: listen address (--address, --port) 127.0.0.1:70000: port 70000 is outside "
                        "0-65535"),
                       (["serve", "--port", "0", "--metrics-port", "70000", "--cache-dir", str(tmp_path / "cache")],
                        "benchd serve: metrics address (--metrics-address, --metrics-port) 127.0.0.1:70000: port "
                        "70000 is outside 0-65535")):
        p = subprocess.run([sys.executable, "-m", "benchd.cli", *args], env=env, capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2 and p.stderr.strip() == says, p.stderr
