"""Test fixtures made on the fly: a tiny random-weight open_clip model and small image sets.

No model hub is reachable here, so tests build a CLIP of the real architecture family at toy
size (a forward of 32 images takes milliseconds) and save it as an open_clip ``local-dir`` folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

TINY_CLASSES = ["red_square", "blue_circle", "green_cross", "white_noise", "black_bar"]


def make_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a random-weight tiny CLIP as ``local-dir`` (open_clip_config.json + weights)."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    tiny = CLIP(**TINY_CONFIG)  # type: ignore[arg-type]
    config = {
        "model_cfg": TINY_CONFIG,
        "preprocess_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    torch.save(tiny.state_dict(), path / "open_clip_pytorch_model.bin")
    return path


def make_image_folder(
    root: Path,
    classes: list[str] | None = None,
    per_split: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<i>.png``: per class a colour pattern plus noise."""
    from PIL import Image

    classes = classes or TINY_CLASSES
    per_split = per_split or {"train": 2, "test": 4}
    rng = random.Random(seed)
    for split, count in per_split.items():
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = ((ci * 53) % 256, (ci * 101) % 256, (ci * 197) % 256)
                img = Image.new("RGB", (size, size), base)
                px = img.load()
                assert px is not None
                for _ in range(size * 4):
                    x, y = rng.randrange(size), rng.randrange(size)
                    px[x, y] = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
                img.save(folder / f"{i}.png")
    return root
