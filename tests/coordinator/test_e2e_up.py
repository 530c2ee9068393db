"""End to end: `promptclimb up` with the real scorer (tiny CLIP) and optimizer (fake OpenAI LLM)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from tests.support.processes import test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
ENV = test_env()


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptclimb", *argv],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=timeout,
    )


def test_up_then_search_start_wait_and_get_json(tmp_path: Path) -> None:
    model = make_tiny_model_dir(tmp_path / "model")
    images = make_image_folder(tmp_path / "images")
    counter = itertools.count()

    def reply(_body: dict[str, Any]) -> str:
        n = next(counter)
        return json.dumps({"templates": [f"a photo of a {{}}, take {n}.", f"a blurry {{}} number {n}."]})

    with FakeOpenAI(default=reply) as llm:
        up = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "promptclimb",
                "up",
                "--model",
                f"local-dir:{model}",
                "--dataset",
                f"toy={images}",
                "--llm-base-url",
                llm.base_url,
                "--llm-model",
                "fake-model",
                "--state-dir",
                str(tmp_path / "state"),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "up.log").open("w"),
            text=True,
            env=ENV,
            cwd=ROOT,
        )
        try:
            assert up.stdout is not None
            line = up.stdout.readline()
            m = re.search(r"coordinator=(\S+)", line)
            assert m, (line, (tmp_path / "up.log").read_text()[-3000:])
            target = m.group(1)

            started = cli(
                "search",
                "start",
                "--coordinator",
                target,
                "--dataset",
                "toy",
                "--restarts",
                "2",
                "--iterations",
                "3",
                "--templates-per-iteration",
                "2",
                "--wait",
            )
            assert started.returncode == 0, started.stderr[-3000:]
            out = started.stdout
            assert "SUCCEEDED (completed)" in out
            best = re.search(r"best template: (.+)", out).group(1)
            selection = float(re.search(r"selection accuracy \(train\): ([\d.]+)", out).group(1))
            evaluation = float(re.search(r"evaluation accuracy \(test\): ([\d.]+)", out).group(1))
            name = re.search(r"search (searches/\w+)", out).group(1)

            got = cli(
                "search",
                "get",
                "--coordinator",
                target,
                name,
                "--json",
                "--plot",
                str(tmp_path / "plot.png"),
                "--export-json",
                str(tmp_path / "s.json"),
            )
            assert got.returncode == 0, got.stderr
            search = json.loads(got.stdout)
            assert search["state"] == "SEARCH_STATE_SUCCEEDED"
            assert search["best"]["template"] == best
            assert round(search["best"]["accuracy"], 4) == selection
            assert round(search["result"]["best_evaluation_accuracy"], 4) == evaluation
            assert [(i["restart"], i["iteration"]) for i in search["iterations"]][1:] == [
                (r, i) for r in range(2) for i in range(1, 4)
            ]
            assert int(search["usage"]["llm_calls"]) == 6
            assert len(search["history"]) == 5 + 6 * 2
            assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
            assert json.loads((tmp_path / "s.json").read_text())["name"] == name

            listed = cli("search", "list", "--coordinator", target, "--json")
            assert [s["name"] for s in json.loads(listed.stdout)] == [name]
            scored = cli(
                "eval",
                "--scorer",
                re.search(r"scorer=(\S+)", line).group(1),
                "--dataset",
                "toy",
                "--split",
                "test",
                "--json",
                best,
            )
            assert scored.returncode == 0, scored.stderr
            assert round(json.loads(scored.stdout)["scores"][0]["accuracy"], 4) == evaluation
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(timeout=60)
        assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
