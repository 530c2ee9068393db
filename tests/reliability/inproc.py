"""Real servers on a background event loop, so synchronous hypothesis tests can call them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="server-loop")
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run ``coro`` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def health_status(channel: grpc.Channel, service: str = "") -> int:
    """The grpc.health.v1 status of ``service`` over a blocking channel."""
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


SERVING = health_pb2.HealthCheckResponse.SERVING


def wait_serving(channel: grpc.Channel, services: Sequence[str] = ("",), within: float = 60) -> None:
    """Poll health until every one of ``services`` says SERVING; fail after ``within`` seconds.

    Hostile tests start only then, so no answer of theirs can be the server still warming up.
    """
    deadline = time.monotonic() + within
    for service in services:
        while (status := _status_or_none(channel, service)) != SERVING:
            assert time.monotonic() < deadline, f"health of {service!r} never SERVING (last {status})"
            time.sleep(0.05)


def _status_or_none(channel: grpc.Channel, service: str) -> int | None:
    try:
        return health_status(channel, service)
    except grpc.RpcError:
        return None


def call(fn: Any, request: Any, timeout: float = 30, **kwargs: Any) -> grpc.StatusCode:
    """One blocking call; OK or the status code it ended with."""
    try:
        fn(request, timeout=timeout, **kwargs)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def raw_call(
    channel: grpc.Channel, method: str, payload: bytes, timeout: float = 30, *, stream: bool = False
) -> grpc.StatusCode:
    """Send ``payload`` as the request bytes of ``method`` (no client-side protobuf at all)."""
    try:
        if stream:
            for _ in channel.unary_stream(method)(payload, timeout=timeout):
                pass
        else:
            channel.unary_unary(method)(payload, timeout=timeout)
    except grpc.RpcError as err:
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
