"""``promptclimb serve optimizer``: settings -> backend -> optimizer -> gRPC server."""

from __future__ import annotations

import logging
from typing import Any

from promptclimb.common.runner import run_service
from promptclimb.common.server import ServiceServer, announce
from services.optimizer.settings import OptimizerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "promptclimb.api.v1.OptimizerService"


def build_server(settings: OptimizerSettings) -> tuple[ServiceServer, Any]:
    """The optimizer's gRPC server and its LLM backend (close it after stopping the server)."""
    from promptclimb.api.v1 import optimizer_pb2_grpc
    from services.optimizer.backend import BackendConfig, ChatBackend
    from services.optimizer.context import (
        DEFAULT_COMPLETION_RESERVE,
        DEFAULT_CONTEXT_TOKENS,
        ContextWindow,
        EndpointCounter,
    )
    from services.optimizer.core import Optimizer
    from services.optimizer.servicer import OptimizerServicer

    backend = ChatBackend(
        BackendConfig(
            model=settings.llm_model,
            base_url=settings.llm_base_url,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            timeout_seconds=settings.timeout_seconds,
            max_retries=settings.max_retries,
            backoff_initial_seconds=settings.backoff_initial_seconds,
            backoff_max_seconds=settings.backoff_max_seconds,
            retry_after_max_seconds=settings.retry_after_max_seconds,
            structured_output=settings.structured_output,
            max_tokens=settings.max_tokens,
            cache_dir=settings.cache_dir,
        )
    )
    window = ContextWindow(
        tokens=settings.llm_context_tokens or DEFAULT_CONTEXT_TOKENS,
        completion_tokens=settings.max_tokens or DEFAULT_COMPLETION_RESERVE,
        source="setting" if settings.llm_context_tokens else "default",
        discover=backend.server_context,
    )
    optimizer = Optimizer(
        backend,
        default_temperature=settings.temperature,
        max_template_chars=settings.max_template_chars,
        window=window,
        counter=EndpointCounter(backend),
    )
    servicer = OptimizerServicer(optimizer)
    server = ServiceServer(
        name="optimizer",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda s: optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server(servicer, s),
    )
    return server, backend


async def serve(settings: OptimizerSettings) -> None:
    """Run the optimizer until SIGTERM/SIGINT."""
    server, backend = build_server(settings)
    await server.start()
    # Ready at once: the service holds no model. An LLM that is down shows as UNAVAILABLE per call.
    await server.set_ready()
    announce("optimizer", server.port, server.metrics_port)
    if settings.probe_endpoint:
        reachable = await backend.probe()
        log.log(
            logging.INFO if reachable else logging.WARNING,
            "LLM endpoint reachable" if reachable else "LLM endpoint not reachable yet; calls will retry",
            extra={"endpoint": backend.endpoint, "model": settings.llm_model},
        )
    try:
        await server.serve_until_stopped()
    finally:
        await backend.close()


def run(settings: OptimizerSettings) -> int:
    """Serve until SIGTERM."""
    return run_service(settings, lambda: serve(settings))
