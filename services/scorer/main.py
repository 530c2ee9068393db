"""``promptclimb serve scorer``: start the gRPC server, then load the model and datasets.

The server binds and announces its port first with health NOT_SERVING, so orchestrators and
clients can connect while the model loads; health turns SERVING once the model and every
registered dataset's features are ready.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from promptclimb.common.settings import add_server_arguments

log = logging.getLogger(__name__)


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``serve scorer``."""
    p = services.add_parser("scorer", help="score prompt templates with a CLIP model")
    add_server_arguments(p)
    p.add_argument("--model", help="open_clip model name, local-dir:PATH or hf-hub:ORG/REPO")
    p.add_argument("--pretrained", help="open_clip pretrained tag or a weights file")
    p.add_argument("--device", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument(
        "--dataset",
        action="append",
        metavar="ID=SOURCE",
        help="register a dataset (repeatable): ID=PATH (ImageFolder), ID=FILE.npz, "
        "ID=coop:split_json=FILE,root=DIR,shots=N,seed=S",
    )
    p.add_argument("--cache-dir", help="folder for cached image features")
    p.add_argument("--max-templates-per-request", type=int)
    p.add_argument("--max-queue-templates", type=int)
    p.add_argument("--batch-wait-ms", type=float)
    p.add_argument("--text-cache-size", type=int)
    p.add_argument("--text-truncation", choices=["auto", "off"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``serve scorer``."""
    from promptclimb.common.runner import run_service
    from promptclimb.common.settings import server_flags, with_overrides
    from services.scorer.settings import ScorerSettings

    settings = with_overrides(
        ScorerSettings,
        **server_flags(args),
        model=args.model,
        pretrained=args.pretrained,
        device=args.device,
        precision=args.precision,
        datasets=args.dataset,
        cache_dir=args.cache_dir,
        max_templates_per_request=args.max_templates_per_request,
        max_queue_templates=args.max_queue_templates,
        batch_wait_ms=args.batch_wait_ms,
        text_cache_size=args.text_cache_size,
        text_truncation=args.text_truncation,
        threads=args.threads,
    )
    failed: list[BaseException] = []
    code = run_service(settings, lambda: serve(settings, failed))
    return 1 if failed else code


async def serve(settings: Any, failed: list[BaseException] | None = None) -> None:
    """Run the scorer until SIGTERM; a model or dataset that fails to load ends the process."""
    from promptclimb.common.server import ServiceServer, announce
    from services.scorer import metrics
    from services.scorer.datasets import parse_dataset_spec
    from services.scorer.engine import ScoringEngine
    from services.scorer.servicer import SERVICE_NAME, register

    engine = ScoringEngine(settings)
    server = ServiceServer("scorer", settings, [SERVICE_NAME], lambda s: register(s, engine))
    await server.start()
    announce("scorer", server.port, server.metrics_port)
    metrics.MODEL_READY.set(0)

    async def load() -> None:
        try:
            specs = [parse_dataset_spec(s) for s in settings.datasets]
            await asyncio.to_thread(engine.load_model)
            for spec in specs:
                dataset = await asyncio.to_thread(engine.register, spec)
                log.info("dataset ready", extra={"dataset": dataset.id, "splits": len(dataset.splits)})
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
