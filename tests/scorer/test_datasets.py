"""Dataset sources: ImageFolder, CoOp split JSON with CoOp's few-shot sampling, .npz arrays."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from promptclimb.testing.tiny_clip import make_image_folder
from services.scorer.datasets import (
    DatasetError,
    FileDigests,
    coop_fewshot,
    load_image_folder,
    parse_dataset_spec,
)


def test_image_folder_orders_classes_by_folder_and_names_them(tmp_path: Path) -> None:
    root = make_image_folder(
        tmp_path / "t", classes=["zebra_fish", "apple", "Big_Cat"], per_split={"train": 1, "val": 2}
    )
    ds = load_image_folder("t", root)
    assert ds.class_names == ["Big Cat", "apple", "zebra fish"]
    assert {n: len(s) for n, s in ds.splits.items()} == {"train": 3, "val": 6}
    assert ds.splits["val"].labels == [0, 0, 1, 1, 2, 2]
    # The content hash changes when an image's bytes change.
    before = ds.splits["train"].fingerprint()
    img = next((root / "train" / "apple").glob("*.png"))
    img.write_bytes(img.read_bytes() + b"\0")
    assert load_image_folder("t", root).splits["train"].fingerprint() != before


def test_file_digest_memo_gives_the_same_key_and_reads_only_touched_files(tmp_path: Path) -> None:
    import os

    root = make_image_folder(tmp_path / "t", classes=["a", "b"], per_split={"train": 3})
    split = load_image_folder("t", root).splits["train"]
    memo_file = tmp_path / "cache" / "file-digests.sqlite"
    with FileDigests(memo_file) as memo:
        first = split.fingerprint(memo)
    assert first == split.fingerprint() and memo.read == 6  # the same key as hashing directly
    with FileDigests(memo_file) as memo:  # a restart: nothing is read again
        assert split.fingerprint(memo) == first and memo.read == 0

    # New bytes of the same size with the old mtime restored: taken as unchanged (make's rule),
    # which shows the bytes were not read. Touching the file makes it be read again.
    img = next((root / "train" / "a").glob("*.png"))
    stat = img.stat()
    img.write_bytes(bytes(255 - b for b in img.read_bytes()))
    os.utime(img, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with FileDigests(memo_file) as memo:
        assert split.fingerprint(memo) == first and memo.read == 0
    os.utime(img, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with FileDigests(memo_file) as memo:
        changed = split.fingerprint(memo)
        assert changed != first and changed == split.fingerprint() and memo.read == 1


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        load_image_folder("x", tmp_path / "missing")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no \.png"):
        load_image_folder("x", tmp_path / "empty")


def _coop_reference(train: list[list], shots: int, seed: int) -> list[str]:
    """CoOp's own steps: random.seed(seed); per label (first-seen order) random.sample(items, shots)."""
    random.seed(seed)
    tracker: dict[int, list] = {}
    for item in train:
        tracker.setdefault(item[1], []).append(item)
    out = []
    for items in tracker.values():
        out.extend(random.sample(items, shots) if len(items) >= shots else items)
    return [i[0] for i in out]


def test_coop_sampling_matches_coop(tmp_path: Path) -> None:
    rows = [[f"c{label}/{i}.png", label, f"class {label}"] for i in range(7) for label in (2, 0, 1)]
    idx = coop_fewshot(rows, [r[1] for r in rows], 2, random.Random(3))
    assert [rows[i][0] for i in idx] == _coop_reference(rows, 2, 3)
    assert len(idx) == 6


def test_coop_spec_builds_splits_with_shots(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=["a", "b"], per_split={"all": 5})
    entries = [[f"all/{c}/{i}.png", li, c] for li, c in enumerate("ab") for i in range(5)]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": entries, "val": entries, "test": entries}))
    spec = parse_dataset_spec(f"pets=coop:split_json={split},root={tmp_path / 'imgs'},shots=1,seed=2")
    ds = spec.load()
    assert ds.class_names == ["a", "b"]
    assert {n: len(s) for n, s in ds.splits.items()} == {"train": 2, "val": 2, "test": 10}
    assert ds.splits["train"].labels == [0, 1]
    with pytest.raises(DatasetError, match="unknown keys"):
        parse_dataset_spec("x=coop:split_json=a,root=b,shot=1")


def test_npz_array_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "arr.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
        train_labels=np.array([0, 1, 0, 1]),
        class_names=np.array(["shirt", "boot"]),
    )
    ds = parse_dataset_spec(f"fm={path}").load()
    assert ds.class_names == ["shirt", "boot"]
    assert ds.splits["train"].labels == [0, 1, 0, 1]
    assert ds.splits["train"].load(0).size == (28, 28)


def test_spec_syntax() -> None:
    assert parse_dataset_spec("demo=/data/x").kind == "imagefolder"
    assert parse_dataset_spec("demo=npz:/data/x").kind == "npz"
    with pytest.raises(DatasetError):
        parse_dataset_spec("no-equals-sign")
