"""``promptclimb serve optimizer``: settings -> backend -> optimizer -> gRPC server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from promptclimb.common.runner import run_service
from promptclimb.common.server import ServiceServer, announce
from promptclimb.common.settings import add_server_arguments, server_flags, with_overrides
from services.optimizer.settings import OptimizerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "promptclimb.api.v1.OptimizerService"


def build_server(settings: OptimizerSettings) -> tuple[ServiceServer, Any]:
    """The optimizer's gRPC server and its LLM backend (close it after stopping the server)."""
    from promptclimb.api.v1 import optimizer_pb2_grpc
    from services.optimizer.backend import BackendConfig, ChatBackend
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
    optimizer = Optimizer(
        backend, default_temperature=settings.temperature, max_template_chars=settings.max_template_chars
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


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from(args)
    except ValidationError as exc:
        print(f"promptclimb serve optimizer: invalid settings: {exc}", file=sys.stderr)
        return 2
    return run_service(settings, lambda: serve(settings))


def _settings_from(args: argparse.Namespace) -> OptimizerSettings:
    return with_overrides(
        OptimizerSettings,
        **server_flags(args),
        llm_base_url=args.llm_base_url,
        llm_model=args.llm_model,
        llm_api_key_file=args.llm_api_key_file,
        temperature=args.temperature,
        timeout_seconds=args.timeout,
        max_retries=args.max_retries,
        structured_output=args.structured_output,
        cache_dir=args.cache_dir,
    )


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``serve optimizer``."""
    del commands  # the optimizer adds no top-level command
    p = services.add_parser(
        "optimizer",
        help="run the optimizer service (chat-LLM template proposals)",
        description="Serve OptimizerService.ProposePrompts against an OpenAI-compatible chat endpoint. "
        "Every flag also reads from PROMPTCLIMB_OPTIMIZER_<NAME>; the API key from "
        "--llm-api-key-file, PROMPTCLIMB_OPTIMIZER_LLM_API_KEY or OPENAI_API_KEY.",
    )
    add_server_arguments(p)
    p.add_argument("--llm-base-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--llm-model", help="model name sent with each request")
    p.add_argument("--llm-api-key-file", type=Path, help="file holding the API key (mounted secret)")
    p.add_argument("--temperature", type=float, help="default sampling temperature (1.0)")
    p.add_argument("--timeout", type=float, help="seconds per LLM request (60)")
    p.add_argument("--max-retries", type=int, help="retries on 429/5xx/timeouts (4)")
    p.add_argument(
        "--structured-output",
        choices=["auto", "json_schema", "json_object", "off"],
        help="response_format dialect for JSON replies (auto: try each, then plain text)",
    )
    p.add_argument("--cache-dir", type=Path, help="on-disk response cache (off unless given)")
    p.set_defaults(func=_run)
