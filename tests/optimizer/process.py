"""Run ``promptclimb serve optimizer`` as a real process and read its announce line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ANNOUNCE = re.compile(r"promptclimb optimizer listening port=(\d+) metrics_port=(\d+)")


@dataclass
class ServedOptimizer:
    """A running optimizer process and its ports."""

    process: subprocess.Popen[str]
    port: int
    metrics_port: int

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait, and return the exit code and everything it wrote on stderr."""
        self.process.send_signal(signal.SIGTERM)
        try:
            _out, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _out, err = self.process.communicate()
        return self.process.returncode, err


def serve_optimizer(*flags: str, env: dict[str, str] | None = None, timeout: float = 60) -> ServedOptimizer:
    """Start the CLI with ``flags`` and wait for its announce line."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "promptclimb",
            "serve",
            "optimizer",
            "--port",
            "0",
            "--metrics-port",
            "0",
            *flags,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = ANNOUNCE.search(line)
        if match:
            return ServedOptimizer(process, int(match.group(1)), int(match.group(2)))
    process.kill()
    _out, err = process.communicate()
    raise AssertionError(f"optimizer did not announce itself; stderr:\n{err}")
