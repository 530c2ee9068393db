"""A scorer process over a damaged or full feature cache: it starts, says why, and scores right.

Every cache file (the features of each split and the file-digest memo) is truncated or garbled
between two runs of a real ``promptclimb serve scorer``; the restarted scorer must become SERVING,
log each bad file by its path, and give the counts of an independent open_clip computation. On a
real 1 MiB tmpfs filled to the last byte (where the test may mount one), the cache cannot be
written at all: the scorer is SERVING all the same, ListDatasets says why each split is not
cached, and once space is back a registration writes the cache again.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from tests.scorer.conftest import TEMPLATES, paper_scores
from tests.support.processes import ServedProcess, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 7):  # every seventh byte: headers and data alike
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def scores(proc: ServedProcess, templates: list[str]) -> list[int]:
    with grpc.insecure_channel(proc.target) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        request = scorer_pb2.EvaluatePromptsRequest(dataset="demo", split="test", templates=templates)
        return [s.correct for s in stub.EvaluatePrompts(request, timeout=30).scores]


def datasets(proc: ServedProcess) -> dict[str, scorer_pb2.Dataset]:
    with grpc.insecure_channel(proc.target) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        return {d.id: d for d in stub.ListDatasets(scorer_pb2.ListDatasetsRequest(), timeout=10).datasets}


def logged(proc: ServedProcess, message: str) -> list[dict[str, object]]:
    """The scorer's JSON log records with ``message``."""
    out = []
    for line in proc.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("msg") == message:
            out.append(record)
    return out


@pytest.mark.parametrize("damage", [truncate, garble], ids=["truncated", "garbled"])
def test_a_scorer_restarted_over_damaged_cache_files_serves_the_right_counts(
    tiny_model: Path, images: Path, tmp_path: Path, damage: object
) -> None:
    cache = tmp_path / "cache"
    flags = ("--model", f"local-dir:{tiny_model}", "--dataset", f"demo={images}", "--cache-dir", str(cache))
    first = serve("scorer", *flags)
    try:
        first.wait_serving()
    finally:
        assert first.stop() == 0
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    features = [p for p in files if p.suffix == ".safetensors"]
    assert len(features) == 2 and cache / "file-digests.sqlite" in files  # train, test, the memo
    for f in files:
        damage(f)  # type: ignore[operator]

    again = serve("scorer", *flags)
    try:
        again.wait_serving()
        _classes, flags_per_template = paper_scores(tiny_model, images, "test", TEMPLATES)
        assert scores(again, TEMPLATES) == [sum(f) for f in flags_per_template]
        demo = datasets(again)["demo"]
        assert {s.features_source for s in demo.splits} == {scorer_pb2.FEATURES_SOURCE_COMPUTED}
    finally:
        assert again.stop() == 0
    assert {str(r["path"]) for r in logged(again, "bad feature cache file, recomputing")} == {
        str(f) for f in features
    }
    if damage is garble:  # a truncated SQLite file may still open (its lost pages were empty)
        assert [r["path"] for r in logged(again, "file-digest memo is damaged, rebuilding it")] == [
            str(cache / "file-digests.sqlite")
        ]

    third = serve("scorer", *flags)  # the recomputed cache is whole again
    try:
        third.wait_serving()
        demo = datasets(third)["demo"]
        assert {s.features_source for s in demo.splits} == {scorer_pb2.FEATURES_SOURCE_CACHE}
        assert scores(third, TEMPLATES) == [sum(f) for f in flags_per_template]
    finally:
        assert third.stop() == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs of the test's own (skipped where one can not be mounted)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"can not mount a tmpfs here (root with CAP_SYS_ADMIN needed): {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill ``folder``'s filesystem to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as err:
                    if err.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def test_a_full_cache_disk_keeps_the_scorer_serving_from_memory(
    tiny_model: Path, images: Path, small_disk: Path
) -> None:
    cache = small_disk / "cache"
    cache.mkdir()
    filler = fill(small_disk)
    proc = serve(
        "scorer",
        *("--model", f"local-dir:{tiny_model}", "--dataset", f"demo={images}", "--cache-dir", str(cache)),
    )
    try:
        proc.wait_serving()
        _classes, flags_per_template = paper_scores(tiny_model, images, "test", TEMPLATES)
        assert scores(proc, TEMPLATES) == [sum(f) for f in flags_per_template]
        demo = datasets(proc)["demo"]
        assert demo.ready
        assert all("No space left on device" in s.cache_error for s in demo.splits), demo.splits
        assert not list(cache.rglob("*.safetensors"))

        filler.unlink()  # space is back: the next registration writes the cache
        with grpc.insecure_channel(proc.target) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            stub.RegisterDataset(
                scorer_pb2.RegisterDatasetRequest(
                    id="again", image_folder=scorer_pb2.ImageFolderSource(path=str(images))
                ),
                timeout=30,
            )
            deadline = time.monotonic() + 60
            while not datasets(proc)["again"].ready:
                assert time.monotonic() < deadline, "the second registration never became ready"
                time.sleep(0.02)
        assert [s.cache_error for s in datasets(proc)["again"].splits] == ["", ""]
        assert len(list((cache / "features").glob("*.safetensors"))) == 2
    finally:
        assert proc.stop() == 0
