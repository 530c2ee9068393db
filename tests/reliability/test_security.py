"""TLS, mutual TLS and the coordinator's bearer token; and no secret in any output.

Certificates are generated per session with the openssl CLI (tests/reliability/conftest.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc, optimizer_pb2_grpc, scorer_pb2_grpc
from promptclimb.client import CoordinatorClient
from promptclimb.common.channels import ClientTLS, open_channel
from promptclimb.common.server import ServiceServer
from promptclimb.export import search_to_dict
from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
from services.coordinator.settings import CoordinatorSettings
from tests.coordinator.fakes import FakeOptimizer, FakeScorer
from tests.reliability.conftest import Certs
from tests.support.coordinator import coordinator_in_process

SERVING = health_pb2.HealthCheckResponse.SERVING
TOKEN = "tok-3f9a1c-SECRET-MARKER"


async def health(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status


async def start_fake(certs: Certs, *, mtls: bool, servicer: object, add: object) -> ServiceServer:
    """A fake service behind the real ServiceServer, with TLS (and mTLS)."""
    settings = CoordinatorSettings(
        port=0, tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca if mtls else None
    )
    server = ServiceServer("fake", settings, ["fake"], lambda s: add(servicer, s))  # type: ignore[operator]
    await server.start()
    await server.set_ready()
    return server


async def start_fake_scorer(certs: Certs, *, mtls: bool) -> ServiceServer:
    return await start_fake(
        certs, mtls=mtls, servicer=FakeScorer(), add=scorer_pb2_grpc.add_ScorerServiceServicer_to_server
    )


async def test_tls_client_talks_to_tls_server_and_plaintext_is_refused(certs: Certs) -> None:
    server = await start_fake_scorer(certs, mtls=False)
    try:
        target = f"localhost:{server.port}"
        async with open_channel(target, tls_ca=certs.ca) as channel:
            assert await health(channel) == SERVING
        async with open_channel(f"127.0.0.1:{server.port}", tls_ca=certs.ca) as channel:
            assert await health(channel) == SERVING  # the certificate names the IP too
        for untrusted in (
            open_channel(target),  # plaintext
            open_channel(target, tls_ca=certs.other_ca),  # a CA that did not sign the server
            open_channel(target, tls_ca=certs.ca, tls_server_name="evil.example"),  # wrong name
        ):
            async with untrusted as channel:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await health(channel)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_mtls_needs_a_client_certificate(certs: Certs) -> None:
    server = await start_fake_scorer(certs, mtls=True)
    try:
        target = f"localhost:{server.port}"
        async with open_channel(target, tls_ca=certs.ca) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health(channel)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(ValueError):
            open_channel(target, tls_ca=certs.ca, tls_cert=certs.client_cert)  # a cert without its key
        async with open_channel(
            target, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key
        ) as channel:
            assert await health(channel) == SERVING
    finally:
        await server.stop(0)


@pytest.fixture
async def secured(tmp_path: Path, certs: Certs) -> AsyncIterator[int]:
    """A coordinator with TLS and a token, reaching a scorer and an optimizer over mTLS."""
    scorer_server = await start_fake_scorer(certs, mtls=True)
    optimizer_server = await start_fake(
        certs,
        mtls=True,
        servicer=FakeOptimizer(),
        add=optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server,
    )
    upstream = ClientTLS(certs.ca, certs.client_cert, certs.client_key)
    retry = RetryPolicy(max_attempts=2, backoff_seconds=0.01)
    scorer = GrpcScorer(f"localhost:{scorer_server.port}", deadline_seconds=5, retry=retry, tls=upstream)
    proposer = GrpcProposer(
        f"localhost:{optimizer_server.port}", deadline_seconds=5, retry=retry, tls=upstream
    )
    settings = CoordinatorSettings(
        port=0, tls_cert=certs.server_cert, tls_key=certs.server_key, auth_token=SecretStr(TOKEN)
    )
    try:
        async with coordinator_in_process(
            tmp_path / "s.db", scorer, proposer, lease_seconds=3, settings=settings
        ) as coordinator:
            yield coordinator.port
    finally:
        await scorer_server.stop(0)
        await optimizer_server.stop(0)


async def test_token_is_required_and_the_search_runs_over_mtls(secured: int, certs: Certs) -> None:
    target = f"localhost:{secured}"
    for token in ("", "wrong", TOKEN + "x", TOKEN[:-1]):
        async with CoordinatorClient(target, tls_ca=certs.ca, token=token) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.list()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in (err.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # a server stream is checked too
                async for _ in client.watch("searches/x"):
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with open_channel(target, tls_ca=certs.ca) as channel:
        assert await health(channel) == SERVING  # probes need no token
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        metadata = (("authorization", f"bearer {TOKEN}"),)  # the scheme is case-insensitive
        reply = await stub.ListSearches(coordinator_pb2.ListSearchesRequest(), metadata=metadata)
        assert list(reply.searches) == []
    async with CoordinatorClient(target, tls_ca=certs.ca, token=TOKEN) as client:
        search = await client.start(dataset="toy", pool="basic", iterations=2)
        done = await client.wait(search.name)
    assert coordinator_pb2.SearchState.Name(done.state) == "SEARCH_STATE_SUCCEEDED"
    assert len(done.history) >= 4  # the pool and the proposals, scored through the mTLS scorer


# ---- secrets never leak: a real multi-process stack ---------------------------------------------

LLM_KEY = "sk-LEAKCHECK-7d41e2b9c0"
STACK_TOKEN = "tok-LEAKCHECK-51c8aa03"


@pytest.mark.slow
async def test_secrets_never_in_logs_metrics_errors_or_exports(tmp_path: Path, certs: Certs) -> None:
    from bench.load import LocalStack, TLSFiles

    tls = TLSFiles(certs.ca, certs.server_cert, certs.server_key, certs.client_cert, certs.client_key)
    stack = LocalStack(tmp_path, llm_key=LLM_KEY, token=STACK_TOKEN, tls=tls, mtls=True, log_level="DEBUG")
    seen: list[str] = []
    with stack:
        async with stack.client() as client:
            search = await client.start(dataset="demo", pool="basic", iterations=2, templates_per_iteration=2)
            done = await client.wait(search.name)
            assert coordinator_pb2.SearchState.Name(done.state) == "SEARCH_STATE_SUCCEEDED", done.end_reason
            seen.append(json.dumps(search_to_dict(done)))
            failing = await client.start(dataset="no-such-dataset", pool="basic")
            failed = await client.wait(failing.name)
            seen.append(json.dumps(search_to_dict(failed)))
        for token in ("", "wrong", STACK_TOKEN[:-1]):
            async with stack.client(token=token) as intruder:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await intruder.list()
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                seen.append(str(err.value))
        # The LLM now refuses our key: the failed search's reason must quote neither key.
        assert stack.llm is not None
        stack.llm.api_key = "sk-other"
        async with stack.client() as client:
            refused = await client.wait((await client.start(dataset="demo", pool="basic", iterations=1)).name)
        assert coordinator_pb2.SearchState.Name(refused.state) == "SEARCH_STATE_FAILED"
        seen.append(refused.end_reason)
        seen.append(json.dumps(search_to_dict(refused)))
        seen.extend(stack.metrics_text(name) for name in stack.services)
    seen.extend(stack.logs().values())  # after SIGTERM: shutdown logs included
    with sqlite3.connect(tmp_path / "searches.db") as db:
        for table in ("searches", "scored_templates", "llm_calls", "events"):
            seen.append(repr(db.execute(f"SELECT * FROM {table}").fetchall()))
    everything = "\n".join(seen)
    assert "search ended" in everything and "promptclimb_scorer" in everything  # we did capture them
    assert "UNAUTHENTICATED" in refused.end_reason
    for secret in (LLM_KEY, STACK_TOKEN):
        for fragment in (secret, secret[-10:]):
            assert fragment not in everything, f"secret fragment {fragment!r} leaked"
