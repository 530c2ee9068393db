"""The ``promptclimb`` command: one entry point, a subcommand per task.

Each command module registers its subcommands through an ``add_parsers(commands, services)``
function; this module only assembles them. Heavy imports (torch)
happen inside the commands, so ``promptclimb --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that contribute subcommands, in help order.
COMMAND_MODULES = [
    "promptclimb.cli.serve",  # serve scorer|optimizer|coordinator
    "promptclimb.cli.up",  # up
    "promptclimb.cli.search",  # search, eval
    "promptclimb.bench.scorer",  # bench scorer, bench concurrency
    "promptclimb.reproduce.command",  # reproduce
    "promptclimb.demo.command",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="promptclimb",
        description="Black-box prompt optimisation of CLIP with a chat LLM, as three gRPC services.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run one service (scorer, optimizer, coordinator)")
    services = serve.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.add_parsers(commands=commands, services=services)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
