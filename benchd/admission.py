"""Admission: how many benchd calls may hold a server thread at once, and an explicit "busy" beyond.

gRPC's own cap (``maximum_concurrent_rpcs``) refuses a burst with a bare "Concurrent RPC limit
exceeded!" and counts health checks with the rest, so a device flooded with benchmark requests
also looked dead to its health checks. Here the cap covers the service's calls only: beyond it a
call is refused at once with RESOURCE_EXHAUSTED and the reason "busy" (a farm tries another
device), and the server's thread pool keeps spare threads that only the health service and these
quick refusals use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from benchd.errors import REASON_KEY

log = logging.getLogger("benchd.admission")

SPARE_THREADS = 8  # for health checks and refusals while every admitted call is held


class AdmissionInterceptor(grpc.ServerInterceptor):
    """At most ``limit`` calls to methods under ``service_prefix`` run at once; the next are busy."""

    def __init__(self, limit: int, service_prefix: str) -> None:
        if limit < 1:
            raise ValueError(f"admission limit {limit} must be >= 1")
        self.limit = limit
        self._prefix = service_prefix
        self._lock = threading.Lock()
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def _enter(self) -> bool:
        with self._lock:
            if self._active >= self.limit:
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _refuse(self, method: str, context: grpc.ServicerContext) -> None:
        log.warning("busy: refused %s from %s (%d calls in progress)", method[:100], context.peer(), self.limit)
        context.set_trailing_metadata(((REASON_KEY, "busy"),))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"benchd is busy: {self.limit} calls in progress; retry later or use another device")

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.response_streaming:
            inner_stream = handler.stream_stream if handler.request_streaming else handler.unary_stream

            def streamed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if not self._enter():
                    self._refuse(method, context)
                try:
                    yield from inner_stream(request, context)
                finally:
                    self._leave()

            make = (grpc.stream_stream_rpc_method_handler if handler.request_streaming
                    else grpc.unary_stream_rpc_method_handler)
            return make(streamed, **kwargs)
        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._enter():
                self._refuse(method, context)
            try:
                return inner(request, context)
            finally:
                self._leave()

        make = grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        return make(unary, **kwargs)
