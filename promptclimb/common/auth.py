"""Bearer-token check for a gRPC server (the coordinator's public API).

A call must carry ``authorization: Bearer <token>`` metadata; anything else ends with
UNAUTHENTICATED before the servicer runs. The comparison is constant-time (``hmac.compare_digest``)
so response timing reveals nothing about the token. Health checks and server reflection stay
open: orchestrators probe health without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
_SCHEME = b"bearer "


def bearer_token(metadata: Any) -> bytes | None:
    """The token of the first ``authorization: Bearer …`` entry in call metadata, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        raw = value.encode() if isinstance(value, str) else bytes(value)
        if raw[: len(_SCHEME)].lower() == _SCHEME:
            return raw[len(_SCHEME) :].strip()
        return b""
    return None


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends every call with UNAUTHENTICATED."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, des, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, des, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    return grpc.stream_stream_rpc_method_handler(stream, des, ser)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only when it carries the expected bearer token."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the auth token must not be empty")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised and exempt calls on; answer the rest UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        given = bearer_token(handler_call_details.invocation_metadata)
        if given is None:
            return _rejecting(handler, "missing 'authorization: Bearer <token>' metadata")
        if not hmac.compare_digest(given, self._token):
            return _rejecting(handler, "invalid bearer token")
        return handler
