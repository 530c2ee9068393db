"""Burst: 1,000 StartSearch calls at once at one coordinator replica, then wait for every accepted one.

The local stack of ``bench/load.py``: scorer (tiny random-weight CLIP), optimizer (against a
scripted fake LLM in this process: the burst is about admission, not the LLM's words) and
coordinator, all real processes on loopback, the coordinator on a SQLite store. The coordinator
runs ``--max-running`` searches at once and lets ``--max-pending`` wait; StartSearch past that is
RESOURCE_EXHAUSTED with a retry delay. Reports accepted vs refused (by status code, with the
retry delays seen), the coordinator's resident memory (sampled during the burst and the drain,
and its VmHWM peak), and the end state of every accepted search.

    python bench/burst.py --calls 1000 --max-pending 200

Prints one JSON object. Not a test: nothing here is timed against a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc

from bench.load import LocalStack, memory_kib
from promptclimb.api.v1 import coordinator_pb2
from promptclimb.common.errors import retry_delay_of

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


def state_name(state: int) -> str:
    return coordinator_pb2.SearchState.Name(state).removeprefix("SEARCH_STATE_")


class RssSampler:
    """The coordinator's VmRSS every ``every`` seconds, in a task, until stopped."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []  # (seconds since start, KiB)
        self._task: asyncio.Task[None] | None = None
        self._t0 = time.monotonic()

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._t0, memory_kib(self.pid)["VmRSS"]))
            await asyncio.sleep(self.every)

    def start(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def peak_mib(self) -> float:
        return round(max(kib for _, kib in self.samples) / 1024, 1)


async def burst(stack: LocalStack, args: argparse.Namespace) -> dict[str, Any]:
    coordinator_pid = stack.services["coordinator"].proc.pid
    rss_idle = memory_kib(coordinator_pid)["VmRSS"]
    sampler = RssSampler(coordinator_pid).start()
    codes: Counter[str] = Counter()
    delays: Counter[float] = Counter()
    accepted: list[str] = []

    # A few channels, as many clients would bring; every call at once.
    clients = [stack.client(timeout=120) for _ in range(args.channels)]

    async def start(i: int) -> None:
        client = clients[i % len(clients)]
        try:
            search = await client.start(
                request_id=f"burst-{i}",
                dataset="demo",
                templates=[f"a photo of a {{}}, burst {i}.", f"a picture of the {{}}, burst {i}."],
                iterations=args.iterations,
                templates_per_iteration=2,
            )
        except grpc.aio.AioRpcError as err:
            codes[err.code().name] += 1
            delay = retry_delay_of(err)
            if delay is not None:
                delays[delay] += 1
            return
        codes["OK"] += 1
        accepted.append(search.name)

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(start(i) for i in range(args.calls)))
        burst_seconds = time.monotonic() - t0
        rss_after_burst = memory_kib(coordinator_pid)["VmRSS"]
        # Every accepted search must end; poll their states through the API.
        states: dict[str, str] = {}
        client = clients[0]
        stop_at = time.monotonic() + args.drain_seconds
        while time.monotonic() < stop_at:
            for name in accepted:
                if states.get(name) not in TERMINAL:
                    states[name] = state_name((await client.get(name, full=False)).state)
            if all(states.get(n) in TERMINAL for n in accepted):
                break
            await asyncio.sleep(1)
        drain_seconds = time.monotonic() - t0 - burst_seconds
    finally:
        await sampler.stop()
        for c in clients:
            await c.close()
    memory = stack.memory()
    return {
        "calls": args.calls,
        "accepted": codes["OK"],
        "refused": {code: n for code, n in codes.items() if code != "OK"},
        "retry_delays_seconds": {str(d): n for d, n in delays.items()},
        "burst_seconds": round(burst_seconds, 1),
        "accepted_end_states": dict(Counter(states.values())),
        "not_ended": sum(1 for n in accepted if states.get(n) not in TERMINAL),
        "drain_seconds": round(drain_seconds, 1),
        "coordinator_rss_mib": {
            "idle_before": round(rss_idle / 1024, 1),
            "after_burst": round(rss_after_burst / 1024, 1),
            "peak_sampled": sampler.peak_mib(),
            "peak_vmhwm": round(memory["coordinator"]["VmHWM"] / 1024, 1),
        },
        "peak_rss_mib": {name: round(m["VmHWM"] / 1024, 1) for name, m in memory.items()},
        "settings": vars(args),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="StartSearch calls, all at once")
    p.add_argument("--max-running", type=int, default=8, help="the coordinator's max_running_searches")
    p.add_argument("--max-pending", type=int, default=200, help="the coordinator's max_pending_searches")
    p.add_argument("--iterations", type=int, default=1, help="iterations per search")
    p.add_argument("--channels", type=int, default=4, help="client channels the calls are spread over")
    p.add_argument("--drain-seconds", type=float, default=1800, help="how long to wait for the last search")
    args = p.parse_args()
    # The stack's services inherit this process's environment (bench/load.py LocalStack._env).
    os.environ["PROMPTCLIMB_COORDINATOR_MAX_PENDING_SEARCHES"] = str(args.max_pending)
    with tempfile.TemporaryDirectory(prefix="promptclimb-burst-") as tmp:
        stack = LocalStack(Path(tmp), max_running_searches=args.max_running, log_level="WARNING")
        with stack:
            report = asyncio.run(burst(stack, args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
