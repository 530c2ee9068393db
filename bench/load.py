"""Load on a local stack: 50 concurrent EvaluatePrompts clients and 20 concurrent searches.

Starts scorer (tiny random-weight CLIP), optimizer (against a scripted fake LLM on loopback) and
coordinator as real processes, then for ``--seconds`` hammers the scorer directly while searches
run through the coordinator (which shares the same scorer, so it meets the same full queue and
must back off and retry). Reports calls served and rejected, searches completed, and the peak
resident memory (VmHWM) of each service process. Loopback only; bounded in time.

    python bench/load.py --seconds 30 --scorer-queue 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc

from promptclimb.client import CoordinatorClient, ScorerClient
from promptclimb.local import launch_service
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir

SERVICES = ("scorer", "optimizer", "coordinator")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a test CA, a server certificate (localhost/127.0.0.1) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@dataclass
class Service:
    """One running service process."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int | None
    stdout: Path
    stderr: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process in KiB, from /proc (psutil is not needed)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class LocalStack:
    """Scorer, optimizer and coordinator as subprocesses on loopback, with a fake LLM in-process."""

    workdir: Path
    scorer_queue: int = 4096
    text_cache_size: int = 100_000
    max_running_searches: int = 8
    llm_key: str | None = None
    token: str | None = None
    tls: TLSFiles | None = None
    mtls: bool = False  # scorer and optimizer require the coordinator's client certificate
    log_level: str = "INFO"
    llm_delay: float = 0.0
    services: dict[str, Service] = field(default_factory=dict)
    llm: FakeOpenAI | None = None

    def start(self, timeout: float = 120) -> LocalStack:
        """Make the tiny model and images, start the fake LLM and the three services."""
        model = make_tiny_model_dir(self.workdir / "model")
        images = make_image_folder(self.workdir / "images", per_split={"train": 2, "test": 4})
        counter = iter(range(10**9))
        delay = self.llm_delay

        def answer(_body: dict[str, Any]) -> str:
            if delay:
                time.sleep(delay)
            n = next(counter)
            return f"1. a photo of a {{}}, variant {n}.\n2. a blurry picture of the {{}} number {n}."

        self.llm = FakeOpenAI(default=answer, api_key=self.llm_key).start()
        server_tls: list[str] = []
        if self.tls:
            server_tls = ["--tls-cert", str(self.tls.server_cert), "--tls-key", str(self.tls.server_key)]
        upstream_tls = server_tls + (["--tls-client-ca", str(self.tls.ca)] if self.tls and self.mtls else [])
        self._launch(
            "scorer",
            [
                "--model",
                f"local-dir:{model}",
                "--dataset",
                f"demo={images}",
                "--cache-dir",
                str(self.workdir / "features"),
                "--threads",
                "1",
                "--max-queue-templates",
                str(self.scorer_queue),
                "--text-cache-size",
                str(self.text_cache_size),
                *upstream_tls,
            ],
            timeout,
        )
        self._launch(
            "optimizer",
            [
                "--llm-base-url",
                self.llm.base_url,
                "--llm-model",
                "fake-model",
                "--max-retries",
                "2",
                *upstream_tls,
            ],
            timeout,
        )
        coordinator = [
            "--scorer",
            self.services["scorer"].target,
            "--optimizer",
            self.services["optimizer"].target,
            "--store",
            str(self.workdir / "searches.db"),
            *server_tls,
        ]
        if self.tls:
            coordinator += ["--upstream-tls-ca", str(self.tls.ca)]
            if self.mtls:
                coordinator += [
                    "--upstream-tls-cert",
                    str(self.tls.client_cert),
                    "--upstream-tls-key",
                    str(self.tls.client_key),
                ]
        self._launch("coordinator", coordinator, timeout)
        return self

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        env["PROMPTCLIMB_SCORER_LOG_LEVEL"] = self.log_level
        env["PROMPTCLIMB_OPTIMIZER_LOG_LEVEL"] = self.log_level
        env["PROMPTCLIMB_COORDINATOR_LOG_LEVEL"] = self.log_level
        env["PROMPTCLIMB_COORDINATOR_MAX_RUNNING_SEARCHES"] = str(self.max_running_searches)
        env["PROMPTCLIMB_COORDINATOR_BACKOFF_SECONDS"] = "0.1"
        env["PROMPTCLIMB_COORDINATOR_MAX_ATTEMPTS"] = "30"  # a full scorer queue is waited out
        if self.llm_key:
            env["PROMPTCLIMB_OPTIMIZER_LLM_API_KEY"] = self.llm_key
        if self.token:
            env["PROMPTCLIMB_COORDINATOR_AUTH_TOKEN"] = self.token
        return env

    def _launch(self, name: str, argv: list[str], timeout: float) -> None:
        stdout, stderr = self.workdir / f"{name}.stdout", self.workdir / f"{name}.stderr"
        with stdout.open("w") as out, stderr.open("w") as err:
            started = launch_service(
                name,
                ["--port", "0", "--metrics-port", "0", *argv],
                timeout,
                err,
                stdout_log=out,
                env=self._env(),
                credentials=self._credentials(),
            )
        self.services[name] = Service(name, started.proc, started.port, started.metrics_port, stdout, stderr)

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            self.tls.ca.read_bytes(), self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()
        )

    def client(self, *, token: str | None = None, timeout: float = 60) -> CoordinatorClient:
        """A coordinator client (TLS and token as the stack was started, unless ``token`` is given)."""
        tls = self.tls
        return CoordinatorClient(
            self.services["coordinator"].target,
            timeout=timeout,
            token=token if token is not None else self.token,
            tls_ca=tls.ca if tls else None,
            tls_cert=tls.client_cert if tls and self.mtls else None,
            tls_key=tls.client_key if tls and self.mtls else None,
        )

    def scorer_client(self, *, timeout: float = 30) -> ScorerClient:
        """A client straight to the scorer (TLS as the stack was started)."""
        tls = self.tls
        return ScorerClient(
            self.services["scorer"].target,
            timeout=timeout,
            tls_ca=tls.ca if tls else None,
            tls_cert=tls.client_cert if tls else None,
            tls_key=tls.client_key if tls else None,
        )

    def memory(self) -> dict[str, dict[str, int]]:
        """VmRSS and VmHWM (KiB) of each service."""
        return {name: memory_kib(s.proc.pid) for name, s in self.services.items()}

    def metrics_text(self, name: str) -> str:
        """The service's Prometheus exposition."""
        port = self.services[name].metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            return reply.read().decode()

    def logs(self) -> dict[str, str]:
        """Everything each service wrote to stdout and stderr so far."""
        return {
            name: s.stdout.read_text(errors="replace") + s.stderr.read_text(errors="replace")
            for name, s in self.services.items()
        }

    def stop(self) -> None:
        """SIGTERM every service (coordinator first), then stop the fake LLM."""
        for name in reversed(SERVICES):
            s = self.services.get(name)
            if s and s.proc.poll() is None:
                s.proc.terminate()
                try:
                    s.proc.wait(20)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        if self.llm:
            self.llm.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


WORDS = ["photo", "picture", "drawing", "sketch", "render", "close-up", "blurry", "bright", "dark", "small"]


def random_template(rng: random.Random) -> str:
    """A template with one slot, mostly new so the text cache does not hide the work."""
    return f"a {rng.choice(WORDS)} {rng.choice(WORDS)} of the {{}} #{rng.randrange(10**6)}."


async def evaluate_clients(stack: LocalStack, clients: int, seconds: float, templates: int) -> Counter[str]:
    """``clients`` concurrent loops of EvaluatePrompts for ``seconds``; counts codes."""
    codes: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def one(i: int) -> None:
        rng = random.Random(i)
        async with stack.scorer_client() as scorer:
            while time.monotonic() < stop_at:
                batch = [random_template(rng) for _ in range(templates)]
                try:
                    await scorer.evaluate("demo", "train", batch, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as err:
                    codes[err.code().name] += 1
                    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        await asyncio.sleep(0.05)  # a polite client; the server said when to retry

    await asyncio.gather(*(one(i) for i in range(clients)))
    return codes


async def run_searches(
    stack: LocalStack, searches: int, iterations: int, wait_seconds: float
) -> Counter[str]:
    """Start ``searches`` at once through the coordinator and wait for each to end."""
    async with stack.client(timeout=60) as client:
        started = [
            await client.start(
                dataset="demo",
                pool="basic",
                iterations=iterations,
                templates_per_iteration=2,
                request_id=f"load-{i}-{time.time_ns()}",
            )
            for i in range(searches)
        ]

        async def wait(name: str) -> str:
            try:
                done = await asyncio.wait_for(client.wait(name), wait_seconds)
            except TimeoutError:
                return "TIMED_OUT"
            return done.state

        states = await asyncio.gather(*(wait(s.name) for s in started))
    from promptclimb.api.v1 import coordinator_pb2

    return Counter(
        coordinator_pb2.SearchState.Name(s).removeprefix("SEARCH_STATE_") if isinstance(s, int) else s
        for s in states
    )


async def load(args: argparse.Namespace, stack: LocalStack) -> dict[str, Any]:
    t0 = time.monotonic()
    codes, states = await asyncio.gather(
        evaluate_clients(stack, args.clients, args.seconds, args.templates),
        run_searches(stack, args.searches, args.iterations, args.seconds + 120),
    )
    return {
        "seconds": round(time.monotonic() - t0, 1),
        "evaluate_calls": dict(codes),
        "searches": dict(states),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent EvaluatePrompts clients")
    parser.add_argument("--searches", type=int, default=20, help="concurrent searches")
    parser.add_argument("--seconds", type=float, default=30, help="how long the clients keep calling")
    parser.add_argument("--templates", type=int, default=16, help="templates per EvaluatePrompts call")
    parser.add_argument("--iterations", type=int, default=3, help="iterations per search")
    parser.add_argument("--scorer-queue", type=int, default=256, help="scorer max_queue_templates")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promptclimb-load-") as tmp:
        stack = LocalStack(Path(tmp), scorer_queue=args.scorer_queue, max_running_searches=args.searches)
        with stack:
            report = asyncio.run(load(args, stack))
            report["peak_rss_mib"] = {name: round(m["VmHWM"] / 1024, 1) for name, m in stack.memory().items()}
            report["settings"] = vars(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
