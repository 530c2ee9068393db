"""Shared helpers for the deploy tests: the repo layout and tools/check_deploy.py as a module."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
CHECK_DEPLOY = REPO / "tools" / "check_deploy.py"


def load_check_deploy() -> ModuleType:
    """tools/check_deploy.py imported by path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_deploy", CHECK_DEPLOY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_deploy"] = module
    spec.loader.exec_module(module)
    return module


def tool_or_skip(name: str) -> str:
    """Path of a tool (promtool, prometheus…); skip when absent unless PROMPTCLIMB_REQUIRE_TOOLS is set."""
    check_deploy = load_check_deploy()
    try:
        return str(check_deploy.find_tool(name, REPO))
    except FileNotFoundError as exc:
        if os.environ.get("PROMPTCLIMB_REQUIRE_TOOLS"):
            pytest.fail(f"{exc}; PROMPTCLIMB_REQUIRE_TOOLS is set")
        pytest.skip(str(exc))


def run_checks(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run tools/check_deploy.py against ``root`` and return the finished process."""
    return subprocess.run(
        [sys.executable, str(CHECK_DEPLOY), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """A throw-away repository root holding a copy of deploy/ that a test may break."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    return tmp_path
