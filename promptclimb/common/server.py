"""grpc.aio server bootstrap shared by the three services.

Health (``grpc.health.v1``: overall "" and one name per service, NOT_SERVING until the service
says it is ready, flipped back before a graceful stop), server reflection, the metrics
interceptor, message-size limits, optional TLS/mTLS and SIGTERM handling live here once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from promptclimb.common.metrics import MetricsInterceptor, start_metrics_server
from promptclimb.common.settings import ServerSettings

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM paths; mTLS when a client CA is set."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both tls_cert and tls_key")
    pair = (settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes were not a valid message of the method's type."""

    type_name: str
    reason: str


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # protobuf's DecodeError, or any deserializer failure
            owner = getattr(deserializer, "__self__", None)
            return _Undecodable(getattr(owner, "__name__", "request"), type(exc).__name__)

    return decode


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Answers undecodable request bytes with INVALID_ARGUMENT.

    Without it grpc.aio reports a request that fails to parse as UNKNOWN and logs a traceback at
    ERROR level for every such call: garbage from a client is the client's error, not ours.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler's deserializer and behaviour (unary requests only; streams pass)."""
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        des, ser = _guarded(handler.request_deserializer), handler.response_serializer

        async def refuse(request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid {request.type_name} message ({request.reason})",
            )

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(request, context)
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, des, ser)
        inner_us = handler.unary_stream
        if inspect.iscoroutinefunction(inner_us):  # a context.write() handler (health Watch)

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    await refuse(request, context)
                return await inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(writer, des, ser)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await refuse(request, context)
            async for item in inner_us(request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(stream, des, ser)


def channel_options(max_message_bytes: int, *, round_robin: bool = False) -> list[tuple[str, object]]:
    """Client channel options: message-size limits, keepalive, and optionally round_robin."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if round_robin:
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options


@dataclass
class ServiceServer:
    """One gRPC service process: a grpc.aio server with health, reflection and metrics."""

    name: str  # e.g. "scorer", for logs
    settings: ServerSettings
    service_names: Sequence[str]  # full names, e.g. "promptclimb.api.v1.ScorerService"
    register: Callable[[grpc.aio.Server], None]
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    health_servicer: health.aio.HealthServicer = field(default_factory=health.aio.HealthServicer)
    port: int = 0
    metrics_port: int | None = None
    _server: grpc.aio.Server | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> int:
        """Bind, start serving (health NOT_SERVING) and return the gRPC port."""
        s = self.settings
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if s.max_connection_age_seconds:
            options.append(("grpc.max_connection_age_ms", int(s.max_connection_age_seconds * 1000)))
            options.append(("grpc.max_connection_age_grace_ms", int(s.grace_seconds * 1000)))
        # The decode guard is innermost, so metrics and auth see its INVALID_ARGUMENT like any other.
        interceptors = [MetricsInterceptor(), *self.interceptors, DecodeGuardInterceptor()]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        self.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health_servicer, server)
        reflection.enable_server_reflection(
            [
                *self.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        for service in ("", *self.service_names):
            await self.health_servicer.set(service, NOT_SERVING)
        address = f"{s.host}:{s.port}"
        creds = server_credentials(s)
        self.port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}")
        await server.start()
        self._server = server
        if s.metrics_port is not None:
            self.metrics_port = start_metrics_server(s.metrics_port, host=s.host)
        log.info(
            "serving",
            extra={
                "service": self.name,
                "port": self.port,
                "metrics_port": self.metrics_port,
                "tls": creds is not None,
            },
        )
        return self.port

    async def set_ready(self, ready: bool = True) -> None:
        """Flip health of "" and every service name to SERVING (or back)."""
        for service in ("", *self.service_names):
            await self.health_servicer.set(service, SERVING if ready else NOT_SERVING)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, then stop with a grace period for in-flight calls."""
        if self._server is None:
            return
        await self.health_servicer.enter_graceful_shutdown()
        await self._server.stop(self.settings.grace_seconds if grace is None else grace)
        self._server = None
        self._stopping.set()

    def request_stop(self) -> None:
        """Ask :meth:`serve_until_stopped` to shut down (signal handlers call this)."""
        self._stopping.set()

    async def serve_until_stopped(self) -> None:
        """Wait for SIGTERM/SIGINT (or :meth:`request_stop`), then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        await self._stopping.wait()
        log.info("shutting down", extra={"service": self.name, "grace_seconds": self.settings.grace_seconds})
        self._stopping.clear()
        await self.stop()


def announce(name: str, port: int, metrics_port: int | None) -> None:
    """Print the bound ports on stdout, one parseable line (scripts and tests read it)."""
    extra = f" metrics_port={metrics_port}" if metrics_port is not None else ""
    print(f"promptclimb {name} listening port={port}{extra}", flush=True)
