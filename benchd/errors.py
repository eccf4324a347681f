"""benchd's own exceptions: every gRPC failure a client sees becomes one of these."""

from __future__ import annotations

import grpc

REASON_KEY = "benchd-reason"  # trailing metadata: why RESOURCE_EXHAUSTED (busy, queue-full, memory, disk)
BUSY_REASONS = ("busy", "queue-full")  # the device is taken: another device may serve the request


class BenchError(Exception):
    """A benchd call failed. `code` is the gRPC status, `details` the server's message."""

    def __init__(
        self, details: str, *, code: grpc.StatusCode | None = None, target: str = "", reason: str = ""
    ) -> None:
        self.details = details
        self.code = code
        self.target = target
        self.reason = reason
        where = f"{target}: " if target else ""
        status = f"[{code.name}] " if code is not None else ""
        super().__init__(f"{where}{status}{details}")


class BenchAuthError(BenchError):
    """UNAUTHENTICATED / PERMISSION_DENIED: missing or wrong token, TLS client cert refused."""


class BenchInvalidArgument(BenchError):
    """INVALID_ARGUMENT: bad request or a model the device cannot load, feed or run."""


class BenchNotFound(BenchError):
    """NOT_FOUND: the model is not in the device's cache."""


class BenchBusy(BenchError):
    """RESOURCE_EXHAUSTED because the device is busy or its queue is full: try another device."""


class BenchResourceExhausted(BenchError):
    """RESOURCE_EXHAUSTED for the model itself (worker memory limit), the device's disk, or
    without a benchd reason (a transport limit such as the metadata size)."""


class BenchDeadlineExceeded(BenchError):
    """DEADLINE_EXCEEDED: the call's deadline passed (queued or running)."""


class BenchUnavailable(BenchError):
    """UNAVAILABLE after the client's retries: the device is down or unreachable."""


class BenchInternal(BenchError):
    """INTERNAL: e.g. the benchmark worker crashed on this model."""


class BenchCancelled(BenchError):
    """CANCELLED: the call was cancelled (for example the server shut down mid-call)."""


class BenchUnimplemented(BenchError):
    """UNIMPLEMENTED: the device's benchd predates this call."""


class FarmError(Exception):
    """The farm could not place a job (no such device class, every device down, timeout)."""


_BY_CODE: dict[grpc.StatusCode, type[BenchError]] = {
    grpc.StatusCode.UNAUTHENTICATED: BenchAuthError,
    grpc.StatusCode.PERMISSION_DENIED: BenchAuthError,
    grpc.StatusCode.INVALID_ARGUMENT: BenchInvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: BenchInvalidArgument,
    grpc.StatusCode.NOT_FOUND: BenchNotFound,
    grpc.StatusCode.DEADLINE_EXCEEDED: BenchDeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: BenchUnavailable,
    grpc.StatusCode.INTERNAL: BenchInternal,
    grpc.StatusCode.CANCELLED: BenchCancelled,
    grpc.StatusCode.UNIMPLEMENTED: BenchUnimplemented,
}


def from_rpc_error(err: grpc.RpcError, target: str = "") -> BenchError:
    """Map a grpc.RpcError (a grpc.Call) to our typed exception, keeping the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    reason = ""
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # busy only when benchd says so: a bare RESOURCE_EXHAUSTED (a transport limit, e.g. metadata
        # too large) is the request's own problem and would fail on every device alike
        # gRPC's own refusal of a burst over the server's maximum_concurrent_rpcs is overload too
        overloaded = reason in BUSY_REASONS or details.startswith("Concurrent RPC limit exceeded")
        cls: type[BenchError] = BenchBusy if overloaded else BenchResourceExhausted
    else:
        cls = _BY_CODE.get(code, BenchError)
    if cls is BenchUnimplemented:  # gRPC says only "Method not found!"
        details = f"{details[:200]} (the device's benchd is older than this call: update it, clusters/setup_pi.sh)"
    return cls(details, code=code, target=target, reason=reason)
