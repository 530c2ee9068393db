"""``pip install promptclimb`` without extras: the client, CLI, coordinator and optimizer, no torch.

A fresh virtual environment gets ``pip install .`` exactly as a user who only calls the coordinator
would run it; the scorer's packages must not come along, and the scorer's command must say which
extra to install instead of a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(argv: list[str | Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env, cwd="/"
    )


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    installed = _run([venv / "bin/python", "-m", "pip", "install", "-q", ROOT], timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_torch_is_not_installed(core_venv: Path) -> None:
    for module in ("torch", "torchvision", "open_clip"):
        probe = _run([core_venv / "bin/python", "-c", f"import {module}"])
        assert probe.returncode != 0
        assert f"No module named '{module}'" in probe.stderr


@pytest.mark.parametrize(
    "argv",
    [["search", "--help"], ["serve", "coordinator", "--help"], ["serve", "optimizer", "--help"]],
)
def test_client_commands_work(core_venv: Path, argv: list[str]) -> None:
    shown = _run([core_venv / "bin/promptclimb", *argv])
    assert shown.returncode == 0, shown.stderr
    assert "usage: promptclimb" in shown.stdout


def test_client_imports(core_venv: Path) -> None:
    probe = _run(
        [core_venv / "bin/python", "-c", "from promptclimb.client import CoordinatorClient; print('ok')"]
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "ok"


def test_scorer_names_its_extra(core_venv: Path) -> None:
    served = _run([core_venv / "bin/promptclimb", "serve", "scorer"])
    assert served.returncode != 0
    assert "promptclimb[scorer]" in served.stderr
    assert "Traceback" not in served.stderr
