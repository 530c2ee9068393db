"""``promptclimb serve SERVICE``: settings from flags and environment, then the service's ``run``.

The flags come from each service's settings class (one field, one flag, its help text), and this
module imports a service only once its command runs, so ``promptclimb --help`` and the serve
commands of the torch-free services work without the ``scorer`` extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from promptclimb.cli.extras import missing_extra
from promptclimb.common.settings import add_settings_arguments, settings_from_args


@dataclass(frozen=True)
class ServeCommand:
    """One ``serve`` subcommand: where its settings and its ``run(settings) -> int`` live."""

    name: str
    help: str
    description: str
    settings: str  # "module:Class"
    main: str  # module with run(settings) -> int
    extra: str | None = None  # the pip extra whose packages it needs

    def settings_class(self) -> Any:
        module, _, cls = self.settings.partition(":")
        return getattr(importlib.import_module(module), cls)


SERVE_COMMANDS = (
    ServeCommand(
        "scorer",
        "score prompt templates with a CLIP model",
        "Serve ScorerService (EvaluatePrompts and friends) with one open_clip model. "
        "Every flag also reads from PROMPTCLIMB_SCORER_<NAME>.",
        "services.scorer.settings:ScorerSettings",
        "services.scorer.main",
        extra="scorer",
    ),
    ServeCommand(
        "optimizer",
        "run the optimizer service (chat-LLM template proposals)",
        "Serve OptimizerService.ProposePrompts against an OpenAI-compatible chat endpoint. "
        "Every flag also reads from PROMPTCLIMB_OPTIMIZER_<NAME>; the API key from "
        "--llm-api-key-file, PROMPTCLIMB_OPTIMIZER_LLM_API_KEY or OPENAI_API_KEY.",
        "services.optimizer.settings:OptimizerSettings",
        "services.optimizer.main",
    ),
    ServeCommand(
        "coordinator",
        "run the search coordinator (the public API)",
        "Serve CoordinatorService (StartSearch, GetSearch, WatchSearch…) over a SQLite file or any "
        "SQLAlchemy URL. Every flag also reads from PROMPTCLIMB_COORDINATOR_<NAME>; the bearer "
        "token from --auth-token-file or PROMPTCLIMB_COORDINATOR_AUTH_TOKEN.",
        "services.coordinator.settings:CoordinatorSettings",
        "services.coordinator.main",
    ),
)


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``serve scorer``, ``serve optimizer`` and ``serve coordinator``."""
    del commands  # only `serve` subcommands here
    for command in SERVE_COMMANDS:
        p = services.add_parser(command.name, help=command.help, description=command.description)
        add_settings_arguments(p, command.settings_class())
        p.set_defaults(func=lambda args, command=command: _serve(command, args))


def _serve(command: ServeCommand, args: argparse.Namespace) -> int:
    if command.extra and (message := missing_extra(command.extra)):
        print(f"promptclimb serve {command.name}: {message}", file=sys.stderr)
        return 2
    try:
        settings = settings_from_args(command.settings_class(), args)
    except ValidationError as exc:
        print(f"promptclimb serve {command.name}: invalid settings: {exc}", file=sys.stderr)
        return 2
    return int(importlib.import_module(command.main).run(settings))
