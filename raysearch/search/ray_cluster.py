"""A Ray cluster given by address, asked before `ray.init` joins it: one line, at once, for an
address where no cluster answers or a cluster that wants a token this process does not send
(was: 20 lines of Ray's GCS client over 20 s, then a traceback)."""

from __future__ import annotations

import os

#: a GCS call every Ray version answers, cheap and without side effects
_PROBE = "/ray.rpc.NodeInfoGcsService/GetClusterId"
PROBE_TIMEOUT_S = 5.0
_TOKEN = ("the cluster's token in ~/.ray/auth_token or $RAY_AUTH_TOKEN (`ray get-auth-token` on the head prints "
          "it; see the README's 'Your GPU cluster')")


def _gcs_target(address: str) -> str | None:
    """host:port of a GCS address; None for what this check leaves to Ray (auto, ray://, ...)."""
    if address in ("auto", "local") or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return f"{address}:6379"  # Ray's default GCS port
    return address


def _auth_metadata() -> list[tuple[str, str]] | None:
    """The authorization header Ray itself would send from this process (none without token mode);
    None where this Ray does not say (then its own answer is left to `ray.init`)."""
    try:
        from ray._private.authentication import authentication_utils as auth_utils
        from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # a Cython module
    except ImportError:
        return None
    if not auth_utils.is_token_auth_enabled():
        return []
    return [(k.lower(), v) for k, v in AuthenticationTokenLoader.instance().get_token_for_http_header().items()]


def ray_is_up() -> bool:
    """This process already joined a cluster (nothing to check), without importing Ray for it."""
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def check_cluster(address: str) -> None:
    """Raise `ValueError` naming ``address`` when no cluster answers there or it refuses this
    process's credentials; anything else (an older Ray, another answer) is left to `ray.init`."""
    import grpc

    target = _gcs_target(address)
    if target is None:
        return
    metadata = _auth_metadata()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(_PROBE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            call(b"", timeout=PROBE_TIMEOUT_S, metadata=metadata or None)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED and metadata is not None:
                if os.environ.get("RAY_AUTH_MODE") == "token":
                    raise ValueError(f"--address {address}: the Ray cluster there refused this process's token; "
                                     f"put {_TOKEN}") from None
                raise ValueError(f"--address {address}: the Ray cluster there uses token authentication; set "
                                 f"RAY_AUTH_MODE=token with {_TOKEN}") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ValueError(f"--address {address}: no Ray cluster answers there ({code.name.lower()}); start "
                                 "one with `ray start --head`, or give its head's address (host:6379)") from None
