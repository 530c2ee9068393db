"""The `reproduce` command line: flag errors, and the one-command run with --start-services."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from promptclimb.cli import main
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_tiny_model_dir
from tests.reproduce.conftest import make_coop_dataset
from tests.support.processes import test_env

ROOT = Path(__file__).resolve().parents[2]


def test_flag_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_coop_dataset(tmp_path, "dtd", "split_zhou_DescribableTextures.json", "images", ["a"], {"test": 1})
    base = ["reproduce", "--data-root", str(tmp_path), "--out", str(tmp_path / "out")]

    assert main([*base, "--backbones", "RN50,RN101", "--scorer", "127.0.0.1:1", "--coordinator", "x"]) == 2
    assert "give BACKBONE=TARGET" in capsys.readouterr().err
    assert main([*base, "--backbones", "RN50,ViT-B-16", "--scorer", "RN50=a", "--coordinator", "b"]) == 2
    assert "--scorer: no target for backbones ['ViT-B-16']" in capsys.readouterr().err
    # One coordinator for every backbone: the per-backbone form of earlier versions is refused.
    assert main([*base, "--scorer", "RN50=a", "--coordinator", "RN50=b"]) == 2
    assert "give one TARGET; every backbone searches through one coordinator" in capsys.readouterr().err
    assert main([*base, "--scorer", "a", "--coordinator", "b", "--coordinator", "c"]) == 2
    assert "give one TARGET" in capsys.readouterr().err
    assert main([*base, "--scorer", "a"]) == 2
    assert "give the coordinator (--coordinator TARGET) or --start-services" in capsys.readouterr().err
    assert main([*base, "--scorer", "a", "--coordinator", "b", "--parallel", "0"]) == 2
    assert "--parallel must be at least 1" in capsys.readouterr().err
    assert main([*base, "--start-services"]) == 2
    assert "needs --llm-base-url and --llm-model" in capsys.readouterr().err
    assert main([*base, "--datasets", "dtd,imagenet", "--scorer", "a", "--coordinator", "b"]) == 2
    assert "imagenet" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_start_services_runs_everything_in_one_command(tmp_path: Path) -> None:
    def reply(_body: dict[str, Any]) -> str:
        return json.dumps({"templates": ["a tiny photo of a {}.", "a sketch of a {}."]})

    data = tmp_path / "data"
    make_coop_dataset(
        data,
        "dtd",
        "split_zhou_DescribableTextures.json",
        "images",
        ["dots", "lines"],
        {"train": 2, "test": 2},
    )
    model = make_tiny_model_dir(tmp_path / "model")
    env = test_env()
    with FakeOpenAI(default=reply) as llm:
        argv = [
            sys.executable, "-m", "promptclimb", "reproduce", "--data-root", str(data),
            "--out", str(tmp_path / "out"), "--backbones", "tiny", "--seeds", "3", "--profile", "released",
            "--iterations", "1", "--pool", "basic", "--start-services",
            "--model-map", f"tiny=local-dir:{model}",
            "--llm-base-url", llm.base_url, "--llm-model", "fake-model",
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=150,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["backbone"], r["dataset"], r["seeds"]) for r in rows] == [
        ("tiny", "dtd", "1"),
        ("tiny", "Average", "1"),
    ]
    assert 0.0 <= float(rows[0]["found_mean"]) <= 1.0 and float(rows[0]["llm_calls"]) == 1
    # The released profile was sent: contrast, 3 best / 3 worst, temperature 1.
    assert len(llm.requests) == 1 and llm.requests[0].get("temperature") == 1.0
    # One coordinator (one store) served the backbone as model "tiny", the id its scorer was given.
    assert (tmp_path / "out" / "services" / "searches.db").exists()
    with (tmp_path / "out" / "cells.csv").open() as f:
        assert [c["model"] for c in csv.DictReader(f)] == ["tiny"]
