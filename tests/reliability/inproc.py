"""Real servers on a background event loop, so synchronous hypothesis tests can call them."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
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


def chosen_by_request(replies: Sequence[str]) -> Callable[[dict[str, Any]], str]:
    """A fake LLM's reply function: one of ``replies`` chosen by the request's content (stable)."""

    def reply(body: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
        return replies[digest[0] % len(replies)]

    return reply


@contextmanager
def optimizer_on_fake_llm(reply: Callable[[dict[str, Any]], str]) -> Iterator[grpc.Channel]:
    """A real optimizer server on a background loop, its LLM a FakeOpenAI answering ``reply``.

    Yields a blocking channel (64 MiB sends, for huge hostile requests) once health is SERVING.
    """
    from promptclimb.testing.fake_openai import FakeOpenAI
    from services.optimizer.main import SERVICE_NAME, build_server
    from services.optimizer.settings import OptimizerSettings

    with FakeOpenAI(default=reply) as llm:
        settings = OptimizerSettings(
            port=0,
            llm_base_url=llm.base_url,
            llm_model="fake-model",
            probe_endpoint=False,
            max_retries=0,
            timeout_seconds=10,
            max_message_bytes=4 * 1024 * 1024,
        )
        loop = LoopThread()
        server, backend = build_server(settings)
        port = loop.run(server.start())
        loop.run(server.set_ready())
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            wait_serving(channel, ["", SERVICE_NAME])
            yield channel
        loop.run(server.stop(0))
        loop.run(backend.close())
        loop.close()
