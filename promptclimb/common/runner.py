"""Running an async service entry point from the CLI with logging configured."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from promptclimb.common.logs import configure_logging
from promptclimb.common.settings import ServerSettings


def run_service(settings: ServerSettings, serve: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Configure logging from ``settings`` and run ``serve()`` until it returns."""
    configure_logging(settings.log_level, settings.log_json)
    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0
