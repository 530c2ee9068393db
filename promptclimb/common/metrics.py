"""Prometheus metrics for every gRPC server: the go-grpc-prometheus names, from one aio interceptor.

``grpc_server_started_total``, ``grpc_server_handled_total``, ``grpc_server_handling_seconds``,
``grpc_server_msg_received_total`` and ``grpc_server_msg_sent_total`` with the labels
``grpc_type``, ``grpc_service``, ``grpc_method`` (and ``grpc_code``) — bounded by the API.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GrpcServerMetrics:
    """The standard server-side gRPC metric families, registered once per registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled "
            "by the server.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels,
            registry=registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels,
            registry=registry,
        )


_DEFAULT: GrpcServerMetrics | None = None


def default_server_metrics() -> GrpcServerMetrics:
    """The process-wide metric families on the default registry (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = GrpcServerMetrics()
    return _DEFAULT


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = (
        full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "unknown", "unknown")
    )
    return service, method


def _code_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if error is not None:
        if isinstance(error, grpc.aio.AbortError) or isinstance(error, grpc.RpcError):
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            return "UNKNOWN"
        import asyncio

        if isinstance(error, asyncio.CancelledError):
            return "CANCELLED"
        return "UNKNOWN"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC of an aio server."""

    def __init__(self, metrics: GrpcServerMetrics | None = None) -> None:
        self.metrics = metrics or default_server_metrics()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        m = self.metrics

        def labels(kind: str) -> tuple[str, str, str]:
            return (kind, service, method)

        if handler.unary_unary:
            inner_uu = handler.unary_unary
            kind = "unary"

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                m.started.labels(*labels(kind)).inc()
                m.msg_received.labels(*labels(kind)).inc()
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    response = await inner_uu(request, context)
                    m.msg_sent.labels(*labels(kind)).inc()
                    return response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    m.handled.labels(*labels(kind), _code_of(context, error)).inc()
                    m.handling_seconds.labels(*labels(kind)).observe(time.perf_counter() - start)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream and inspect.iscoroutinefunction(handler.unary_stream):
            # A reader/writer handler (context.write(), e.g. grpc.health.v1 Watch) is a coroutine,
            # not an async generator: await it rather than iterate it.
            inner_uw = handler.unary_stream
            kind_w = "server_stream"

            async def unary_stream_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                m.started.labels(*labels(kind_w)).inc()
                m.msg_received.labels(*labels(kind_w)).inc()
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    await inner_uw(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    m.handled.labels(*labels(kind_w), _code_of(context, error)).inc()
                    m.handling_seconds.labels(*labels(kind_w)).observe(time.perf_counter() - start)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream
            kind = "server_stream"

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                m.started.labels(*labels(kind)).inc()
                m.msg_received.labels(*labels(kind)).inc()
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    async for response in inner_us(request, context):
                        m.msg_sent.labels(*labels(kind)).inc()
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    m.handled.labels(*labels(kind), _code_of(context, error)).inc()
                    m.handling_seconds.labels(*labels(kind)).observe(time.perf_counter() - start)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream
            kind = "bidi_stream"

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                m.started.labels(*labels(kind)).inc()
                start = time.perf_counter()
                error: BaseException | None = None

                async def counted() -> AsyncIterator[Any]:
                    async for r in requests:
                        m.msg_received.labels(*labels(kind)).inc()
                        yield r

                try:
                    result = inner_ss(counted(), context)
                    async for response in result:
                        m.msg_sent.labels(*labels(kind)).inc()
                        yield response
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    m.handled.labels(*labels(kind), _code_of(context, error)).inc()
                    m.handling_seconds.labels(*labels(kind)).observe(time.perf_counter() - start)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler  # client streaming: not used by our APIs


def start_metrics_server(port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on ``port`` (0 = any free port) in a daemon thread; return the bound port."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
