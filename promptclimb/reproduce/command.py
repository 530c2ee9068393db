"""The ``promptclimb reproduce`` command: flags → discovery → plan → services → run → tables."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from promptclimb.local import stop_services
from promptclimb.reproduce.catalogue import COOP_DATASETS, ReproduceError, discover
from promptclimb.reproduce.cells import ResultsStore
from promptclimb.reproduce.driver import Plan, Services, log_line, model_ids, plan_records, run_plan
from promptclimb.reproduce.local_services import start_services
from promptclimb.reproduce.profiles import PROFILES
from promptclimb.reproduce.tables import write_tables


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _scorers(values: Sequence[str], backbones: Sequence[str]) -> dict[str, str]:
    """``--scorer BACKBONE=TARGET`` values; a single bare TARGET is allowed with one backbone."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, target = value.partition("=")
        if not sep:
            if len(backbones) != 1 or len(values) != 1:
                raise ReproduceError(
                    f"--scorer {value!r}: give BACKBONE=TARGET when several backbones are listed"
                )
            name, target = backbones[0], value
        out[name.strip()] = target.strip()
    missing = [b for b in backbones if b not in out]
    if missing:
        raise ReproduceError(f"--scorer: no target for backbones {missing}")
    return out


def _coordinator(values: Sequence[str]) -> str:
    """The one ``--coordinator TARGET`` every backbone searches through."""
    if not values:
        raise ReproduceError("give the coordinator (--coordinator TARGET) or --start-services")
    if len(values) > 1 or "=" in values[0]:
        raise ReproduceError(
            f"--coordinator {' '.join(values)!r}: give one TARGET; every backbone searches through one "
            "coordinator, which serves each backbone's scorer as a model (serve it with "
            "--scorer MODEL_ID=TARGET per backbone)"
        )
    return values[0].strip()


def add_parsers(commands: Any, services: Any) -> None:
    """Register the top-level ``reproduce`` command."""
    p = commands.add_parser(
        "reproduce",
        help="the paper's table: every CoOp dataset × seed × backbone, resumable",
        description=(
            "Run one search per (dataset, seed, backbone) over the datasets found in CoOp's layout under "
            "--data-root and write results.csv, transfer.csv, cells.csv and results.md into --out. "
            "Give one coordinator serving every backbone as a model (--coordinator TARGET) and each "
            "backbone's scorer (--scorer BACKBONE=TARGET), or let the command start them "
            "(--start-services with --llm-base-url/--llm-model). --parallel searches run at once; "
            "rerunning skips finished cells. See docs/REPRODUCE.md."
        ),
    )
    p.add_argument(
        "--data-root", type=Path, required=True, help="CoOp's DATA folder (one subfolder per dataset)"
    )
    p.add_argument("--backbones", default="RN50", help="comma list of open_clip model names (RN50)")
    p.add_argument("--shots", type=int, default=1, help="training images per class (1)")
    p.add_argument("--seeds", default="1,2,3", help="comma list of CoOp sampling seeds (1,2,3)")
    p.add_argument("--datasets", help=f"comma list, default all found: {','.join(COOP_DATASETS)}")
    p.add_argument("--out", type=Path, required=True, help="results folder (cells.jsonl makes reruns resume)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="paper", help="search protocol (paper)")
    p.add_argument("--iterations", type=int, help="override the profile's iterations")
    p.add_argument("--restarts", type=int, help="override the profile's restarts")
    p.add_argument("--templates-per-iteration", type=int, help="override the profile's templates per call")
    p.add_argument("--pool", help="override the profile's initial pool (basic, clip80)")
    p.add_argument("--parallel", type=int, default=2, help="searches submitted at once (2)")
    g = p.add_argument_group("running services")
    g.add_argument(
        "--scorer",
        action="append",
        default=[],
        metavar="BACKBONE=TARGET",
        help="scorer per backbone (datasets are registered on it; its model id must be a model of "
        "the coordinator)",
    )
    g.add_argument(
        "--coordinator",
        action="append",
        default=[],
        metavar="TARGET",
        help="the coordinator, serving every backbone's scorer as a model (--scorer MODEL_ID=TARGET each)",
    )
    g = p.add_argument_group("local services (--start-services)")
    g.add_argument(
        "--start-services",
        action="store_true",
        help="start an optimizer, a scorer per backbone and one coordinator serving them all",
    )
    g.add_argument(
        "--model-map",
        action="append",
        default=[],
        metavar="BACKBONE=MODEL",
        help="model of a backbone: local-dir:PATH or NAME@PRETRAINED (default: BACKBONE@openai)",
    )
    g.add_argument("--device", help="scorer torch device (cuda in production)")
    g.add_argument("--llm-base-url", help="OpenAI-compatible endpoint for the optimizer")
    g.add_argument("--llm-model", help="LLM model name")
    g.add_argument("--llm-api-key-file", help="file holding the LLM API key")
    g.add_argument(
        "--lease-seconds", type=float, default=30.0, help="coordinator lease (resume delay after a kill)"
    )
    g.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for each service")
    p.set_defaults(func=_reproduce)


def _reproduce(args: argparse.Namespace) -> int:
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        backbones = _csv_list(args.backbones)
        seeds = [int(s) for s in _csv_list(args.seeds)]
        if not backbones or not seeds or len(set(backbones)) != len(backbones):
            raise ReproduceError("--backbones and --seeds must list distinct values")
        if args.parallel < 1:
            raise ReproduceError("--parallel must be at least 1")
        out: Path = args.out.expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        found = discover(args.data_root, _csv_list(args.datasets) if args.datasets else None, out / "splits")
        overrides = {
            k: getattr(args, k)
            for k in ("iterations", "restarts", "templates_per_iteration", "pool")
            if getattr(args, k) is not None
        }
        plan = Plan(found, backbones, args.shots, seeds, PROFILES[args.profile], overrides)
        store = ResultsStore(out / "cells.jsonl")
        todo = [c for c in plan.cells() if c.key not in store]
        log_line(
            sys.stderr,
            f"reproduce: {len(found)} datasets ({', '.join(d.info.name for d in found)}), "
            f"{len(plan.cells())} cells, {len(todo)} to run, profile {plan.profile.name}",
        )
        if args.start_services:
            if args.scorer or args.coordinator:
                raise ReproduceError("--start-services starts its own services: drop --scorer/--coordinator")
            if not (args.llm_base_url and args.llm_model):
                raise ReproduceError("--start-services needs --llm-base-url and --llm-model")
            services, procs = start_services(args, backbones, out / "services")
        else:
            services = Services(_coordinator(args.coordinator), _scorers(args.scorer, backbones))
        failed = asyncio.run(_run(plan, services, store, args.parallel))
        names = [d.info.name for d in found]
        write_tables(out, plan_records(plan, store), names, backbones, plan.profile, plan.shots, seeds)
        log_line(sys.stderr, f"wrote {out / 'results.md'}")
        if failed:
            log_line(sys.stderr, f"{len(failed)} cells failed; rerun the same command to retry them")
            return 1
        return 0
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        stop_services(procs)


async def _run(plan: Plan, services: Services, store: ResultsStore, parallel: int) -> list[str]:
    models = await model_ids(services, plan.backbones)
    log_line(
        sys.stderr,
        f"coordinator {services.coordinator}: "
        + ", ".join(f"{b} as model {m}" for b, m in models.items())
        + f"; {parallel} searches at a time",
    )
    return await run_plan(plan, services, models, store, parallel=parallel)
