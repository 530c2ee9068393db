"""Fashion-MNIST as the demo's real image set, read from the Debian package ``dataset-fashion-mnist``.

The package (MIT/Expat, Zalando SE) installs the four IDX files under
``/usr/share/datasets/fashion-mnist``. Training of the bundled model reads the *train* IDX files;
the demo's ImageFolder set draws its few-shot splits from the train IDX files as well and its
``test`` split only from the *test* IDX files, which the model never saw.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import struct
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("PROMPTCLIMB_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

#: Class names in natural form, index = Fashion-MNIST label.
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

#: Split name -> images per class drawn from Fashion-MNIST's train set (few-shot splits).
FEW_SHOT_SPLITS: dict[str, tuple[int, int]] = {"train": (1, 1), "train16": (16, 1)}
TEST_PER_CLASS = 100  # 1,000 test images: enough to tell prompts apart by a point
TEST_SEED = 0
_LAYOUT_VERSION = 1  # bump when the on-disk layout or the selection changes

_INSTALL_HINT = (
    "Fashion-MNIST not found at {path}: install the Debian package with "
    "`apt-get install -y dataset-fashion-mnist` or set PROMPTCLIMB_FASHION_MNIST_DIR"
)


def folder_name(class_name: str) -> str:
    """ImageFolder folder of a class: spaces become underscores (``ankle boot`` -> ``ankle_boot``)."""
    return class_name.replace(" ", "_")


def _idx_path(split: str, kind: str, source: Path) -> Path:
    prefix = "train" if split == "train" else "t10k"
    path = source / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(_INSTALL_HINT.format(path=path))
    return path


def load_fashion_mnist(split: str, source: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, 28, 28], labels int64 [N])`` of Fashion-MNIST ``train`` or ``test``."""
    import numpy as np

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    source = source or FASHION_MNIST_DIR
    with gzip.open(_idx_path(split, "images", source), "rb") as f:
        _magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        images = np.frombuffer(f.read(), dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(_idx_path(split, "labels", source), "rb") as f:
        _magic, count = struct.unpack(">II", f.read(8))
        labels = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
    return images, labels


def pick_per_class(labels: np.ndarray, per_class: int, seed: int) -> list[int]:
    """Indices of ``per_class`` images of every class, drawn with a fixed seed.

    Each class has its own seeded shuffle and the first ``per_class`` are taken, so smaller
    splits of one seed are nested in larger ones (the 1-shot image is one of the 16 shots).
    """
    picked: list[int] = []
    for label in range(len(CLASS_NAMES)):
        candidates = [int(i) for i in (labels == label).nonzero()[0]]
        random.Random(seed * 1000 + label).shuffle(candidates)
        picked.extend(sorted(candidates[:per_class]))
    return picked


def _write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, idx: list[int]) -> None:
    from PIL import Image

    for i in idx:
        folder = root / split / folder_name(CLASS_NAMES[int(labels[i])])
        folder.mkdir(parents=True, exist_ok=True)
        # The file name keeps the Fashion-MNIST index so every image can be traced to its source.
        Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")


_README = """\
# promptclimb demo images (Fashion-MNIST)

Made by `promptclimb.demo.data.build_demo_dataset` from the Debian package
`dataset-fashion-mnist` (Fashion-MNIST by Zalando SE, https://github.com/zalandoresearch/fashion-mnist).

- `train/`   1 image per class (seed 1) from Fashion-MNIST's training set: the 1-shot selection split
- `train16/` 16 images per class (seed 1) from Fashion-MNIST's training set: the 16-shot split
- `test/`    {test} images per class (seed {test_seed}) from Fashion-MNIST's *test* set, which the bundled
             demo model never saw in training

File names are the image's index in its Fashion-MNIST set. Folder names are the class names with
`_` for a space.

## Licence

Fashion-MNIST is released under the MIT licence:

Copyright (c) 2017 Zalando SE

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT
OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def build_demo_dataset(root: Path | str, source: Path | None = None) -> Path:
    """Write the demo ImageFolder set under ``root`` and return ``root``.

    Splits: ``train`` (1-shot), ``train16`` (16-shot), both from Fashion-MNIST's training set with
    seed 1, and ``test`` (1,000 images, 100 per class) from Fashion-MNIST's test set. Idempotent:
    a complete set of the same layout version is left untouched, so a second demo run reuses it
    (and the scorer's feature cache keyed by its content).
    """
    root = Path(root)
    marker = root / "COMPLETE.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == _LAYOUT_VERSION:
                return root
        except ValueError:
            pass  # a torn marker: rebuild below
    root.mkdir(parents=True, exist_ok=True)

    train_images, train_labels = load_fashion_mnist("train", source)
    for split, (shots, seed) in FEW_SHOT_SPLITS.items():
        _write_split(root, split, train_images, train_labels, pick_per_class(train_labels, shots, seed))
    test_images, test_labels = load_fashion_mnist("test", source)
    test_idx = pick_per_class(test_labels, TEST_PER_CLASS, TEST_SEED)
    _write_split(root, "test", test_images, test_labels, test_idx)

    (root / "README.md").write_text(_README.format(test=TEST_PER_CLASS, test_seed=TEST_SEED))
    counts = {split: shots * len(CLASS_NAMES) for split, (shots, _) in FEW_SHOT_SPLITS.items()}
    counts["test"] = len(test_idx)
    # Written last: its presence means every PNG above is complete.
    marker.write_text(json.dumps({"version": _LAYOUT_VERSION, "images": counts}, indent=2))
    return root


def selection_set(state: Path, shots: int, seed: int, source: Path | None = None) -> Path:
    """An ImageFolder with a fresh ``train`` split (``shots`` per class, ``seed``) and the demo's ``test``.

    For benchmarks over many selection splits: ``test`` is a link to the demo set's 1,000 test
    images (so every split is judged on the same images and the scorer's cache serves them once).
    """
    base = build_demo_dataset(state / "data", source)
    root = state / "splits" / f"{shots}shot-seed{seed}"
    if not (root / "test").exists():
        images, labels = load_fashion_mnist("train", source)
        _write_split(root, "train", images, labels, pick_per_class(labels, shots, seed))
        (root / "test").symlink_to((base / "test").resolve(), target_is_directory=True)
    return root
