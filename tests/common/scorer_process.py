"""Start ``promptclimb serve scorer`` as a real subprocess and talk to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
ANNOUNCE = re.compile(r"promptclimb scorer listening port=(\d+) metrics_port=(\d+)")


@dataclass
class ScorerProcess:
    """A running scorer: its process, ports and captured stderr lines."""

    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    stderr: list[str] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def health(self, service: str = "") -> int:
        """Health/Check status of ``service`` (an enum value)."""
        with grpc.insecure_channel(self.target) as ch:
            return (
                health_pb2_grpc.HealthStub(ch)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                .status
            )

    def wait_serving(self, timeout: float = 60) -> None:
        """Block until health "" is SERVING."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("scorer exited:\n" + "".join(self.stderr[-30:]))
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise AssertionError("scorer never became SERVING:\n" + "".join(self.stderr[-30:]))

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_scorer(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> ScorerProcess:
    """Run ``python -m promptclimb serve scorer ARGS`` and wait for its announce line."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROMPTCLIMB_SCORER_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptclimb", "serve", "scorer", "--port", "0", "--metrics-port", "0", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = ANNOUNCE.search(line)
        if m:
            return ScorerProcess(proc, int(m.group(1)), int(m.group(2)), stderr)
    proc.kill()
    proc.wait()
    time.sleep(0.2)
    raise AssertionError("scorer did not announce its port:\n" + "".join(stderr[-30:]))
