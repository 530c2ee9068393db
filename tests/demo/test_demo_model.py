"""The bundled demo model works zero-shot, prompts matter, and its data and training are reproducible."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.demo import check, data, train

needs_fashion_mnist = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    import torch

    torch.set_num_threads(2)


def test_weights_file_is_small_enough_to_ship() -> None:
    weights = list(check.MODEL_DIR.glob("*.safetensors"))
    assert len(weights) == 1
    assert weights[0].stat().st_size <= 30 * 1024 * 1024
    assert (check.MODEL_DIR / "open_clip_config.json").is_file()


@needs_fashion_mnist
def test_plain_template_works_and_wording_matters() -> None:
    # 40 test images per class: 400 held-out images, enough to see 10 points of spread.
    results = check.zero_shot_accuracies(check.CHECK_TEMPLATES, per_class=40)
    accuracies = [r.accuracy for r in results]
    assert len(results) == 30
    assert results[0].template == check.PLAIN_TEMPLATE
    assert results[0].accuracy >= 0.5
    assert max(accuracies) - min(accuracies) >= 0.10


@needs_fashion_mnist
def test_demo_dataset_has_the_promised_splits_and_is_idempotent(tmp_path: Path) -> None:
    root = data.build_demo_dataset(tmp_path / "fmnist")
    counts = {
        split: {p.name: len(list(p.glob("*.png"))) for p in (root / split).iterdir()}
        for split in ("train", "train16", "test")
    }
    folders = {data.folder_name(c) for c in data.CLASS_NAMES}
    assert "ankle_boot" in folders
    assert all(set(per_class) == folders for per_class in counts.values())
    assert set(counts["train"].values()) == {1}
    assert set(counts["train16"].values()) == {16}
    assert sum(counts["test"].values()) >= 1000
    assert "MIT" in (root / "README.md").read_text()

    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    assert data.build_demo_dataset(root) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before


@needs_fashion_mnist
def test_one_shot_image_is_in_the_sixteen_shot_split_and_test_images_are_held_out(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    root = data.build_demo_dataset(tmp_path / "fmnist")
    files = {split: sorted((root / split).rglob("*.png")) for split in ("train", "train16", "test")}
    names = {split: {p.name for p in paths} for split, paths in files.items()}
    assert names["train"] <= names["train16"]  # the 1-shot image is one of the 16 shots
    # Every PNG is the Fashion-MNIST image its name indexes: few-shot from train, test from test.
    for split, source in (("train16", "train"), ("test", "test")):
        images, labels = data.load_fashion_mnist(source)
        for path in files[split][::37]:
            index = int(path.stem)
            assert np.array_equal(np.asarray(Image.open(path)), images[index])
            assert data.folder_name(data.CLASS_NAMES[labels[index]]) == path.parent.name


def test_captions_vary_and_are_reproducible() -> None:
    def captions(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [train.make_caption(rng, i % 10, (i % 3, 1, 2), condition=i % 9) for i in range(300)]

    first = captions(3)
    assert first == captions(3)
    assert first != captions(4)
    assert len(set(first)) > 200  # varied wording, not one template
    assert all("{" not in caption for caption in first)
    boots = first[9::10]
    # Class name, synonyms (plain "boot" and others) and the image condition all show up.
    assert any("ankle boot" in c for c in boots) and any("ankle boot" not in c for c in boots)
    pixelated = [c for i, c in enumerate(first) if i % 9 == 3]
    assert all(any(w in c for w in train.CONDITIONS[3]) for c in pixelated)


def test_web_captions_use_loose_class_names_and_catalogue_captions_exact_ones() -> None:
    rng = random.Random(0)
    label = data.CLASS_NAMES.index("t-shirt")
    exact = ("t-shirt", "t shirt", "tshirt", "tee", "top")

    def loose_share(condition: int) -> float:
        caps = [train.make_caption(rng, label, (1, 1, 1), condition) for _ in range(500)]
        return sum("shirt" in c and not any(w in c for w in exact) for c in caps) / len(caps)

    # A loose web caption that also holds the category word "top" is not counted: a lower bound.
    assert 0.3 < loose_share(train.WEB) <= train.LOOSE
    assert loose_share(0) == 0.0


def test_web_photos_put_a_small_garment_on_a_light_background() -> None:
    import torch

    garment = torch.zeros(2, 1, 28, 28)
    garment[:, :, 4:24, 4:24] = 0.9
    out = train.apply_conditions(garment, torch.tensor([0, train.WEB]), torch.Generator().manual_seed(0))
    assert torch.equal(out[0], garment[0])  # a studio image is left as it is
    web = out[1, 0]
    assert (web < 0.05).sum() == 0  # no black background left
    assert web[web < 0.85].median() > 0.3  # a light one instead
    assert (web > 0.85).sum() < (garment[1, 0] > 0.85).sum()  # the garment shrank


@needs_fashion_mnist
def test_training_is_deterministic(tmp_path: Path) -> None:
    def digest(out: Path) -> str:
        train.train(out, epochs=1, batch_size=64, lr=1e-3, threads=2, limit=128)
        return hashlib.sha256((out / "open_clip_model.safetensors").read_bytes()).hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
