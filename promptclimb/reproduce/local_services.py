"""``--start-services``: one optimizer, and per backbone a scorer and a coordinator, on this machine."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Sequence
from pathlib import Path

from promptclimb.local import start_service, stop_services
from promptclimb.reproduce.catalogue import ReproduceError
from promptclimb.reproduce.driver import Endpoints


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


def _launch(name: str, argv: list[str], timeout: float, log_path: Path) -> tuple[subprocess.Popen[str], int]:
    """Start ``promptclimb serve NAME …`` logging to ``log_path``; wait until it serves: (proc, port)."""
    with log_path.open("a") as log:
        try:
            return start_service(name, argv, timeout, log)
        except RuntimeError as err:
            raise ReproduceError(f"{err}; see {log_path}") from err


def start_services(
    args: argparse.Namespace, backbones: Sequence[str], state: Path
) -> tuple[dict[str, Endpoints], list[tuple[str, subprocess.Popen[str]]]]:
    """One optimizer, and per backbone a scorer and a coordinator (its own SQLite store in ``state``)."""
    model_map = parse_model_map(args.model_map)
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    endpoints: dict[str, Endpoints] = {}
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "services.log"
    try:
        optimizer_argv = ["--llm-base-url", args.llm_base_url, "--llm-model", args.llm_model, "--port", "0"]
        if args.llm_api_key_file:
            optimizer_argv += ["--llm-api-key-file", args.llm_api_key_file]
        proc, optimizer_port = _launch("optimizer", optimizer_argv, args.startup_timeout, log_path)
        procs.append(("optimizer", proc))
        for backbone in backbones:
            folder = state / backbone.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            model, pretrained = model_of(backbone, model_map)
            scorer_argv = ["--model", model, "--port", "0", "--cache-dir", str(state / "features")]
            if pretrained:
                scorer_argv += ["--pretrained", pretrained]
            if args.device:
                scorer_argv += ["--device", args.device]
            proc, scorer_port = _launch("scorer", scorer_argv, args.startup_timeout, log_path)
            procs.append((f"scorer {backbone}", proc))
            coordinator_argv = [
                "--scorer", f"127.0.0.1:{scorer_port}", "--optimizer", f"127.0.0.1:{optimizer_port}",
                "--store", str(folder / "searches.db"), "--port", "0",
                "--lease-seconds", str(args.lease_seconds),
            ]  # fmt: skip
            proc, coordinator_port = _launch("coordinator", coordinator_argv, args.startup_timeout, log_path)
            procs.append((f"coordinator {backbone}", proc))
            endpoints[backbone] = Endpoints(f"127.0.0.1:{scorer_port}", f"127.0.0.1:{coordinator_port}")
    except BaseException:
        stop_services(procs)
        raise
    return endpoints, procs
