"""End to end: `promptclimb reproduce` against real services (tiny CLIP, scripted LLM), killed and resumed."""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb.client import CoordinatorClient
from promptclimb.common.channels import open_channel
from promptclimb.local import stop_services
from promptclimb.reproduce.driver import Endpoints
from promptclimb.reproduce.local_services import start_services
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_tiny_model_dir
from tests.reproduce.conftest import make_coop_dataset
from tests.support.processes import test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
ENV = test_env()
BACKBONES = ["RN50", "ViT-B-16"]
DATASETS = ["oxford_pets", "eurosat"]
SEEDS = [1, 2]
CELLS = len(BACKBONES) * len(DATASETS) * len(SEEDS)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[dict[str, Endpoints], FakeOpenAI]]:
    """One optimizer on a scripted LLM; per backbone (two different tiny CLIPs) a scorer and a coordinator."""
    counter = itertools.count()

    def reply(_body: dict[str, Any]) -> str:
        n = next(counter)
        time.sleep(0.05)  # searches take long enough to be killed in the middle
        return json.dumps({"templates": [f"a photo of a {{}}, take {n}.", f"a blurry {{}} number {n}."]})

    models = {b: make_tiny_model_dir(tmp_path / f"model-{b}", seed=i) for i, b in enumerate(BACKBONES)}
    with FakeOpenAI(default=reply) as llm:
        args = argparse.Namespace(
            model_map=[f"{b}=local-dir:{p}" for b, p in models.items()],
            llm_base_url=llm.base_url,
            llm_model="fake-model",
            llm_api_key_file=None,
            device=None,
            lease_seconds=5.0,
            startup_timeout=120.0,
        )
        os.environ.update(
            {k: ENV[k] for k in ("OMP_NUM_THREADS", "PROMPTCLIMB_SCORER_THREADS", "HF_HUB_OFFLINE")}
        )
        endpoints, procs = start_services(args, BACKBONES, tmp_path / "services")
        try:
            yield endpoints, llm
        finally:
            stop_services(procs)


def _argv(data: Path, out: Path, endpoints: dict[str, Endpoints]) -> list[str]:
    argv = [
        sys.executable, "-m", "promptclimb", "reproduce", "--data-root", str(data), "--out", str(out),
        "--backbones", ",".join(BACKBONES), "--seeds", ",".join(map(str, SEEDS)), "--shots", "1",
        "--profile", "paper", "--restarts", "1", "--iterations", "2", "--templates-per-iteration", "2",
        "--pool", "basic",
    ]  # fmt: skip
    for b, e in endpoints.items():
        argv += ["--scorer", f"{b}={e.scorer}", "--coordinator", f"{b}={e.coordinator}"]
    return argv


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_reproduce_writes_the_searches_results_and_resumes_after_a_kill(
    tmp_path: Path, services: tuple[dict[str, Endpoints], FakeOpenAI]
) -> None:
    endpoints, _llm = services
    data, out = tmp_path / "data", tmp_path / "out"
    classes = ["red_square", "blue_circle", "green_cross"]
    make_coop_dataset(
        data,
        "oxford_pets",
        "split_zhou_OxfordPets.json",
        "images",
        classes,
        {"train": 2, "val": 1, "test": 3},
    )
    make_coop_dataset(
        data, "eurosat", "split_zhou_EuroSAT.json", "2750", classes[:2], {"train": 2, "test": 4}, seed=1
    )
    argv = _argv(data, out, endpoints)
    cells_file = out / "cells.jsonl"

    # First run: SIGKILL as soon as the first cell is on disk.
    first = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=(tmp_path / "first.log").open("w"), env=ENV, cwd=ROOT
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if cells_file.exists() and cells_file.read_text().count("\n") >= 1:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    finished_first = [json.loads(line)["key"] for line in cells_file.read_text().splitlines()]
    assert 1 <= len(finished_first) < CELLS
    assert not (out / "results.csv").exists()

    # Second run: only the missing cells run.
    second = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=240)
    assert second.returncode == 0, second.stderr[-4000:]
    log = second.stderr.splitlines()
    ran = [line.split()[1] for line in log if line.startswith("run ")]
    skipped = [line.split()[1] for line in log if line.startswith("skip ")]
    assert sorted(skipped) == sorted(finished_first)
    assert len(ran) == CELLS - len(finished_first) and not set(ran) & set(finished_first)

    # A third run has nothing left to do.
    third = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert third.returncode == 0 and "\nrun " not in "\n" + third.stderr, third.stderr[-3000:]

    cells = _rows(out / "cells.csv")
    assert len(cells) == CELLS
    assert asyncio.run(_check_against_services(cells, out, endpoints))


async def _check_against_services(
    cells: list[dict[str, str]], out: Path, endpoints: dict[str, Endpoints]
) -> bool:
    # One search per cell on each coordinator: the search left running by the kill was reused.
    for backbone, e in endpoints.items():
        async with CoordinatorClient(e.coordinator) as client:
            listed = await client.list()
            mine = [c for c in cells if c["backbone"] == backbone]
            assert sorted(s.name for s in listed) == sorted(c["search"] for c in mine)
            for c in mine:
                s = await client.get(c["search"])
                assert s.spec.dataset == f"{c['dataset']}-1shot-seed{c['seed']}"
                assert c["best_template"] == s.result.best.template
                assert float(c["found_test"]) == pytest.approx(s.result.best_evaluation_accuracy)
                assert float(c["ensemble_test"]) == pytest.approx(s.result.ensemble_evaluation_accuracy)
                assert c["ensemble_templates"].split("|") == list(s.result.ensemble_templates)
                assert int(c["llm_calls"]) == s.usage.llm_calls == 2
                assert int(c["prompt_tokens"]) + int(c["completion_tokens"]) == (
                    s.usage.prompt_tokens + s.usage.completion_tokens
                )

    # results.csv: per dataset mean ± std over the seeds' own results, and the average row.
    results = {(r["backbone"], r["dataset"]): r for r in _rows(out / "results.csv")}
    for backbone in BACKBONES:
        per_seed: dict[int, list[float]] = {}
        for name in DATASETS:
            found = [
                float(c["found_test"]) for c in cells if c["backbone"] == backbone and c["dataset"] == name
            ]
            row = results[(backbone, name)]
            assert float(row["found_mean"]) == pytest.approx(statistics.fmean(found))
            assert float(row["found_std"]) == pytest.approx(statistics.pstdev(found))
            for c in cells:
                if c["backbone"] == backbone and c["dataset"] == name:
                    per_seed.setdefault(int(c["seed"]), []).append(float(c["found_test"]))
        averages = [statistics.fmean(v) for v in per_seed.values()]
        assert float(results[(backbone, "Average")]["found_mean"]) == pytest.approx(
            statistics.fmean(averages)
        )

    # Hand-written and transfer numbers are what the scorers give for those templates on test.
    transfer = {(r["source"], r["target"], r["dataset"]): r for r in _rows(out / "transfer.csv")}
    for source, target in itertools.permutations(BACKBONES, 2):
        for name in DATASETS:
            mine = [c for c in cells if c["backbone"] == source and c["dataset"] == name]
            transferred = []
            for c in mine:
                dataset = f"{name}-1shot-seed{c['seed']}"
                own = await _test_accuracy(endpoints[source].scorer, dataset, c["handwritten_template"])
                assert float(c["handwritten_test"]) == pytest.approx(own)
                transferred.append(
                    await _test_accuracy(endpoints[target].scorer, dataset, c["best_template"])
                )
            assert float(transfer[(source, target, name)]["found_mean"]) == pytest.approx(
                statistics.fmean(transferred)
            )
    md = (out / "results.md").read_text()
    assert "## Transfer across backbones" in md and "| OxfordPets | 2 |" in md
    return True


async def _test_accuracy(scorer: str, dataset: str, template: str) -> float:
    async with open_channel(scorer) as channel:
        reply = await scorer_pb2_grpc.ScorerServiceStub(channel).EvaluatePrompts(
            scorer_pb2.EvaluatePromptsRequest(dataset=dataset, split="test", templates=[template]), timeout=30
        )
    return reply.scores[0].accuracy
