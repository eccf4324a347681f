"""Bearer-token auth and TLS plumbing shared by the server and the client."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
import os
import re
import ssl
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


def parse_address(address: str, what: str = "address", *, any_port: bool = False) -> tuple[str, int]:
    """'HOST:PORT' / '[IPv6]:PORT' -> (host, port); a ValueError naming ``what`` (a flag, an
    inventory entry) and the value otherwise. The one parser of benchd's and raysearch's addresses:
    gRPC takes a port modulo 65536 (127.0.0.1:70000 silently reaches port 4464), so a port outside
    1-65535 is refused here (0 too, unless ``any_port``: "any free port" when binding)."""
    text = address.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port = rest[1:] if bracket and rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:  # a bare IPv6 address: which colon ends it is anyone's guess
            raise ValueError(f"{what} {address}: an IPv6 host goes in brackets, e.g. [{text}]:50051 or [::1]:50051")
    if not host or not port:
        raise ValueError(f"{what} {address}: expected HOST:PORT (an IPv6 host in brackets: [::1]:50051)")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"{what} {address}: port {port!r} is not a number")
    low = 0 if any_port else 1
    if len(port) > 5 or not low <= int(port) <= 65535:
        raise ValueError(f"{what} {address}: port {port} is outside {low}-65535")
    return host, int(port)


class TlsFilesError(ValueError):
    """A TLS file set gRPC must not see: a certificate without its key, a missing or unreadable
    file, a file that is not PEM of the expected kind. (gRPC's C core aborts the whole process on
    some of these, e.g. a client certificate without a private key.)"""


_PEM_LABELS = {"certificate": ("CERTIFICATE",),
               "private key": ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY")}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)


def read_pem(path: str, kind: str, role: str) -> bytes:
    """The bytes of a PEM file holding a ``kind`` ("certificate" or "private key"); ``role`` names
    the file in the message (e.g. "TLS CA"). Checked here because gRPC, handed anything else, logs
    lines of its own that never name the file, then fails every call."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{role} {p}: cannot read ({exc.strerror})") from None
    labels = _PEM_LABELS[kind]
    blocks = [(label.decode(), body) for label, body in _PEM_BLOCK.findall(data)]
    ours = [(label, body) for label, body in blocks if label in labels]
    if not ours:
        begun = [label for label in labels if f"-----BEGIN {label}-----".encode() in data]
        found = (f"-----BEGIN {begun[0]}----- without its END line: cut short?" if begun
                 else f"it holds {', '.join(sorted({label for label, _ in blocks}))}" if blocks
                 else f"no -----BEGIN {labels[0]}----- block")
        raise TlsFilesError(f"{role} {p}: not a PEM {kind} ({found})")
    ders = []
    for i, (label, body) in enumerate(ours):
        which = f"{kind} #{i + 1}" if len(ours) > 1 else kind
        if label.startswith("ENCRYPTED") or b"Proc-Type:" in body:  # a passphrase gRPC has no way to ask for
            raise TlsFilesError(f"{role} {p}: the {which} is encrypted; gRPC needs it unencrypted")
        try:
            ders.append(_der(body))
        except ValueError as exc:
            raise TlsFilesError(f"{role} {p}: the PEM {which} is damaged ({exc}; expected base64 of DER "
                                f"between its BEGIN and END lines)") from None
    problem = _certificate_problem(ders) if kind == "certificate" else _key_problem(ders[0])
    if problem:
        raise TlsFilesError(f"{role} {p}: not a valid PEM {kind} ({problem})")
    return data


def _der(body: bytes) -> bytes:
    """The DER a PEM block's base64 encodes, if it is one whole ASN.1 SEQUENCE (as a certificate and
    a key are): random or truncated text between the markers is caught here."""
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(der) < 2 or der[0] != 0x30:
        raise ValueError("not DER")
    size, head = der[1], 2
    if size & 0x80:  # long form: the next (size & 0x7f) bytes hold the length
        head += size & 0x7F
        size = int.from_bytes(der[2:head], "big")
    if head + size != len(der):
        raise ValueError(f"its DER says {head + size} bytes, the block holds {len(der)}")
    return der


def _certificate_problem(ders: list[bytes]) -> str:
    """What OpenSSL (through the standard library's ssl) finds wrong with DER certificates ("": nothing)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"".join(ders))
    except ssl.SSLError as exc:
        return f"OpenSSL cannot read it as X.509: {exc.reason or exc.strerror or exc}"
    return ""


def _key_problem(der: bytes) -> str:
    """What the cryptography package, where installed (not on a Pi), finds wrong with a DER private key."""
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.serialization import load_der_private_key
    except ImportError:
        return ""  # the PEM and DER framing checks above are all a Pi gets
    try:
        load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"cannot read it as a private key: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return ""


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
