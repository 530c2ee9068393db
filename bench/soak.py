"""Soak: back-to-back searches on a local stack for N minutes; resident memory at start and end.

Starts the same local stack as bench/load.py (tiny random-weight CLIP, fake LLM, three real
service processes), runs one search after another until the time is up, and prints each
service's VmRSS after the first search (start) and at the end, plus its peak (VmHWM). Every
search proposes new templates, so the scorer's text cache fills; with ``--text-cache-size`` small
the scorer's memory must level off rather than grow with the number of searches.

    python bench/soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.load import LocalStack
from promptclimb.api.v1 import coordinator_pb2


async def soak(stack: LocalStack, minutes: float, iterations: int) -> dict[str, object]:
    states: Counter[str] = Counter()
    samples: list[dict[str, object]] = []
    start_memory: dict[str, dict[str, int]] = {}
    stop_at = time.monotonic() + minutes * 60
    async with stack.client(timeout=60) as client:
        n = 0
        while time.monotonic() < stop_at:
            search = await client.start(
                dataset="demo", pool="basic", iterations=iterations, templates_per_iteration=2
            )
            done = await client.wait(search.name)
            states[coordinator_pb2.SearchState.Name(done.state).removeprefix("SEARCH_STATE_")] += 1
            n += 1
            if n == 1:
                start_memory = stack.memory()
            if n % 50 == 0:
                samples.append({"searches": n, "rss_mib": _mib(stack.memory(), "VmRSS")})
    end_memory = stack.memory()
    return {
        "minutes": minutes,
        "searches": dict(states),
        "rss_mib_after_first_search": _mib(start_memory, "VmRSS"),
        "rss_mib_at_end": _mib(end_memory, "VmRSS"),
        "peak_rss_mib": _mib(end_memory, "VmHWM"),
        "samples": samples,
    }


def _mib(memory: dict[str, dict[str, int]], key: str) -> dict[str, float]:
    return {name: round(m[key] / 1024, 1) for name, m in memory.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep starting searches")
    parser.add_argument("--iterations", type=int, default=5, help="iterations per search")
    parser.add_argument(
        "--text-cache-size", type=int, default=2000, help="scorer text-embedding cache entries"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="promptclimb-soak-") as tmp:
        with LocalStack(Path(tmp), text_cache_size=args.text_cache_size) as stack:
            report = asyncio.run(soak(stack, args.minutes, args.iterations))
            report["settings"] = vars(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
