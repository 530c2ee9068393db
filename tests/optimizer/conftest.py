"""Fixtures for the optimizer: a scripted OpenAI-compatible server, backends, an in-process server."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc
from promptclimb.testing.fake_openai import FakeOpenAI
from services.optimizer.backend import BackendConfig, ChatBackend
from services.optimizer.domain import ProposalRequest, ScoredTemplate, Strategy
from services.optimizer.main import build_server
from services.optimizer.settings import OptimizerSettings

# Backoff small enough that a test with four retries takes milliseconds.
TINY_BACKOFF = {"backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.004}

HISTORY = [
    ScoredTemplate("a photo of a {}.", 0.62),
    ScoredTemplate("a drawing of a {}.", 0.41),
    ScoredTemplate("itap of a {}.", 0.55),
    ScoredTemplate("a close-up photo of the {}.", 0.70),
    ScoredTemplate("a blurry photo of a {}.", 0.38),
]


def make_request(strategy: Strategy = Strategy.CONTRAST, **overrides: object) -> ProposalRequest:
    """A fixed request over :data:`HISTORY`."""
    fields: dict[str, object] = {
        "strategy": strategy,
        "history": list(HISTORY),
        "num_templates": 2,
        "best_k": 2,
        "worst_k": 2,
        "task_description": "photos of clothing items (Fashion-MNIST)",
        "class_names": ["T-shirt", "Trouser", "Bag"],
    }
    fields.update(overrides)
    return ProposalRequest(**fields)  # type: ignore[arg-type]


def proto_request(
    strategy: int = common_pb2.STRATEGY_CONTRAST, **overrides: object
) -> optimizer_pb2.ProposePromptsRequest:
    """The same request as :func:`make_request`, as a message."""
    fields: dict[str, object] = {
        "strategy": strategy,
        "history": [common_pb2.ScoredTemplate(template=s.template, accuracy=s.accuracy) for s in HISTORY],
        "num_templates": 2,
        "best_k": 2,
        "worst_k": 2,
        "task_description": "photos of clothing items (Fashion-MNIST)",
        "class_names": ["T-shirt", "Trouser", "Bag"],
    }
    fields.update(overrides)
    return optimizer_pb2.ProposePromptsRequest(**fields)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    """A scripted chat-completions server on loopback."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def make_backend(fake: FakeOpenAI) -> AsyncIterator[Callable[..., ChatBackend]]:
    """Backends against ``fake`` with tiny backoff; closed after the test."""
    made: list[ChatBackend] = []

    def factory(**overrides: object) -> ChatBackend:
        config: dict[str, object] = {
            "model": "fake-model",
            "base_url": fake.base_url,
            "api_key": "sk-test-key",
            "timeout_seconds": 5.0,
            "max_retries": 2,
            **TINY_BACKOFF,
        }
        config.update(overrides)
        made.append(ChatBackend(BackendConfig(**config)))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for backend in made:
        await backend.close()


OptimizerStub = optimizer_pb2_grpc.OptimizerServiceStub


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., object]]:
    """Start an in-process optimizer server; returns (stub, channel, server)."""
    started = []

    async def start(**settings: object) -> tuple[OptimizerStub, grpc.aio.Channel, object]:
        values: dict[str, object] = {"port": 0, "probe_endpoint": False, **TINY_BACKOFF, **settings}
        server, backend = build_server(OptimizerSettings(**values))  # type: ignore[arg-type]
        await server.start()
        await server.set_ready()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, backend, channel))
        return OptimizerStub(channel), channel, server

    yield start
    for server, backend, channel in started:
        await channel.close()
        await server.stop(0)
        await backend.close()
