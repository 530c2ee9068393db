"""``--start-services``: one optimizer, a scorer per backbone and one coordinator, on this machine."""

from __future__ import annotations

import argparse
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from promptclimb.local import start_service, stop_services
from promptclimb.reproduce.catalogue import ReproduceError
from promptclimb.reproduce.driver import Services


def parse_model_map(values: Sequence[str]) -> dict[str, tuple[str, str | None]]:
    """``NAME=MODEL[@PRETRAINED]`` or ``NAME=local-dir:PATH`` → {NAME: (model, pretrained)}."""
    out: dict[str, tuple[str, str | None]] = {}
    for value in values:
        name, sep, model = value.partition("=")
        if not sep or not name or not model:
            raise ReproduceError(f"--model-map {value!r} is not BACKBONE=MODEL[@PRETRAINED]")
        if model.startswith("local-dir:"):
            out[name] = (model, None)
        else:
            m, _, pretrained = model.partition("@")
            out[name] = (m, pretrained or None)
    return out


def model_of(backbone: str, model_map: dict[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    """The open_clip model and pretrained tag a backbone name stands for (default: NAME with ``openai``)."""
    return model_map.get(backbone, (backbone, "openai"))


def model_slug(backbone: str) -> str:
    """The model id a started scorer serves ``backbone`` under, e.g. ``ViT-B/16`` -> ``vit-b-16``."""
    from services.coordinator.settings import MODEL_ID  # the ids the coordinator accepts

    slug = re.sub(r"[^a-z0-9._-]+", "-", backbone.lower()).strip("-._")[:63]
    if not MODEL_ID.fullmatch(slug):
        raise ReproduceError(f"backbone {backbone!r} gives no valid model id ({slug!r})")
    return slug


def _launch(name: str, argv: list[str], timeout: float, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``promptclimb serve NAME …`` logging to ``log_path``; wait until it serves: (proc, port)."""
    with log_path.open("a") as log:
        try:
            return start_service(name, argv, timeout, log)
        except RuntimeError as err:
            raise ReproduceError(f"{err}; see {log_path}") from err


def start_services(
    args: argparse.Namespace, backbones: Sequence[str], state: Path
) -> tuple[Services, list[tuple[str, subprocess.Popen[str]]]]:
    """One optimizer, a scorer per backbone (model id: :func:`model_slug`) and one coordinator.

    The coordinator serves every backbone as a model (``--scorer ID=TARGET`` each), runs
    ``args.parallel`` searches at once and keeps them in ``state/searches.db``.
    """
    model_map = parse_model_map(args.model_map)
    ids = {b: model_slug(b) for b in backbones}
    if len(set(ids.values())) != len(ids):
        raise ReproduceError(f"backbones {list(ids)} give the same model id twice: {list(ids.values())}")
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    scorers: dict[str, str] = {}
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "services.log"
    try:
        optimizer_argv = ["--llm-base-url", args.llm_base_url, "--llm-model", args.llm_model, "--port", "0"]
        if args.llm_api_key_file:
            optimizer_argv += ["--llm-api-key-file", args.llm_api_key_file]
        proc, optimizer_port = _launch("optimizer", optimizer_argv, args.startup_timeout, log_path)
        procs.append(("optimizer", proc))
        for backbone in backbones:
            model, pretrained = model_of(backbone, model_map)
            scorer_argv = [
                "--model", model, "--model-id", ids[backbone], "--port", "0",
                "--cache-dir", str(state / "features"),
            ]  # fmt: skip
            if pretrained:
                scorer_argv += ["--pretrained", pretrained]
            if args.device:
                scorer_argv += ["--device", args.device]
            proc, scorer_port = _launch("scorer", scorer_argv, args.startup_timeout, log_path)
            procs.append((f"scorer {backbone}", proc))
            scorers[backbone] = f"127.0.0.1:{scorer_port}"
        coordinator_argv = [
            *(arg for b in backbones for arg in ("--scorer", f"{ids[b]}={scorers[b]}")),
            "--optimizer", f"127.0.0.1:{optimizer_port}", "--store", str(state / "searches.db"),
            "--port", "0", "--lease-seconds", str(args.lease_seconds),
            "--max-running-searches", str(max(1, args.parallel)),
        ]  # fmt: skip
        proc, coordinator_port = _launch("coordinator", coordinator_argv, args.startup_timeout, log_path)
        procs.append(("coordinator", proc))
    except BaseException:
        stop_services(procs)
        raise
    return Services(f"127.0.0.1:{coordinator_port}", scorers), procs
