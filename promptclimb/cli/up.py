"""``promptclimb up``: scorer, optimizer and coordinator as local processes until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from promptclimb.cli.extras import missing_extra
from promptclimb.local import LocalServices, start_local_services


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``up``."""
    up = commands.add_parser("up", help="run scorer, optimizer and coordinator locally (Ctrl-C stops all)")
    up.add_argument("--model", required=True, help="scorer model: open_clip name or local-dir:PATH")
    up.add_argument("--pretrained", help="open_clip pretrained tag or weights file")
    up.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="ID=SOURCE",
        help="dataset for the scorer (repeatable), as in `serve scorer`",
    )
    up.add_argument("--device", help="scorer torch device")
    up.add_argument("--llm-base-url", required=True, help="OpenAI-compatible endpoint for the optimizer")
    up.add_argument("--llm-model", required=True, help="LLM model name")
    up.add_argument("--llm-api-key-file", help="file holding the LLM API key")
    up.add_argument(
        "--state-dir", default=".promptclimb", help="SQLite store and feature cache (.promptclimb)"
    )
    up.add_argument("--port", type=int, default=50050, help="coordinator port (0 = any free; printed)")
    up.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for each service")
    up.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    if message := missing_extra("scorer"):
        print(f"promptclimb up: {message}", file=sys.stderr)
        return 2
    state = Path(args.state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    running: LocalServices | None = None
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        running = start_local_services(
            model=args.model,
            datasets=args.dataset,
            state=state,
            llm_base_url=args.llm_base_url,
            llm_model=args.llm_model,
            llm_api_key_file=args.llm_api_key_file,
            pretrained=args.pretrained,
            device=args.device,
            port=args.port,
            timeout=args.startup_timeout,
        )
        print(
            f"promptclimb up scorer={running.scorer} optimizer={running.optimizer} "
            f"coordinator={running.coordinator} store={running.store}",
            flush=True,
        )
        print(
            f"try: promptclimb search start --coordinator {running.coordinator} --dataset ID --wait",
            file=sys.stderr,
            flush=True,
        )
        while not stop["now"]:
            dead = running.dead()
            if dead:
                print(f"{', '.join(dead)} exited; stopping the others", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if running is not None:
            running.stop()
        for s, h in old.items():
            signal.signal(s, h)
