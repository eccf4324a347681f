"""Bearer-token auth and TLS plumbing shared by the server and the client."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger("benchd.security")

AUTH_HEADER = "authorization"
# Probes (load balancers, systemd watchdogs, `grpc_health_probe`) carry no token.
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in a file (surrounding whitespace ignored); warns if others may read it."""
    p = Path(path).expanduser()
    try:
        token = p.read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read token file {p}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"token file {p} is empty")
    # group-readable is the deployed layout (root:benchd 0640, clusters/setup_pi.sh); others never
    if p.stat().st_mode & stat.S_IRWXO:
        log.warning("token file %s is readable by others; chmod o-rwx it (600, or 640 with a trusted group)", p)
    return token


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    """'host:port' / '[v6]:port' -> (host, port); a bare host gets port 0."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or 0)
    if address.count(":") == 1:
        host, port = address.rsplit(":", 1)
        return host, int(port)
    return address, 0


class TlsFilesError(ValueError):
    """A TLS file set gRPC must not see: a certificate without its key, a missing or unreadable
    file, a file that is not PEM of the expected kind. (gRPC's C core aborts the whole process on
    some of these, e.g. a client certificate without a private key.)"""


_PEM_MARKERS = {"certificate": b"-----BEGIN CERTIFICATE-----", "private key": b"PRIVATE KEY-----"}


def read_pem(path: str, kind: str, role: str) -> bytes:
    """The bytes of a PEM file holding a ``kind`` ("certificate" or "private key"); ``role`` names
    the file in the message (e.g. "--tls-key")."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{role} {p}: cannot read ({exc.strerror})") from None
    if _PEM_MARKERS[kind] not in data:
        raise TlsFilesError(f"{role} {p}: not a PEM {kind}")
    return data


def pair(cert_file: str | None, key_file: str | None, who: str) -> None:
    if bool(cert_file) != bool(key_file):
        have, missing = ("certificate", "private key") if cert_file else ("private key", "certificate")
        raise TlsFilesError(f"{who} TLS: a {have} without its {missing} (the certificate and key go together)")


@dataclass(frozen=True)
class ServerTls:
    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # set: clients must present a certificate (mutual TLS)

    def credentials(self) -> grpc.ServerCredentials:
        pair(self.cert_file, self.key_file, "server")
        key = read_pem(self.key_file, "private key", "TLS key")
        cert = read_pem(self.cert_file, "certificate", "TLS certificate")
        ca = read_pem(self.client_ca_file, "certificate", "TLS client CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientTls:
    ca_file: str | None = None  # None: the system's trust store
    cert_file: str | None = None  # client certificate for mutual TLS
    key_file: str | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the host

    def credentials(self) -> grpc.ChannelCredentials:
        pair(self.cert_file, self.key_file, "client")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_file, "certificate", "TLS CA") if self.ca_file else None,
            private_key=read_pem(self.key_file, "private key", "TLS key") if self.key_file else None,
            certificate_chain=read_pem(self.cert_file, "certificate", "TLS certificate") if self.cert_file else None,
        )


def _abort_handler(handler: grpc.RpcMethodHandler, method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler that refuses the call before its body is parsed (no deserializer: garbage bytes
    from an unauthenticated peer cost nothing and log one line, not a traceback)."""
    def deny(_request: Any, context: grpc.ServicerContext) -> Any:
        log.warning("refused %s from %s: %s", method[:100], context.peer(), message)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kwargs: dict[str, Callable[..., Any] | None] = {
        "request_deserializer": None,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class TokenInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call except the health service."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        got = metadata.get(AUTH_HEADER)
        if got is None:
            return _abort_handler(handler, handler_call_details.method,
                                  "missing bearer token (metadata 'authorization: Bearer <token>')")
        got_bytes = got.encode() if isinstance(got, str) else bytes(got)
        if not hmac.compare_digest(got_bytes, self._expected):
            return _abort_handler(handler, handler_call_details.method, "wrong bearer token")
        return handler


class _Malformed:
    """What a request that does not parse becomes; the handler answers INVALID_ARGUMENT."""


_MALFORMED = _Malformed()
_MALFORMED_MESSAGE = "the request is not a valid benchd.v1 protobuf message"


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Bytes that do not parse as the method's request get INVALID_ARGUMENT (gRPC's own answer is
    INTERNAL with a traceback in the log): the client's mistake, said once, in one line."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.response_streaming:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method

        def safe_parse(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception:  # protobuf's DecodeError and friends
                return _MALFORMED

        def refuse(context: grpc.ServicerContext) -> None:
            log.warning("refused %s from %s: %s", method[:100], context.peer(), _MALFORMED_MESSAGE)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, _MALFORMED_MESSAGE)

        kwargs = {"request_deserializer": safe_parse, "response_serializer": handler.response_serializer}
        if handler.request_streaming:
            behaviour = handler.stream_unary

            def stream(requests: Any, context: grpc.ServicerContext) -> Any:
                def checked() -> Any:
                    for r in requests:
                        if r is _MALFORMED:
                            refuse(context)
                        yield r

                return behaviour(checked(), context)

            return grpc.stream_unary_rpc_method_handler(stream, **kwargs)
        unary = handler.unary_unary

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _MALFORMED:
                refuse(context)
            return unary(request, context)

        return grpc.unary_unary_rpc_method_handler(call, **kwargs)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else ()
