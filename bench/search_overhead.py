"""End-to-end overhead of a search: wall time against the scorer compute and LLM time inside it.

Runs the real three services (`promptclimb up`: scorer, optimizer and coordinator as separate
processes) against a zero-latency fake OpenAI-compatible LLM, runs one search, and splits its
server-side wall time (``Search.wall_seconds``) into

- scorer compute: the increase of the scorer's ``promptclimb_scorer_compute_seconds_sum``
  (the torch work of every batch, scraped from its /metrics port),
- LLM time: time the fake LLM spent producing replies (zero-latency: microseconds),
- the rest: our overhead (gRPC hops, coordinator state machine, SQLite checkpoints, the
  optimizer's prompt building and parsing, the openai client's HTTP round trip).

Usage::

    /work/venv/bin/python bench/search_overhead.py [--model tiny|ViT-B-32] [--restarts 2 --iterations 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from promptclimb.testing.fake_openai import FakeOpenAI  # noqa: E402
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir  # noqa: E402


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compute_seconds(metrics_port: int) -> float:
    """The scorer's cumulative compute seconds from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    m = re.search(r"^promptclimb_scorer_compute_seconds_sum (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a ``promptclimb`` command; raises with its stderr when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "promptclimb", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"promptclimb {argv[0]} {argv[1]} failed: {done.stderr[-2000:]}")
    return done


def main() -> int:
    """Run one search through the three services and print the overhead split."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (random test config) or an open_clip name")
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--templates-per-iteration", type=int, default=4)
    ap.add_argument("--classes", type=int, default=5)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pc-overhead-"))
    model = f"local-dir:{make_tiny_model_dir(tmp / 'model')}" if args.model == "tiny" else args.model
    classes = [f"class {chr(97 + i)}" for i in range(args.classes)]
    images = make_image_folder(tmp / "images", classes=classes, per_split={"train": 1, "test": 4})
    metrics_port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "PROMPTCLIMB_SCORER_METRICS_PORT": str(metrics_port),
        "PROMPTCLIMB_SCORER_THREADS": "1",  # leave the other core to the other services
    }
    counter = itertools.count()
    llm = {"seconds": 0.0, "calls": 0}
    lock = threading.Lock()

    def reply(_body: dict[str, Any]) -> str:
        start = time.perf_counter()
        n = next(counter)
        content = json.dumps({"templates": [f"a photo of a {{}}, take {n}.", f"a {{}} in picture {n}."]})
        with lock:
            llm["seconds"] += time.perf_counter() - start
            llm["calls"] += 1
        return content

    with FakeOpenAI(default=reply) as fake:
        up = subprocess.Popen(
            [sys.executable, "-m", "promptclimb", "up", "--model", model, "--dataset", f"toy={images}",
             "--llm-base-url", fake.base_url, "--llm-model", "fake", "--state-dir", str(tmp / "state"),
             "--port", "0"],
            stdout=subprocess.PIPE, stderr=(tmp / "up.log").open("w"), text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            assert up.stdout is not None
            line = up.stdout.readline()
            m = re.search(r"coordinator=(\S+)", line)
            if not m:
                raise RuntimeError(f"up did not start: {(tmp / 'up.log').read_text()[-2000:]}")
            target = m.group(1)
            before = compute_seconds(metrics_port)
            started = cli(
                env, "search", "start", "--coordinator", target, "--dataset", "toy",
                "--restarts", str(args.restarts), "--iterations", str(args.iterations),
                "--templates-per-iteration", str(args.templates_per_iteration), "--wait",
            )  # fmt: skip
            name = re.search(r"search (searches/\w+)", started.stdout)
            assert name, started.stdout
            got = json.loads(
                cli(env, "search", "get", "--coordinator", target, name.group(1), "--json").stdout
            )
            scorer = compute_seconds(metrics_port) - before
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)

    wall = float(got.get("wallSeconds", got.get("wall_seconds", 0.0)))
    iterations = got.get("iterations", [])
    propose = sum(float(i.get("proposeSeconds", i.get("propose_seconds", 0.0))) for i in iterations)
    score = sum(float(i.get("scoreSeconds", i.get("score_seconds", 0.0))) for i in iterations)
    usage = got.get("usage", {})
    overhead = wall - scorer - llm["seconds"]
    print(f"model={args.model} restarts={args.restarts} iterations={args.iterations} "
          f"templates/iteration={args.templates_per_iteration} classes={args.classes}")  # fmt: skip
    print(f"search wall time (server side)   {wall:8.3f} s")
    print(f"scorer compute (torch batches)   {scorer:8.3f} s")
    print(f"LLM time (fake, zero latency)    {llm['seconds']:8.4f} s over {llm['calls']} calls")
    print(f"coordinator-seen propose time    {propose:8.3f} s (optimizer gRPC + HTTP to the LLM)")
    print(f"coordinator-seen score time      {score:8.3f} s (scorer gRPC + queue + compute)")
    print(f"evaluations                      {usage.get('evaluations', '?')}")
    print(f"overhead = wall - scorer - LLM   {overhead:8.3f} s = {100 * overhead / wall:.1f}% of wall time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
