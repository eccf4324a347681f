"""The benchmark worker process, and the server-side handle that drives it.

Each server keeps one worker (`python -m benchd.worker`): the server sends a job, the worker
runs `runner.run_benchmark` (or, for Predict, `predict.run_predict`, keeping the last model's
session between calls) and answers. A model that crashes onnxruntime or exceeds the
worker's address-space limit (RLIMIT_AS) kills or fails the worker only; the handle reports
that as an error and starts a fresh worker for the next job.

Wire format on the pipes: 4-byte big-endian length + UTF-8 JSON, one frame per message. The
worker's stdout is reserved for frames (fd 1 is redirected to stderr so that nothing a native
library prints can corrupt the stream).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import os
import re
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger("benchd.worker")

_HEADER = struct.Struct(">I")
_MAX_FRAME = 64 << 20
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class WorkerError(Exception):
    """The worker died or could not start. `memory` tells an out-of-memory death."""

    def __init__(self, message: str, *, memory: bool = False) -> None:
        super().__init__(message)
        self.memory = memory


class WorkerCancelled(Exception):
    """The job was abandoned (client gone or deadline passed); the worker was killed. `loaded`:
    the session had been created (the timing ran long), else creating it hung."""

    def __init__(self, message: str, *, loaded: bool = False) -> None:
        super().__init__(message)
        self.loaded = loaded


@dataclass(frozen=True)
class WorkerReply:
    """The worker's answer to one job: the benchmark's result, or the error's kind (the name of a
    `runner.BenchmarkError` subclass, which the server maps to a status; "" for an unexpected
    failure) and its message. Crosses the pipe as a JSON frame (`frame` / `from_frame`)."""

    result: dict[str, Any] | None = None
    error: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None

    def frame(self) -> dict[str, Any]:
        return {"ok": self.ok, "result": self.result, "error": self.error, "message": self.message}

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> WorkerReply:
        if frame.get("ok"):
            return cls(result=frame["result"])
        return cls(error=str(frame.get("error") or ""), message=str(frame.get("message") or ""))


# --------------------------------------------------------------------------- worker side


def _write_frame(out: IO[bytes], payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return buf


def _exit_with_parent() -> None:
    """Exit when the server dies, even mid-benchmark, so no orphan keeps the CPU busy.

    (PR_SET_PDEATHSIG would fire when the *thread* that spawned us exits, so poll instead.)
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def predict_job(model_path: str, sha256: str, params: dict[str, Any], dims: Sequence[int], data: bytes,
                max_output_bytes: int) -> dict[str, Any]:
    """The frame that asks the worker to run one Predict batch (bytes travel as base64)."""
    return {"op": "predict", "model_path": model_path, "sha256": sha256, "params": params, "dims": list(dims),
            "data_b64": base64.b64encode(data).decode(), "max_output_bytes": max_output_bytes}


def predict_result(result: dict[str, Any]) -> dict[str, Any]:
    """A Predict job's result with its output bytes decoded."""
    decoded = dict(result)
    decoded["data"] = base64.b64decode(decoded.pop("data_b64"))
    return decoded


def _predict(sessions: Any, job: dict[str, Any], on_loaded: Callable[[], object]) -> dict[str, Any]:
    from benchd import predict

    x = predict.decode(base64.b64decode(job["data_b64"]), job["dims"])
    result = predict.run_predict(sessions, job["model_path"], job.get("sha256"), x,
                                 predict.PredictParams(**job["params"]), max_output_bytes=job["max_output_bytes"],
                                 on_loaded=on_loaded)
    result["data_b64"] = base64.b64encode(result.pop("data")).decode()
    return result


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="benchd benchmark worker (started by the server)")
    parser.add_argument("--memory-limit-bytes", type=int, default=0)
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to run on (before onnxruntime starts)")
    args = parser.parse_args(argv)
    _exit_with_parent()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    if args.memory_limit_bytes > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (args.memory_limit_bytes, args.memory_limit_bytes))

    import onnxruntime as ort

    from benchd import predict, runner

    sessions = predict.SessionCache()
    _write_frame(
        out,
        {
            "op": "ready",
            "pid": os.getpid(),
            "onnxruntime_version": ort.__version__,
            "providers": list(ort.get_available_providers()),
        },
    )
    stdin = sys.stdin.buffer
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return 0
        body = _read_exact(stdin, _HEADER.unpack(header)[0])
        if body is None:
            return 0
        job = json.loads(body)
        loaded = lambda: _write_frame(out, {"op": "loaded"})  # noqa: E731
        try:
            if job.get("op") == "predict":
                reply = WorkerReply(result=_predict(sessions, job, loaded))
            else:
                sessions.drop()  # a benchmark times a cold load, and its peak memory is its own
                params = runner.BenchParams(**job["params"])
                reply = WorkerReply(result=runner.run_benchmark(job["model_path"], params, job.get("sha256"),
                                                                on_loaded=loaded))
        except runner.BenchmarkError as exc:  # a domain error, by kind: the server maps it to a status
            reply = WorkerReply(error=type(exc).__name__, message=str(exc))
        except MemoryError:
            reply = WorkerReply(error=runner.MemoryLimitError.__name__, message="out of memory (MemoryError)")
        except Exception as exc:  # a bug or an unexpected onnxruntime failure: report, keep going
            reply = WorkerReply(message=f"{type(exc).__name__}: {exc}")
        try:
            _write_frame(out, reply.frame())
        except MemoryError:
            _write_frame(out, WorkerReply(error=runner.MemoryLimitError.__name__, message="out of memory").frame())


# --------------------------------------------------------------------------- server side


class WorkerHandle:
    """One worker process; `run` is called by one thread at a time (the device holder)."""

    def __init__(self, memory_limit_bytes: int = 0, prefix: Sequence[str] = (), cpus: Sequence[int] = ()) -> None:
        self.memory_limit_bytes = memory_limit_bytes
        self.prefix = list(prefix)
        self.cpus = tuple(cpus)
        self.ready_info: dict[str, Any] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Start the worker if needed and wait for its ready frame (onnxruntime imported)."""
        with self._lock:
            if self.alive():
                return self.ready_info
            cmd = [*self.prefix, sys.executable, "-m", "benchd.worker"]
            if self.memory_limit_bytes:
                cmd += ["--memory-limit-bytes", str(self.memory_limit_bytes)]
            if self.cpus:
                cmd += ["--cpus", ",".join(map(str, self.cpus))]
            # The worker must import this very benchd, wherever the server was started from.
            pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH", "")) if p)
            env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            self._stderr_tail.clear()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            self._proc = proc
            threading.Thread(target=self._drain_stderr, args=(proc,), daemon=True).start()
            try:
                frame = self._read_frame(proc, time.monotonic() + timeout_s, lambda: False)
            except WorkerCancelled:
                raise WorkerError(f"worker did not start within {timeout_s:.0f} s") from None
            if frame.get("op") != "ready":
                self.kill()
                raise WorkerError(f"worker sent {frame!r} instead of its ready frame")
            self.ready_info = frame
            log.info("benchmark worker %s ready (onnxruntime %s)", proc.pid, frame["onnxruntime_version"])
            return frame

    def run(
        self,
        job: dict[str, Any],
        *,
        deadline: float | None,
        cancelled: Callable[[], bool],
        loaded_deadline: Callable[[], float | None] | None = None,
    ) -> WorkerReply:
        """Send one job and wait for its reply.

        Raises WorkerError if the worker dies (it is restarted on the next call) and
        WorkerCancelled if `cancelled()` turns true or the monotonic `deadline` passes; once the
        worker reports its session created, `loaded_deadline()` replaces `deadline`.
        """
        self.start()
        self._stderr_tail.clear()  # the error message should quote this job's output only
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        data = json.dumps(job).encode()
        try:
            proc.stdin.write(_HEADER.pack(len(data)) + data)
            proc.stdin.flush()
        except OSError as exc:
            raise self._death(proc, f"could not send the job ({exc})") from exc
        loaded = False
        while True:
            try:
                frame = self._read_frame(proc, deadline, cancelled)
            except WorkerCancelled as exc:
                raise WorkerCancelled(str(exc), loaded=loaded) from None
            if frame.get("op") != "loaded":
                return WorkerReply.from_frame(frame)
            loaded = True
            if loaded_deadline is not None:
                deadline = loaded_deadline()

    def kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin:
            try:
                proc.stdin.close()  # EOF: an idle worker exits by itself
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()

    # -- internals

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            if line:
                self._stderr_tail.append(line)
                log.info("worker %s: %s", proc.pid, line)

    def _death(self, proc: subprocess.Popen[bytes], what: str) -> WorkerError:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        time.sleep(0.05)  # let the stderr thread catch the last lines
        tail = " | ".join(list(self._stderr_tail)[-5:])
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        memory = any(
            m in tail.lower() for m in ("bad_alloc", "memoryerror", "cannot allocate", "failed to allocate")
        )
        if memory and self.memory_limit_bytes:
            what += f" (worker memory limit {self.memory_limit_bytes >> 20} MiB)"
        return WorkerError(
            f"benchmark worker died with {how}: {what}" + (f"; stderr: {tail}" if tail else ""),
            memory=memory,
        )

    def _read_frame(
        self, proc: subprocess.Popen[bytes], deadline: float | None, cancelled: Callable[[], bool]
    ) -> dict[str, Any]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        buf = b""
        need = _HEADER.size
        have_header = False
        while True:
            if cancelled() or (deadline is not None and time.monotonic() > deadline):
                self.kill()
                raise WorkerCancelled("job abandoned; worker killed")
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            part = os.read(fd, need - len(buf))
            if not part:
                raise self._death(proc, "the worker died while benchmarking")
            buf += part
            if not have_header and len(buf) >= _HEADER.size:
                need = _HEADER.unpack(buf[: _HEADER.size])[0]
                if need > _MAX_FRAME:
                    self.kill()
                    raise WorkerError(f"worker sent an oversized frame ({need} bytes)")
                buf = buf[_HEADER.size :]
                have_header = True
            if have_header and len(buf) >= need:
                return json.loads(buf[:need])


if __name__ == "__main__":
    sys.exit(worker_main())
