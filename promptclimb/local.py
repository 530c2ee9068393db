"""The local service launcher: ``promptclimb serve NAME`` child processes on loopback.

Used by ``up``, the demo, ``reproduce``, the bench scripts and the multi-process tests, so every
one of them starts, waits for and stops services the same way.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from promptclimb.common.processes import die_with_parent

_LISTENING = re.compile(r"promptclimb (\w+) listening port=(\d+)(?: metrics_port=(\d+))?")


@dataclass
class LocalService:
    """A ``promptclimb serve NAME`` child process and the ports it announced."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int | None  # None unless started with --metrics-port

    @property
    def target(self) -> str:
        """Its gRPC address on loopback."""
        return f"127.0.0.1:{self.port}"


def launch_service(
    name: str,
    argv: list[str],
    timeout: float,
    log: IO[str] | None = None,
    *,
    stdout_log: IO[str] | None = None,
    env: dict[str, str] | None = None,
    credentials: Any = None,
) -> LocalService:
    """Start ``promptclimb serve NAME …``; wait for its "listening" line and SERVING health.

    ``log`` receives the service's stderr (its logs; None leaves it on ours) and ``stdout_log``
    a copy of its stdout. ``env`` replaces our environment; ``credentials`` (grpc channel
    credentials) make the health check use TLS. The child is in its own session, so a terminal's
    Ctrl-C reaches only us and we stop the children in order; it dies with us on SIGKILL too.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptclimb", "serve", name, *argv],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,  # Ctrl-C reaches us, we stop them
        preexec_fn=die_with_parent(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # exited
            if stdout_log is not None:
                stdout_log.write(line)
                stdout_log.flush()
            m = _LISTENING.search(line)
            if m and m.group(1) == name:
                # Keep draining its stdout so a chatty child never blocks on a full pipe.
                threading.Thread(target=_drain, args=(proc.stdout, stdout_log), daemon=True).start()
                service = LocalService(name, proc, int(m.group(2)), int(m.group(3)) if m.group(3) else None)
                _wait_serving(name, service.port, proc, deadline - time.monotonic(), credentials)
                return service
        raise RuntimeError(f"{name} did not start (exit code {proc.poll()})")
    except BaseException:
        # Also on Ctrl-C while waiting: the caller never got this process, so it is ours to end.
        proc.kill()
        proc.wait()
        raise


def start_service(
    name: str, argv: list[str], timeout: float, log: IO[str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """:func:`launch_service` for ``up`` and ``reproduce``: the process and its gRPC port."""
    service = launch_service(name, argv, timeout, log)
    return service.proc, service.port


def _drain(stream: IO[str], copy: IO[str] | None) -> None:
    for line in stream:
        if copy is not None:
            copy.write(line)
            copy.flush()


def _wait_serving(
    name: str, port: int, proc: subprocess.Popen[str], timeout: float, credentials: Any = None
) -> None:
    """Poll grpc.health.v1 until the service says SERVING (the scorer loads model and features first)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not become ready (exit code {proc.poll()})")


def stop_services(procs: list[tuple[str, subprocess.Popen[str]]]) -> None:
    """SIGTERM in reverse start order, then wait (kill after 15 s)."""
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in 15 s; killing it", file=sys.stderr)
            p.kill()
            p.wait()


@dataclass
class LocalServices:
    """Scorer, optimizer and coordinator running as child processes on loopback."""

    scorer: str
    optimizer: str
    coordinator: str
    store: Path
    procs: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def dead(self) -> list[str]:
        """Names of the services that have exited."""
        return [n for n, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        """SIGTERM in reverse start order, then wait (kill after 15 s)."""
        stop_services(self.procs)


def start_local_services(
    *,
    model: str,
    datasets: list[str],
    state: Path,
    llm_base_url: str | None,
    llm_model: str | None,
    llm_api_key_file: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    scorer_threads: int | None = None,
    port: int = 0,
    timeout: float = 300.0,
    log: IO[str] | None = None,
) -> LocalServices:
    """Start the three services (store and feature cache under ``state``) and wait until they serve.

    ``llm_base_url`` None leaves the optimizer on its default endpoint (OpenAI, key from env).
    With a fixed coordinator ``port`` the scorer takes ``port + 1`` and the optimizer ``port + 2``
    (so `promptclimb eval`'s default scorer target, 127.0.0.1:50051, finds `up`'s scorer); with 0,
    every service takes a free port.
    On any failure or interrupt, whatever was started is stopped before the exception propagates.
    """
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        scorer_argv = ["--model", model, "--port", str(port + 1 if port else 0)]
        scorer_argv += ["--cache-dir", str(state / "features")]
        for flag, value in (("pretrained", pretrained), ("device", device), ("threads", scorer_threads)):
            if value:
                scorer_argv += [f"--{flag}", str(value)]
        for d in datasets:
            scorer_argv += ["--dataset", d]
        proc, scorer_port = start_service("scorer", scorer_argv, timeout, log)
        procs.append(("scorer", proc))
        optimizer_argv = ["--port", str(port + 2 if port else 0)]
        for flag, value in (
            ("llm-base-url", llm_base_url),
            ("llm-model", llm_model),
            ("llm-api-key-file", llm_api_key_file),
        ):
            if value:
                optimizer_argv += [f"--{flag}", value]
        proc, optimizer_port = start_service("optimizer", optimizer_argv, timeout, log)
        procs.append(("optimizer", proc))
        store = state / "searches.db"
        coordinator_argv = [
            "--scorer", f"127.0.0.1:{scorer_port}", "--optimizer", f"127.0.0.1:{optimizer_port}",
            "--store", str(store), "--port", str(port),
        ]  # fmt: skip
        proc, coordinator_port = start_service("coordinator", coordinator_argv, timeout, log)
        procs.append(("coordinator", proc))
    except BaseException:
        stop_services(procs)
        raise
    return LocalServices(
        scorer=f"127.0.0.1:{scorer_port}",
        optimizer=f"127.0.0.1:{optimizer_port}",
        coordinator=f"127.0.0.1:{coordinator_port}",
        store=store,
        procs=procs,
    )
