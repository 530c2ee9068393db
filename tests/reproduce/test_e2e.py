"""End to end: `promptclimb reproduce` against real services (tiny CLIP, scripted LLM), killed and resumed.

Two backbones (two different tiny CLIPs, each its own scorer process) are two models of one
coordinator process; cells run two at a time.
"""

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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.api.v1 import coordinator_pb2_grpc
from promptclimb.client import CoordinatorClient, ScorerClient
from promptclimb.local import stop_services
from promptclimb.reproduce.driver import Services
from promptclimb.reproduce.local_services import start_services
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_tiny_model_dir
from tests.reproduce.conftest import make_coop_dataset
from tests.support.processes import serve, test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
ENV = test_env()
BACKBONES = ["RN50", "ViT-B-16"]
MODEL_IDS = {"RN50": "rn50", "ViT-B-16": "vit-b-16"}  # the slugs --start-services serves them under
DATASETS = ["oxford_pets", "eurosat"]
SEEDS = [1, 2]
CELLS = len(BACKBONES) * len(DATASETS) * len(SEEDS)


@dataclass
class FirstTwoAtOnce:
    """The scripted LLM: its first request waits (60 s at most) until a second one comes in.

    When the second comes, both wait on the LLM, so their searches are running: the coordinator
    is asked then which searches it runs (``running``). A reproduce that ran one cell at a time
    would leave ``running`` at one search (or None).
    """

    coordinator: str = ""
    running: list[pb.Search] | None = None
    _count: itertools.count[int] = field(default_factory=itertools.count)
    _second: threading.Event = field(default_factory=threading.Event)

    def __call__(self, _body: dict[str, Any]) -> str:
        n = next(self._count)
        if n == 0:
            self._second.wait(timeout=60)
        elif n == 1:
            with grpc.insecure_channel(self.coordinator) as channel:
                reply = coordinator_pb2_grpc.CoordinatorServiceStub(channel).ListSearches(
                    pb.ListSearchesRequest(state=pb.SEARCH_STATE_RUNNING, page_size=50), timeout=10
                )
            self.running = list(reply.searches)
            self._second.set()
        time.sleep(0.05)  # searches take long enough to be killed in the middle
        return json.dumps({"templates": [f"a photo of a {{}}, take {n}.", f"a blurry {{}} number {n}."]})


@dataclass
class Fleet:
    services: Services
    llm: FirstTwoAtOnce


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One optimizer on the scripted LLM, a scorer per backbone, one coordinator serving both."""
    root = tmp_path_factory.mktemp("fleet")
    script = FirstTwoAtOnce()
    models = {b: make_tiny_model_dir(root / f"model-{b}", seed=i) for i, b in enumerate(BACKBONES)}
    with FakeOpenAI(default=script) as llm:
        args = argparse.Namespace(
            model_map=[f"{b}=local-dir:{p}" for b, p in models.items()],
            llm_base_url=llm.base_url,
            llm_model="fake-model",
            llm_api_key_file=None,
            device=None,
            lease_seconds=5.0,
            startup_timeout=120.0,
            parallel=2,
        )
        os.environ.update(
            {k: ENV[k] for k in ("OMP_NUM_THREADS", "PROMPTCLIMB_SCORER_THREADS", "HF_HUB_OFFLINE")}
        )
        services, procs = start_services(args, BACKBONES, root / "services")
        script.coordinator = services.coordinator
        try:
            yield Fleet(services, script)
        finally:
            stop_services(procs)


def _argv(data: Path, out: Path, services: Services) -> list[str]:
    argv = [
        sys.executable, "-m", "promptclimb", "reproduce", "--data-root", str(data), "--out", str(out),
        "--backbones", ",".join(BACKBONES), "--seeds", ",".join(map(str, SEEDS)), "--shots", "1",
        "--profile", "paper", "--restarts", "1", "--iterations", "2", "--templates-per-iteration", "2",
        "--pool", "basic", "--parallel", "2", "--coordinator", services.coordinator,
    ]  # fmt: skip
    for b, target in services.scorers.items():
        argv += ["--scorer", f"{b}={target}"]
    return argv


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _make_data(data: Path) -> None:
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


def test_reproduce_runs_two_cells_at_once_on_one_coordinator_and_resumes_after_a_kill(
    tmp_path: Path, fleet: Fleet
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    _make_data(data)
    argv = _argv(data, out, fleet.services)
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
    records = {r["search"]: r for r in map(json.loads, cells_file.read_text().splitlines())}
    assert asyncio.run(_check_two_at_once(fleet))
    assert asyncio.run(_check_against_services(cells, records, out, fleet.services))


async def _check_two_at_once(fleet: Fleet) -> bool:
    # While the first LLM call waited, the coordinator ran two searches: one per backbone.
    running = fleet.llm.running
    assert running is not None and len(running) == 2, [s.spec.display_name for s in running or []]
    assert sorted(s.spec.model for s in running) == sorted(MODEL_IDS.values())
    # And by its own clock their runs overlap: each started (end - wall seconds) before the other ended.
    async with CoordinatorClient(fleet.services.coordinator) as client:
        a, b = [await client.get(s.name) for s in running]
    ends = [s.end_time.ToNanoseconds() / 1e9 for s in (a, b)]
    spans = [(end - s.wall_seconds, end) for s, end in zip((a, b), ends, strict=True)]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    return True


async def _check_against_services(
    cells: list[dict[str, str]], records: dict[str, dict[str, Any]], out: Path, services: Services
) -> bool:
    # Each backbone's scorer reports the model id its cells searched on.
    for backbone, target in services.scorers.items():
        async with ScorerClient(target) as scorer:
            assert (await scorer.model_info()).model_id == MODEL_IDS[backbone]

    # One search per cell on the one coordinator (the search left running by the kill was reused),
    # on its backbone's model, transferring to the other's.
    async with CoordinatorClient(services.coordinator) as client:
        listed = await client.list()
        assert sorted(s.name for s in listed) == sorted(c["search"] for c in cells)
        for c in cells:
            s = await client.get(c["search"])
            (other,) = [b for b in BACKBONES if b != c["backbone"]]
            assert s.spec.dataset == f"{c['dataset']}-1shot-seed{c['seed']}"
            assert s.spec.model == c["model"] == MODEL_IDS[c["backbone"]]
            assert list(s.spec.transfer_models) == [MODEL_IDS[other]]
            assert c["best_template"] == s.result.best.template
            assert float(c["found_test"]) == pytest.approx(s.result.best_evaluation_accuracy)
            assert float(c["ensemble_test"]) == pytest.approx(s.result.ensemble_evaluation_accuracy)
            assert c["ensemble_templates"].split("|") == list(s.result.ensemble_templates)
            assert int(c["llm_calls"]) == s.usage.llm_calls == 2
            assert int(c["prompt_tokens"]) + int(c["completion_tokens"]) == (
                s.usage.prompt_tokens + s.usage.completion_tokens
            )
            (t,) = s.result.transfer
            assert records[c["search"]]["transfer"][other]["found_test"] == t.best_evaluation_accuracy

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

    # Hand-written numbers are what the own scorer gives; transfer numbers what the target's scorer
    # gives for the found prompt and the ensemble on test.
    transfer = {(r["source"], r["target"], r["dataset"]): r for r in _rows(out / "transfer.csv")}
    for source, target in itertools.permutations(BACKBONES, 2):
        for name in DATASETS:
            mine = [c for c in cells if c["backbone"] == source and c["dataset"] == name]
            found, ensemble = [], []
            for c in mine:
                dataset = f"{name}-1shot-seed{c['seed']}"
                own = await _test_accuracy(services.scorers[source], dataset, [c["handwritten_template"]])
                assert float(c["handwritten_test"]) == pytest.approx(own)
                found.append(await _test_accuracy(services.scorers[target], dataset, [c["best_template"]]))
                ensemble.append(
                    await _test_accuracy(
                        services.scorers[target], dataset, c["ensemble_templates"].split("|")
                    )
                )
            row = transfer[(source, target, name)]
            assert float(row["found_mean"]) == pytest.approx(statistics.fmean(found))
            assert float(row["ensemble_mean"]) == pytest.approx(statistics.fmean(ensemble))
            assert int(row["seeds"]) == len(SEEDS)
    md = (out / "results.md").read_text()
    assert "## Transfer across backbones" in md and "| OxfordPets | 2 |" in md
    return True


async def _test_accuracy(scorer: str, dataset: str, templates: list[str]) -> float:
    """Test accuracy of one template, or of the ensemble of several, straight from a scorer."""
    async with ScorerClient(scorer, timeout=30) as client:
        if len(templates) == 1:
            return (await client.evaluate(dataset, "test", templates)).scores[0].accuracy
        return (await client.evaluate_ensemble(dataset, "test", templates)).score.accuracy


def test_a_backbone_the_coordinator_does_not_serve_is_refused_naming_its_model(
    tmp_path: Path, fleet: Fleet
) -> None:
    data = tmp_path / "data"
    _make_data(data)
    scorers = fleet.services.scorers
    only_rn50 = serve(
        "coordinator",
        "--scorer", f"rn50={scorers['RN50']}", "--optimizer", "127.0.0.1:1",
        "--store", str(tmp_path / "other.db"),
        metrics=False,
    )  # fmt: skip
    try:
        only_rn50.wait_serving()
        argv = _argv(data, tmp_path / "out", Services(only_rn50.target, scorers))
        done = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60)
    finally:
        only_rn50.stop()
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"does not serve model 'vit-b-16' (the scorer of ViT-B-16, {scorers['ViT-B-16']})" in done.stderr
    assert "its models: rn50" in done.stderr

    # Two backbones given the same scorer are one model: refused before anything runs.
    same = Services(fleet.services.coordinator, {b: scorers["RN50"] for b in BACKBONES})
    done = subprocess.run(
        _argv(data, tmp_path / "out", same), capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60
    )
    assert done.returncode == 2 and "are served as one model ('rn50')" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out" / "cells.jsonl").exists()
