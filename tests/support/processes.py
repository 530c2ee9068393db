"""One way for the tests to run ``promptclimb serve NAME`` (and other children) as real processes.

:func:`test_env` is the environment every child gets (offline model hub, one CPU thread, the
checkout on ``PYTHONPATH``); :func:`serve` starts a service, reads its announce line and keeps its
stderr, so a test can assert on health, ports, exit codes and logs.
"""

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

ROOT = Path(__file__).resolve().parents[2]
_ANNOUNCE = re.compile(r"promptclimb (\w+) listening port=(\d+)(?: metrics_port=(\d+))?")


def test_env(**overrides: str) -> dict[str, str]:
    """Our environment plus what every test child needs: no hub downloads, one thread, the checkout."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "PROMPTCLIMB_SCORER_THREADS": "1",
        **overrides,
    }


test_env.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test, despite its name


@dataclass
class ServedProcess:
    """A running ``promptclimb serve NAME``: its process, ports and the stderr lines read so far."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int | None
    stderr: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        """Its gRPC address on loopback."""
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything it wrote on stderr so far (all of it once :meth:`stop` returned)."""
        return "".join(self.stderr)

    def health(self, service: str = "") -> int:
        """grpc.health.v1 Check status of ``service`` (an enum value)."""
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def wait_serving(self, timeout: float = 60) -> None:
        """Block until health "" is SERVING; fail with its last log lines if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n" + "".join(self.stderr[-30:]))
            if self.health() == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} never became SERVING:\n" + "".join(self.stderr[-30:]))

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait (SIGKILL after ``timeout``), finish reading stderr; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code


def serve(
    name: str, *flags: str, env: dict[str, str] | None = None, timeout: float = 60, metrics: bool = True
) -> ServedProcess:
    """Run ``python -m promptclimb serve NAME --port 0 [--metrics-port 0] FLAGS`` until it announces."""
    argv = [sys.executable, "-m", "promptclimb", "serve", name, "--port", "0"]
    argv += ["--metrics-port", "0"] if metrics else []
    proc = subprocess.Popen(
        [*argv, *flags],
        cwd=ROOT,
        env=test_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break  # it exited
        m = _ANNOUNCE.search(line)
        if m and m.group(1) == name:
            metrics_port = int(m.group(3)) if m.group(3) else None
            return ServedProcess(name, proc, int(m.group(2)), metrics_port, stderr, reader)
    proc.kill()
    proc.wait()
    reader.join(timeout=10)
    raise AssertionError(f"{name} did not announce its port:\n" + "".join(stderr[-30:]))
