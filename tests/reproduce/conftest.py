"""Fixtures of the reproduce tests: tiny datasets in CoOp's layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from promptclimb.testing.tiny_clip import make_image_folder


def make_coop_dataset(
    data_root: Path,
    folder: str,
    split_file: str,
    image_dir: str,
    classes: list[str],
    per_split: dict[str, int],
    seed: int = 0,
) -> Path:
    """``data_root/folder/split_file`` listing generated images under ``data_root/folder/image_dir``.

    Entries are CoOp's ``[relative_path, label, classname]``.
    """
    images = data_root / folder / image_dir
    make_image_folder(images, classes, per_split, seed=seed)
    split: dict[str, list[list[object]]] = {}
    for name in per_split:
        split[name] = [
            [f"{name}/{c}/{i}.png", label, c.replace("_", " ")]
            for label, c in enumerate(classes)
            for i in range(per_split[name])
        ]
    path = data_root / folder / split_file
    path.write_text(json.dumps(split))
    return path
