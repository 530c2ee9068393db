"""Image features of a (model, dataset, split): computed once, L2-normalised, cached on disk.

The cache file name is a content hash of the model's identity and weights, its preprocessing
and precision, and the split's image bytes and labels, so a restart (or another replica sharing
the folder) reuses features, and any change to weights or images computes them afresh. The image
files' digests are remembered by (path, size, mtime) in ``file-digests.sqlite`` next to the
features, so a restart reads only the files that are new or were touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.scorer.datasets import FileDigests, Split

log = logging.getLogger(__name__)


class FeaturesSource(StrEnum):
    """How a split's image features were obtained in this process (ListDatasets reports it)."""

    COMPUTED = "computed"  # encoded by the image tower (then cached when a cache folder is set)
    CACHE = "cache"  # read from the on-disk cache
    PROVIDED = "provided"  # handed over already computed (benchmarks, offline tools)


def feature_key(model_fingerprint: str, split: Split, memo: FileDigests | None = None) -> str:
    """The cache key of one split's features under one model (``memo``: known file digests)."""
    h = hashlib.sha256()
    h.update(model_fingerprint.encode())
    h.update(split.fingerprint(memo).encode())
    return h.hexdigest()[:32]


def compute_features(
    encode_images: Callable[[Any], Any],
    preprocess: Callable[[Any], Any],
    split: Split,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Encode every image of ``split`` (batched) and L2-normalise; returns a float32 CPU tensor."""
    import torch

    out = []
    n = len(split)
    for start in range(0, n, batch_size):
        batch = torch.stack([preprocess(split.load(i)) for i in range(start, min(n, start + batch_size))])
        feats = encode_images(batch).float()
        out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
        if progress:
            progress(min(n, start + batch_size), n)
    return torch.cat(out) if out else torch.empty(0)


def load_or_compute(
    cache_dir: Path | None,
    model_fingerprint: str,
    dataset_id: str,
    split: Split,
    encode_images: Callable[[Any], Any],
    preprocess: Callable[[Any], Any],
    batch_size: int = 64,
) -> tuple[Any, FeaturesSource]:
    """Features of ``split``, from the disk cache when present; returns (features, their source)."""
    import torch

    path: Path | None = None
    if cache_dir is not None:
        with FileDigests(Path(cache_dir) / "file-digests.sqlite") as memo:
            key = feature_key(model_fingerprint, split, memo)
        path = Path(cache_dir) / "features" / f"{key}.pt"
        if path.is_file():
            feats = torch.load(path, map_location="cpu", weights_only=True)
            log.info(
                "image features loaded from cache",
                extra={"dataset": dataset_id, "split": split.name, "images": len(split), "path": str(path)},
            )
            return feats, FeaturesSource.CACHE
    start = time.perf_counter()
    last_log = [start]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last_log[0] > 5 or done == total:  # a progress line every few seconds
            last_log[0] = now
            log.info(
                "encoding images",
                extra={"dataset": dataset_id, "split": split.name, "done": done, "total": total},
            )

    feats = compute_features(encode_images, preprocess, split, batch_size, progress)
    log.info(
        "image features computed",
        extra={
            "dataset": dataset_id,
            "split": split.name,
            "images": len(split),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(feats, tmp)
        os.replace(tmp, path)  # atomic, so a concurrent replica never reads half a file
    return feats, FeaturesSource.COMPUTED
