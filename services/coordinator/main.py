"""``promptclimb serve coordinator``: wiring of store, clients, runner and gRPC server."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from promptclimb.common.runner import run_service
from services.coordinator.settings import CoordinatorSettings

if TYPE_CHECKING:
    from promptclimb.common.server import ServiceServer
    from services.coordinator.models import ModelRegistry
    from services.coordinator.runner import SearchRunner

SERVICE_NAME = "promptclimb.api.v1.CoordinatorService"


def run(settings: CoordinatorSettings) -> int:
    """Serve until SIGTERM; 2 with one line on stderr when the store can not be used."""
    from services.coordinator.store import StoreRefused

    try:
        return run_service(settings, lambda: serve(settings))
    except StoreRefused as err:  # a message naming the store, not a traceback
        print(f"promptclimb serve coordinator: {err}", file=sys.stderr)
        return 2


def build_server(
    settings: CoordinatorSettings, runner: SearchRunner, models: ModelRegistry | None = None
) -> ServiceServer:
    """The coordinator's gRPC server around ``runner`` (health, reflection, metrics, token check)."""
    from promptclimb.api.v1 import coordinator_pb2_grpc
    from promptclimb.common.auth import BearerTokenInterceptor
    from promptclimb.common.server import ServiceServer
    from services.coordinator.servicer import CoordinatorServicer

    servicer = CoordinatorServicer(runner, models)
    token = settings.auth_token.get_secret_value() if settings.auth_token else None
    return ServiceServer(
        name="coordinator",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda s: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, s),
        interceptors=[BearerTokenInterceptor(token)] if token else [],
    )


async def serve(settings: CoordinatorSettings) -> None:
    """Run the coordinator until SIGTERM/SIGINT."""
    from promptclimb.common.server import announce
    from services.coordinator.async_store import AsyncSearchStore
    from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
    from services.coordinator.models import ModelRegistry
    from services.coordinator.runner import SearchRunner
    from services.coordinator.search_metrics import RUNNING_SEARCHES
    from services.coordinator.store import SearchStore

    retry = RetryPolicy(
        max_attempts=settings.max_attempts,
        backoff_seconds=settings.backoff_seconds,
        ready_wait_seconds=settings.scorer_ready_wait_seconds,
    )
    store = AsyncSearchStore(SearchStore(settings.store))  # every store call off the event loop
    models = ModelRegistry(
        settings.scorer_entries(),
        lambda target: GrpcScorer(
            target,
            chunk_size=settings.chunk_size,
            max_concurrent_chunks=settings.max_concurrent_chunks,
            deadline_seconds=settings.scorer_deadline_seconds,
            retry=retry,
            tls=settings.upstream_tls(),
            max_message_bytes=settings.max_message_bytes,
        ),
        check_seconds=settings.model_check_seconds,
    )
    proposer = GrpcProposer(
        settings.optimizer,
        deadline_seconds=settings.optimizer_deadline_seconds,
        retry=retry,
        tls=settings.upstream_tls(),
        max_message_bytes=settings.max_message_bytes,
        prices=settings.prices(),
    )
    runner = SearchRunner(
        store,
        models,  # the default model's scorer, and every model's for searches that name one
        proposer,
        lease_seconds=settings.lease_seconds,
        max_running=settings.max_running_searches,
        max_pending=settings.max_pending_searches,
        owner=settings.replica_id,
    )
    RUNNING_SEARCHES.track(runner)  # per-search series while each search runs here
    RUNNING_SEARCHES.stall_seconds = settings.search_stall_seconds
    server = build_server(settings, runner, models)
    port = await server.start()
    await models.start()  # which model each target serves (a down scorer does not stop the start)
    await runner.start()  # resumes unfinished searches whose lease is free
    await server.set_ready()
    announce("coordinator", port, server.metrics_port)
    try:
        await server.serve_until_stopped()
    finally:
        await runner.stop()
        await models.close()
        await proposer.close()
        await store.close()
