"""Who may talk to the teacher: an optional shared bearer token and optional TLS.

The token check is a server interceptor, so every RPC of the Teacher service is
covered by one piece of code; the standard health service stays open so load
balancers and probes need no secret. Tokens are compared with
``hmac.compare_digest`` (no timing leak) and never logged.
"""
from __future__ import annotations

import hmac
from pathlib import Path

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def server_credentials(cert_file: str | Path, key_file: str | Path) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate chain and its private key."""
    for what, path in (("--tls-cert", cert_file), ("--tls-key", key_file)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
    return grpc.ssl_server_credentials([(Path(key_file).read_bytes(), Path(cert_file).read_bytes())])


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only refuses the call."""
    def refuse(_request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:  # an unknown method: refuse it too, so a caller without the token learns nothing
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Let a call through only with ``authorization: Bearer <token>``; health checks stay open."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = [v for k, v in handler_call_details.invocation_metadata or () if k == "authorization"]
        if not sent:
            return _refusal(handler, "this teacher needs a token: send 'authorization: Bearer TOKEN' "
                                     "(--token-file on the trainer)")
        value = sent[0].encode() if isinstance(sent[0], str) else sent[0]
        if len(sent) != 1 or not hmac.compare_digest(value, self._expected):
            return _refusal(handler, "the token sent does not match this teacher's token")
        return handler
