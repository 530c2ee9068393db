"""Chaos soak: searches started without pause while a random service is SIGKILLed and restarted.

Two coordinator replicas on one PostgreSQL database, two scorers (tiny random-weight CLIP) and
one optimizer (against a scripted fake LLM in this process: the soak is about the services, not
the LLM's words), all real processes on loopback. For ``--minutes`` a search is started every
``--start-every`` seconds at a random live replica, and every 20–40 s one random service is
SIGKILLed and started again on its port. Then every service stays up until each search has
ended, and the script checks, from the database and from what it saw on the wire:

- every search SUCCEEDED, or FAILED with a reason; none is RUNNING past its lease;
- no template was scored twice on one search's selection split: each scorer sits behind a
  pass-through gRPC proxy in this process that records every successful EvaluatePrompts reply;
  a template whose score came back twice is counted, and counted apart when a coordinator was
  killed between the two replies (a score received but not yet journaled is lost with the
  process: scoring it again is the design, not a fault);
- no recorded LLM reply was asked again: every LLM call of a search carries a seed derived from
  (search seed, call key), so a request the fake LLM receives with the seed of a reply already
  in the journal (after the time it was recorded) is a reply asked again.

    python bench/chaos.py --minutes 10

Needs PostgreSQL's initdb/pg_ctl (as the store tests do). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # we spawn services while gRPC threads run

import grpc
import sqlalchemy as sa

from promptclimb.api.v1 import coordinator_pb2, scorer_pb2
from promptclimb.client import CoordinatorClient
from promptclimb.local import LocalService, launch_service
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.coordinator.search import call_seed
from tests.store.conftest import PostgresCluster, postgres_bindir

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}
EVALUATE = "/promptclimb.api.v1.ScorerService/EvaluatePrompts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Wire:
    """What this process saw: scores returned by the scorers, LLM requests, kills."""

    scored: list[tuple[float, str, str]] = field(default_factory=list)  # (time, split, template)
    llm_requests: list[tuple[float, int | None]] = field(default_factory=list)  # (time, seed)
    kills: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScorerProxy:
    """A pass-through gRPC server in front of one scorer that records successful scores."""

    def __init__(self, upstream: str, wire: Wire) -> None:
        self.upstream, self.wire = upstream, wire
        self.port = free_port()
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.upstream)
        proxy = self

        class Forward(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
                method = details.method

                async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                    return await proxy.forward(method, request, context)

                return grpc.unary_unary_rpc_method_handler(unary)  # raw bytes both ways

        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((Forward(),))
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def forward(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        assert self._channel is not None
        call = self._channel.unary_unary(method)
        remaining = context.time_remaining()
        try:
            reply: bytes = await call(
                request,
                timeout=remaining if remaining is not None and remaining < 1e6 else None,
                metadata=tuple(context.invocation_metadata() or ()),
            )
        except grpc.aio.AioRpcError as err:
            context.set_trailing_metadata(err.trailing_metadata() or ())  # RetryInfo travels on
            await context.abort(err.code(), err.details() or "")
        if method == EVALUATE:
            asked = scorer_pb2.EvaluatePromptsRequest.FromString(request)
            answer = scorer_pb2.EvaluatePromptsResponse.FromString(reply)
            now = time.time()
            with self.wire.lock:
                for score in answer.scores:
                    if not score.HasField("error"):
                        self.wire.scored.append((now, asked.split, score.template))
        return reply

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(1)
        if self._channel is not None:
            await self._channel.close()


@dataclass
class Fleet:
    """The five service processes, each restartable on its own port."""

    workdir: Path
    store_url: str
    llm_url: str
    model: Path
    images: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, LocalService] = field(default_factory=dict)
    proxies: list[ScorerProxy] = field(default_factory=list)
    logs: dict[str, IO[str]] = field(default_factory=dict)

    NAMES = ("scorer-1", "scorer-2", "optimizer", "coordinator-a", "coordinator-b")

    def env(self) -> dict[str, str]:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
        env.update(
            PROMPTCLIMB_COORDINATOR_LEASE_SECONDS="10",
            PROMPTCLIMB_COORDINATOR_BACKOFF_SECONDS="0.1",
            PROMPTCLIMB_COORDINATOR_MAX_ATTEMPTS="40",  # a scorer restart (a few seconds) is waited out
            PROMPTCLIMB_COORDINATOR_STORE_RETRY_SECONDS="60",
        )
        return env

    def argv(self, name: str) -> list[str]:
        if name.startswith("scorer"):
            return [
                "--model", f"local-dir:{self.model}", "--dataset", f"demo={self.images}",
                "--cache-dir", str(self.workdir / f"features-{name}"), "--threads", "1",
            ]  # fmt: skip
        if name == "optimizer":
            return ["--llm-base-url", self.llm_url, "--llm-model", "fake-model", "--max-retries", "2"]
        scorers = ",".join(f"127.0.0.1:{p.port}" for p in self.proxies)
        return [
            "--scorer", scorers, "--optimizer", f"127.0.0.1:{self.ports['optimizer']}",
            "--store", self.store_url, "--replica-id", name,
        ]  # fmt: skip

    def launch(self, name: str) -> None:
        if name not in self.ports:
            self.ports[name] = free_port()
        log = self.logs.setdefault(name, (self.workdir / f"{name}.log").open("a"))
        self.procs[name] = launch_service(
            name.rsplit("-", 1)[0] if name != "optimizer" else name,
            ["--port", str(self.ports[name]), "--metrics-port", "0", *self.argv(name)],
            180,
            log,
            env=self.env(),
        )

    def kill(self, name: str) -> None:
        proc = self.procs[name].proc
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for name in reversed(self.NAMES):
            service = self.procs.get(name)
            if service is not None and service.proc.poll() is None:
                service.proc.terminate()
                try:
                    service.proc.wait(20)
                except Exception:
                    service.proc.kill()
        for log in self.logs.values():
            log.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("chaos: needs PostgreSQL's initdb and pg_ctl")
    workdir = Path(tempfile.mkdtemp(prefix="promptclimb-chaos-"))
    rng = random.Random(args.seed)
    wire = Wire()
    counter = iter(range(10**9))

    def answer(body: dict[str, Any]) -> str:
        with wire.lock:
            wire.llm_requests.append((time.time(), body.get("seed")))
        time.sleep(args.llm_delay)
        n = next(counter)
        return f"1. a photo of a {{}}, variant {n}.\n2. a blurry picture of the {{}} number {n}."

    cluster = PostgresCluster(bindir)
    cluster.init()
    cluster.start()
    cluster.admin("CREATE DATABASE chaos")
    llm = FakeOpenAI(default=answer).start()
    fleet = Fleet(
        workdir,
        cluster.url("chaos"),
        llm.base_url,
        make_tiny_model_dir(workdir / "model"),
        make_image_folder(workdir / "images", per_split={"train": 2, "test": 4}),
    )
    started: dict[str, int] = {}  # search name -> its seed
    try:
        for name in ("scorer-1", "scorer-2"):
            fleet.launch(name)
            fleet.proxies.append(ScorerProxy(f"127.0.0.1:{fleet.ports[name]}", wire))
            await fleet.proxies[-1].start()
        for name in ("optimizer", "coordinator-a", "coordinator-b"):
            fleet.launch(name)
        end = time.monotonic() + args.minutes * 60

        async def starter() -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                spec_kwargs = dict(
                    dataset="demo",
                    templates=[f"a photo of a {{}}, search {i}.", f"a picture of the {{}}, search {i}."],
                    iterations=args.iterations,
                    templates_per_iteration=2,
                    seed=i,  # unique: each LLM call's seed names its search and call
                    display_name=f"chaos {i}",
                )
                request_id = f"chaos-{i}"
                for name in rng.sample(["coordinator-a", "coordinator-b"], 2):
                    try:
                        async with CoordinatorClient(f"127.0.0.1:{fleet.ports[name]}", timeout=10) as c:
                            search = await c.start(request_id=request_id, **spec_kwargs)
                        started[search.name] = i
                        break
                    except grpc.aio.AioRpcError:
                        continue  # that replica is down (being restarted): the other one
                await asyncio.sleep(args.start_every)

        async def killer() -> None:
            while True:
                await asyncio.sleep(rng.uniform(20, 40))
                if time.monotonic() >= end:
                    return
                victim = rng.choice(Fleet.NAMES)
                fleet.kill(victim)
                wire.kills.append((time.time(), victim))
                await asyncio.sleep(rng.uniform(0.5, 3))
                await asyncio.to_thread(fleet.launch, victim)

        await asyncio.gather(starter(), killer())
        chaos_ended = time.monotonic()
        states = await wait_all(fleet, list(started), deadline=args.drain_seconds)
        drain = time.monotonic() - chaos_ended
        report = check(cluster.url("chaos"), started, states, wire)
        report.update(
            minutes=args.minutes,
            searches_started=len(started),
            kills=dict(Counter(v for _, v in wire.kills)),
            drain_seconds=round(drain, 1),
            llm_requests=len(wire.llm_requests),
            workdir=str(workdir),
        )
        return report
    finally:
        for proxy in fleet.proxies:
            await proxy.stop()
        fleet.stop()
        llm.stop()
        cluster.remove()


async def wait_all(fleet: Fleet, names: list[str], *, deadline: float) -> dict[str, str]:
    """Poll until every search is terminal (or the deadline): its state name by search name."""
    states: dict[str, str] = {}
    stop_at = time.monotonic() + deadline
    async with CoordinatorClient(f"127.0.0.1:{fleet.ports['coordinator-a']}", timeout=10) as c:
        while time.monotonic() < stop_at:
            for name in names:
                if states.get(name) in TERMINAL:
                    continue
                s = await c.get(name)
                states[name] = coordinator_pb2.SearchState.Name(s.state).removeprefix("SEARCH_STATE_")
            if all(states.get(n) in TERMINAL for n in names):
                break
            await asyncio.sleep(1)
    return states


def check(url: str, started: dict[str, int], states: dict[str, str], wire: Wire) -> dict[str, Any]:
    """The end-of-soak verdicts, from the database and what was seen on the wire."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine, only=["searches", "scored_templates", "llm_calls"])
    searches, scored, calls = (meta.tables[t] for t in ("searches", "scored_templates", "llm_calls"))
    now = time.time()
    with engine.connect() as c:
        rows = c.execute(sa.select(searches)).mappings().all()
        journal = c.execute(sa.select(scored.c.search_id, scored.c.split, scored.c.template)).all()
        recorded = c.execute(sa.select(calls.c.search_id, calls.c.call_key, calls.c.create_time)).all()
    engine.dispose()
    by_id = {r["id"]: r for r in rows}
    ids = {name.rsplit("/", 1)[-1]: seed for name, seed in started.items()}
    outcomes = Counter(by_id[i]["state"] for i in ids if i in by_id)
    failed = Counter(
        json.loads(by_id[i]["progress"] or "{}").get("end_reason", "")
        for i in ids
        if i in by_id and by_id[i]["state"] == "FAILED"
    )
    stuck = [
        i
        for i in ids
        if i in by_id and by_id[i]["state"] == "RUNNING" and (by_id[i]["lease_expires"] or 0) < now
    ]

    # Scored twice: templates are unique per search (its own seed templates, numbered LLM replies).
    selection = {t for sid, split, t in journal if split == "train"}
    times: dict[str, list[float]] = {}
    for t, split, template in wire.scored:
        if split == "train" and template in selection:
            times.setdefault(template, []).append(t)
    coordinator_kills = [t for t, v in wire.kills if v.startswith("coordinator")]
    twice = {k: v for k, v in times.items() if len(v) > 1}
    twice_across_kill = sum(1 for v in twice.values() if any(v[0] <= k <= v[-1] for k in coordinator_kills))

    # LLM replies asked again after they were journaled.
    seeds = {sid: seed for sid, seed in ids.items()}
    record_time = {call_seed(seeds[sid], key): when for sid, key, when in recorded if sid in seeds}
    asked_again = sum(
        1 for t, seed in wire.llm_requests if seed in record_time and t > record_time[seed] + 0.5
    )
    return {
        "outcomes": dict(outcomes),
        "failed_reasons": dict(failed),
        "not_terminal_at_end": sorted(n for n, s in states.items() if s not in TERMINAL),
        "running_past_lease": stuck,
        "selection_scores_journaled": len(selection),
        "scored_twice": len(twice),
        "scored_twice_across_a_coordinator_kill": twice_across_kill,
        "llm_replies_journaled": len(recorded),
        "journaled_llm_replies_asked_again": asked_again,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--start-every", type=float, default=2.0, help="seconds between StartSearch calls")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--llm-delay", type=float, default=0.3, help="seconds the fake LLM takes per reply")
    p.add_argument("--drain-seconds", type=float, default=300, help="how long to wait for the last searches")
    p.add_argument("--seed", type=int, default=1, help="seeds the choice of victims and intervals")
    report = asyncio.run(run(p.parse_args()))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
