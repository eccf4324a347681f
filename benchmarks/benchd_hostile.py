"""benchd under attack: every hostile class of the test module, sent many times against one real
`benchd serve` process on 127.0.0.1, with the codes it answered, whether it still benchmarked a
good model afterwards, and the server's and worker's peak memory.

    python benchmarks/benchd_hostile.py [--rounds 20] [--json out.json]

Loopback only; the server is a child process stopped by its PID.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from benchd.client import BenchClient  # noqa: E402
from benchd.errors import BenchError  # noqa: E402
from benchd.v1 import benchd_pb2 as pb  # noqa: E402
from benchd.v1 import benchd_pb2_grpc as pb_grpc  # noqa: E402
from common import machine  # noqa: E402
from tests.helpers import benchd_fixtures as fx  # noqa: E402

TOKEN = "hostile-benchmark-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def vm_hwm_mib(pid: int | None) -> float:
    """Peak resident memory of a process, MiB (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


class Target:
    def __init__(self, tmp: Path) -> None:
        token = tmp / "token"
        token.write_text(TOKEN)
        token.chmod(0o600)
        port_file = tmp / "port"
        self.cache = tmp / "cache"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchd.cli", "serve", "--address", "127.0.0.1", "--port", "0",
             "--port-file", str(port_file), "--token-file", str(token), "--cache-dir", str(self.cache),
             "--cache-max-mb", "8", "--max-model-mb", "4", "--max-duration-s", "4", "--upload-idle-s", "2",
             "--max-uploads", "2", "--queue-size", "2", "--worker-memory-mb", "1024", "--monitor-interval-s", "0"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.log_lines = self.tracebacks = 0
        self.levels: collections.Counter[str] = collections.Counter()
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("benchd serve did not start")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the server's log (both streams)
            self.log_lines += 1
            self.tracebacks += b"Traceback" in line
            for level in (b" WARNING ", b" ERROR ", b" INFO "):
                if level in line:
                    self.levels[level.decode().strip()] += 1

    def worker_pid(self) -> int | None:
        kids = children(self.proc.pid)
        return kids[0] if kids else None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def code_of(fn: Callable[[], Any]) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name  # type: ignore[attr-defined]
    except BenchError as exc:
        return exc.code.name if exc.code is not None else type(exc).__name__


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="requests per cheap class (slow classes send fewer)")
    ap.add_argument("--json", type=Path, help="write the table as JSON here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="benchd-hostile-"))
    good = fx.conv_model(tmp / "good.onnx")
    target = Target(tmp)
    channel = grpc.insecure_channel(target.address)
    stub = pb_grpc.BenchServiceStub(channel)
    client = BenchClient(target.address, token=TOKEN, retries=1)
    fx.wait_serving(client)
    good_sha = client.upload(good).sha256
    rows: list[dict[str, Any]] = []
    peak = {"server": 0.0, "worker": 0.0}

    def alive() -> bool:
        try:
            fx.wait_serving(client, 30)
            return client.benchmark(good, runs=3, warmup_runs=0, target_rel_ci=0).runs == 3
        except Exception:
            return False

    def record(name: str, attempts: Iterator[Callable[[], Any]]) -> None:
        t0 = time.monotonic()
        codes: collections.Counter[str] = collections.Counter()
        for attempt in attempts:
            codes[code_of(attempt)] += 1
            peak["worker"] = max(peak["worker"], vm_hwm_mib(target.worker_pid()))
        ok = alive()
        peak["server"] = max(peak["server"], vm_hwm_mib(target.proc.pid))
        rows.append({"class": name, "sent": sum(codes.values()), "codes": dict(codes), "alive_after": ok,
                     "server_peak_rss_mib": round(peak["server"], 1), "seconds": round(time.monotonic() - t0, 1)})
        print(f"{name:34s} {sum(codes.values()):4d}  {dict(codes)}  alive={ok}", flush=True)

    n = args.rounds
    data = fx.conv_model(tmp / "other.onnx", seed=7).read_bytes()
    sha = hashlib.sha256(data).hexdigest()

    def up(messages: list[pb.UploadModelRequest], **kw: Any) -> Callable[[], Any]:
        return lambda: stub.UploadModel(iter(messages), timeout=30, **kw)

    def header(sha_: str = sha, size: int = len(data)) -> pb.UploadModelRequest:
        return pb.UploadModelRequest(header=pb.UploadHeader(model_sha256=sha_, size_bytes=size))

    chunk = pb.UploadModelRequest(chunk=data)
    raw = channel.unary_unary("/benchd.v1.BenchService/Benchmark")
    has = pb.HasModelRequest(model_sha256=good_sha)
    record("no token", (lambda: stub.HasModel(has, timeout=10) for _ in range(n)))
    record("wrong token", (lambda: stub.HasModel(has, timeout=10, metadata=(("authorization", "Bearer x"),))
                           for _ in range(n)))
    record("garbage bytes, no token", (lambda: raw(b"\xff\xff\x00garbage" * 50, timeout=10) for _ in range(n)))
    record("garbage bytes, with token", (lambda: raw(b"\xff\xff\x00garbage" * 50, timeout=10, metadata=AUTH)
                                         for _ in range(n)))
    for name, msgs in {"upload: truncated": [header(size=len(data) + 9), chunk],
                       "upload: more than declared": [header(size=len(data) - 1), chunk],
                       "upload: sha mismatch": [header(sha_=hashlib.sha256(b"x").hexdigest()), chunk],
                       "upload: oversize declared": [header(size=1 << 40), chunk],
                       "upload: zero length": [header(sha_=hashlib.sha256(b"").hexdigest(), size=0)],
                       "upload: sha with a newline": [header(sha_=sha + "\n"), chunk],
                       "upload: truncated ONNX": [header(sha_=hashlib.sha256(data[:-9]).hexdigest(),
                                                         size=len(data) - 9),
                                                  pb.UploadModelRequest(chunk=data[:-9])],
                       "upload: no header": [chunk]}.items():
        record(name, (up(msgs, metadata=AUTH) for _ in range(n)))

    def stalled() -> Any:  # a header, then silence: the server cancels it after --upload-idle-s
        gate = threading.Event()

        def msgs() -> Iterator[pb.UploadModelRequest]:
            yield header()
            gate.wait(20)

        try:
            return stub.UploadModel(msgs(), timeout=30, metadata=AUTH)
        finally:
            gate.set()

    record("upload: stalled after the header", (stalled for _ in range(max(3, n // 5))))

    def replaced() -> Any:  # the cached file swapped for another model: re-uploaded, the right one timed
        target_file = target.cache / "models" / f"{good_sha}.onnx"
        target_file.write_bytes(data)
        r = client.benchmark(good, runs=2, warmup_runs=0, target_rel_ci=0)
        assert r.uploaded and r.inputs[0]["dims"] == [1, 3, 32, 32]

    record("cache: file replaced on disk", (replaced for _ in range(max(3, n // 4))))
    cores = len(os.sched_getaffinity(0))
    for name, req in {
        "absurd runs": pb.BenchmarkRequest(model_sha256=good_sha, runs=10**9),
        "threads above the cores": pb.BenchmarkRequest(model_sha256=good_sha, intra_op_threads=cores + 14),
        "absurd batch": pb.BenchmarkRequest(model_sha256=good_sha, batch_size=10**9),
        "absurd shape": pb.BenchmarkRequest(model_sha256=good_sha, input_shapes=[
            pb.InputShape(name="input", dims=[1, 3, 1 << 62, 1 << 62])]),
        "20,000-char input name": pb.BenchmarkRequest(model_sha256=good_sha, input_shapes=[
            pb.InputShape(name="n" * 20_000, dims=[1])]),
        "graph_optimization=99": pb.BenchmarkRequest(model_sha256=good_sha, graph_optimization=99),
        "unknown sha": pb.BenchmarkRequest(model_sha256="0" * 64),
    }.items():
        record(name, ((lambda r=req: stub.Benchmark(r, timeout=30, metadata=AUTH)) for _ in range(n)))
    for name, (path, _, _) in fx.hostile_models(tmp).items():
        reps = max(2, n // 5)
        record(f"model: {name}",
               ((lambda p=path: client.benchmark(p, runs=2, warmup_runs=0, target_rel_ci=0)) for _ in range(reps)))
    loop = fx.loop_model(tmp / "loop.onnx")
    record("model: endless Loop (4 s cap)", (lambda: client.benchmark(loop, runs=1, warmup_runs=0, target_rel_ci=0,
                                                                      timeout_s=60) for _ in range(3)))
    slow = fx.slow_model(tmp / "slow.onnx", hw=48, layers=3)
    client.ensure_model(slow)

    def flood() -> None:
        codes: list[str] = []

        def one() -> None:
            codes.append(code_of(lambda: client.benchmark(slow, runs=1, warmup_runs=0, min_duration_s=0.5,
                                                          target_rel_ci=0)))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        flood_codes.extend(codes)

    flood_codes: list[str] = []
    record("queue flood (12 at once) x3", (flood for _ in range(3)))
    rows[-1]["codes"] = dict(collections.Counter(flood_codes))
    rows[-1]["sent"] = len(flood_codes)

    def signal_worker(sig: int) -> Callable[[], Any]:
        def attempt() -> Any:
            def send() -> None:
                time.sleep(0.5)
                pid = target.worker_pid()
                if pid:
                    os.kill(pid, sig)

            threading.Thread(target=send).start()
            return client.benchmark(slow, runs=1, warmup_runs=0, min_duration_s=3, target_rel_ci=0, timeout_s=60)
        return attempt

    record("worker SIGKILL mid-benchmark", (signal_worker(signal.SIGKILL) for _ in range(3)))
    record("worker SIGSTOP mid-benchmark", (signal_worker(signal.SIGSTOP) for _ in range(3)))
    fills = [fx.big_model(tmp / f"fill{i}.onnx", mib=1.0 + i / 20) for i in range(12)]
    record("cache fill and eviction (8 MiB cap)", ((lambda p=p: client.upload(p)) for p in fills))
    rows[-1]["cache_mib_after"] = round(client.info().cache_size_bytes / 2**20, 1)

    client.close()
    channel.close()
    target.stop()
    total = sum(r["sent"] for r in rows)
    print(f"\n{machine()}\n{total} requests, {len(rows)} classes; server log lines {target.log_lines} "
          f"({dict(target.levels)}), tracebacks {target.tracebacks}; peak RSS server {peak['server']:.0f} MiB, "
          f"worker {peak['worker']:.0f} MiB\n")
    print("| class | sent | codes | alive after | server peak RSS MiB | s |\n|---|---:|---|:---:|---:|---:|")
    for r in rows:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(r["codes"].items()))
        print(f"| {r['class']} | {r['sent']} | {codes} | {'yes' if r['alive_after'] else 'NO'} | "
              f"{r['server_peak_rss_mib']} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "peak_rss_mib": peak,
                                         "log_lines": target.log_lines, "log_levels": dict(target.levels),
                                         "tracebacks": target.tracebacks}, indent=2))
    return 0 if all(r["alive_after"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
