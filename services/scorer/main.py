"""``promptclimb serve scorer``: start the gRPC server, then load the model and datasets.

The server binds and announces its port first with health NOT_SERVING, so orchestrators and
clients can connect while the model loads; health turns SERVING once the model and every
registered dataset's features are ready.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from services.scorer.settings import ScorerSettings

if TYPE_CHECKING:
    from promptclimb.common.server import ServiceServer
    from services.scorer.engine import ScoringEngine

log = logging.getLogger(__name__)


def run(settings: ScorerSettings) -> int:
    """Serve until SIGTERM; exit code 1 when the model or a dataset failed to load."""
    from promptclimb.common.runner import run_service

    failed: list[BaseException] = []
    code = run_service(settings, lambda: serve(settings, failed))
    return 1 if failed else code


def build_server(settings: ScorerSettings, engine: ScoringEngine) -> ServiceServer:
    """The scorer's gRPC server around ``engine`` (health, reflection, metrics); not started."""
    from promptclimb.common.server import ServiceServer
    from services.scorer.servicer import SERVICE_NAME, register

    return ServiceServer(
        name="scorer",
        settings=settings,
        service_names=[SERVICE_NAME],
        register=lambda s: register(s, engine),
    )


async def serve(settings: ScorerSettings, failed: list[BaseException] | None = None) -> None:
    """Run the scorer until SIGTERM; a model or dataset that fails to load ends the process."""
    from promptclimb.common.server import announce
    from services.scorer import metrics
    from services.scorer.datasets import parse_dataset_spec
    from services.scorer.engine import ScoringEngine

    metrics.bind_model(settings.resolved_model_id())
    engine = ScoringEngine(settings)
    engine.starting = True  # from the first call on: ListDatasets answers UNAVAILABLE until loaded
    server = build_server(settings, engine)
    await server.start()
    announce("scorer", server.port, server.metrics_port)
    metrics.MODEL_READY.set(0)

    async def load() -> None:
        try:
            specs = [parse_dataset_spec(s) for s in settings.datasets]
            engine.starting = True  # until every start-up dataset is in: health stays NOT_SERVING
            await asyncio.to_thread(engine.load_model)
            for spec in specs:
                dataset = await asyncio.to_thread(engine.register, spec)
                log.info("dataset ready", extra={"dataset": dataset.id, "splits": len(dataset.splits)})
            engine.starting = False
        except Exception as exc:
            log.exception("scorer failed to load")
            print(f"promptclimb scorer: failed to load: {exc}", file=sys.stderr, flush=True)
            if failed is not None:
                failed.append(exc)
            server.request_stop()
            return
        await server.set_ready(True)
        metrics.MODEL_READY.set(1)
        log.info("scorer ready")

    loader = asyncio.create_task(load())
    try:
        await server.serve_until_stopped()
    finally:
        metrics.MODEL_READY.set(0)
        loader.cancel()
        await engine.close()
