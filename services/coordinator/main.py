"""``promptclimb serve coordinator``: wiring of store, clients, runner and gRPC server."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from promptclimb.common.runner import run_service
from promptclimb.common.settings import add_server_arguments, server_flags, with_overrides
from services.coordinator.settings import CoordinatorSettings

if TYPE_CHECKING:
    from promptclimb.common.server import ServiceServer
    from services.coordinator.runner import SearchRunner

SERVICE_NAME = "promptclimb.api.v1.CoordinatorService"


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``serve coordinator``."""
    p = services.add_parser("coordinator", help="run the search coordinator (the public API)")
    add_server_arguments(p)
    p.add_argument("--scorer", help="scorer target: host:port, a comma list, or dns:///name:port")
    p.add_argument("--optimizer", help="optimizer target")
    p.add_argument("--store", help="SQLite file path or SQLAlchemy URL (default promptclimb.db)")
    p.add_argument("--lease-seconds", type=float, help="search lease (resume delay after a crash)")
    p.add_argument("--chunk-size", type=int, help="templates per scorer call")
    p.add_argument("--auth-token-file", help="file holding the bearer token callers must send")
    p.add_argument("--upstream-tls-ca", help="PEM CA of the scorer/optimizer certificates (TLS to them)")
    p.add_argument("--upstream-tls-cert", help="client certificate for mTLS to scorer/optimizer")
    p.add_argument("--upstream-tls-key", help="key of --upstream-tls-cert")
    p.add_argument("--upstream-tls-server-name", help="name expected in the upstream certificates")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    settings = with_overrides(
        CoordinatorSettings,
        **server_flags(args),
        scorer=args.scorer,
        optimizer=args.optimizer,
        store=args.store,
        lease_seconds=args.lease_seconds,
        chunk_size=args.chunk_size,
        auth_token_file=args.auth_token_file,
        upstream_tls_ca=args.upstream_tls_ca,
        upstream_tls_cert=args.upstream_tls_cert,
        upstream_tls_key=args.upstream_tls_key,
        upstream_tls_server_name=args.upstream_tls_server_name,
    )
    return run_service(settings, lambda: serve(settings))


def build_server(settings: CoordinatorSettings, runner: SearchRunner) -> ServiceServer:
    """The coordinator's gRPC server around ``runner`` (health, reflection, metrics, token check)."""
    from promptclimb.api.v1 import coordinator_pb2_grpc
    from promptclimb.common.auth import BearerTokenInterceptor
    from promptclimb.common.server import ServiceServer
    from services.coordinator.servicer import CoordinatorServicer

    servicer = CoordinatorServicer(runner)
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
    from services.coordinator.clients import GrpcProposer, GrpcScorer, RetryPolicy
    from services.coordinator.runner import SearchRunner
    from services.coordinator.store import SearchStore

    retry = RetryPolicy(max_attempts=settings.max_attempts, backoff_seconds=settings.backoff_seconds)
    store = SearchStore(settings.store)
    scorer = GrpcScorer(
        settings.scorer,
        chunk_size=settings.chunk_size,
        max_concurrent_chunks=settings.max_concurrent_chunks,
        deadline_seconds=settings.scorer_deadline_seconds,
        retry=retry,
        tls=settings.upstream_tls(),
        max_message_bytes=settings.max_message_bytes,
    )
    proposer = GrpcProposer(
        settings.optimizer,
        deadline_seconds=settings.optimizer_deadline_seconds,
        retry=retry,
        tls=settings.upstream_tls(),
        max_message_bytes=settings.max_message_bytes,
    )
    runner = SearchRunner(
        store,
        scorer,
        proposer,
        lease_seconds=settings.lease_seconds,
        max_running=settings.max_running_searches,
        owner=settings.replica_id,
    )
    server = build_server(settings, runner)
    port = await server.start()
    await runner.start()  # resumes unfinished searches whose lease is free
    await server.set_ready()
    announce("coordinator", port, server.metrics_port)
    try:
        await server.serve_until_stopped()
    finally:
        await runner.stop()
        await scorer.close()
        await proposer.close()
        store.close()
