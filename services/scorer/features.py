"""Image features of a (model, dataset, split): computed once, L2-normalised, cached on disk.

The cache file name is a content hash of the model's identity and weights, its preprocessing
and precision, and the split's image bytes and labels, so a restart (or another replica sharing
the folder) reuses features, and any change to weights or images computes them afresh. The image
files' digests are remembered by (path, size, mtime) in ``file-digests.sqlite`` next to the
features, so a restart reads only the files that are new or were touched.

A cache is only ever a shortcut. Files are safetensors (no pickle: reading one runs no code),
written atomically (temporary file, fsync, rename) and verified on load: format version, model
and split keys, image count, shape, dtype and a SHA-256 of the data. A file that fails any check
(truncated, garbled, from another version, of another shape) is logged with its path, removed
and recomputed; a cache that cannot be written (a full disk) is logged and counted, and the
features are used from memory. While a split is encoded its features are written per chunk
under ``<key>.partial/``, so a scorer killed mid-way resumes from the chunks it wrote.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from services.scorer import metrics
from services.scorer.datasets import FileDigests, Split

log = logging.getLogger(__name__)

FORMAT = "promptclimb-features/2"  # bump when the layout or the meaning of a file changes
_TENSOR = "features"


class FeaturesSource(StrEnum):
    """How a split's image features were obtained in this process (ListDatasets reports it)."""

    COMPUTED = "computed"  # encoded by the image tower (then cached when a cache folder is set)
    CACHE = "cache"  # read from the on-disk cache
    PROVIDED = "provided"  # handed over already computed (benchmarks, offline tools)


class Stopped(Exception):
    """Encoding was asked to stop (the scorer is shutting down); what was written is kept."""


@dataclass(frozen=True)
class FeatureKey:
    """What a cache file must hold: features of this split under this model, ``images`` rows."""

    model: str  # the model's fingerprint (identity, weights, preprocessing, precision)
    split: str  # the split's content hash (image bytes and labels)
    images: int

    @property
    def name(self) -> str:
        """The file name stem: a hash of both keys."""
        return hashlib.sha256(f"{self.model}\0{self.split}".encode()).hexdigest()[:32]


class BadCacheFile(Exception):
    """A cache file that fails verification; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _checksum(array: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def encode_file(key: FeatureKey, feats: Any, start: int = 0) -> bytes:
    """The safetensors bytes of rows ``start..start+len(feats)`` of ``key``'s features."""
    from safetensors.numpy import save

    array = feats.numpy() if hasattr(feats, "numpy") else feats
    meta = {
        "format": FORMAT,
        "model": key.model,
        "split": key.split,
        "images": str(key.images),
        "start": str(start),
        "rows": str(array.shape[0]),
        "dim": str(array.shape[1]) if array.ndim == 2 else "-1",
        "dtype": str(array.dtype),
        "sha256": _checksum(array),
    }
    return bytes(save({_TENSOR: array}, metadata=meta))


def decode_file(data: bytes, key: FeatureKey, start: int = 0, rows: int | None = None) -> Any:
    """The float32 tensor of a cache file's bytes, verified against ``key``; else BadCacheFile."""
    import numpy as np
    import torch
    from safetensors.numpy import load

    try:
        size = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        array = load(data)[_TENSOR]
    except Exception as exc:
        raise BadCacheFile(
            "unreadable", f"not a readable safetensors file ({type(exc).__name__}: {exc})"
        ) from exc
    if meta.get("format") != FORMAT:
        raise BadCacheFile("format", f"format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("model") != key.model or meta.get("split") != key.split:
        raise BadCacheFile("key", "written for another model or split")
    want_rows = key.images - start if rows is None else rows
    if (
        meta.get("images") != str(key.images)
        or meta.get("start") != str(start)
        or array.ndim != 2
        or array.shape[0] != want_rows
        or meta.get("rows") != str(array.shape[0])
        or meta.get("dim") != str(array.shape[1])
    ):
        raise BadCacheFile("shape", f"shape {tuple(array.shape)} does not match {want_rows} images")
    if array.dtype != np.float32 or meta.get("dtype") != "float32":
        raise BadCacheFile("dtype", f"dtype {array.dtype}, expected float32")
    if meta.get("sha256") != _checksum(array):
        raise BadCacheFile("checksum", "checksum mismatch")
    return torch.from_numpy(array.copy())


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself survives a power cut once the folder is synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the data itself is synced


def write_error_reason(exc: OSError) -> str:
    """The bounded metric label of a failed cache write."""
    return "no_space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"


class FeatureCache:
    """The feature-cache folder (``None``: no cache): verified reads, atomic and chunked writes."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def key(self, model_fingerprint: str, split: Split) -> FeatureKey:
        """The key of ``split`` under the model, using (and healing) the file-digest memo."""
        if self.root is None:
            return FeatureKey(model_fingerprint, split.fingerprint(None), len(split))
        with FileDigests(self.root / "file-digests.sqlite") as memo:
            return FeatureKey(model_fingerprint, split.fingerprint(memo), len(split))

    def path(self, key: FeatureKey) -> Path:
        """Where ``key``'s whole features live."""
        assert self.root is not None
        return self.root / "features" / f"{key.name}.safetensors"

    def _partial(self, key: FeatureKey) -> Path:
        assert self.root is not None
        return self.root / "features" / f"{key.name}.partial"

    def _reject(self, path: Path, exc: BadCacheFile | OSError, where: dict[str, Any]) -> None:
        reason = exc.reason if isinstance(exc, BadCacheFile) else "unreadable"
        metrics.FEATURE_CACHE_REJECTED.labels(reason).inc()
        log.warning(
            "bad feature cache file, recomputing",
            extra={**where, "path": str(path), "reason": reason, "error": str(exc)},
        )
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # it is overwritten (atomically) once recomputed

    def load(self, key: FeatureKey, where: dict[str, Any]) -> Any | None:
        """The verified whole features of ``key``, or None (a bad file is logged and removed)."""
        if self.root is None:
            return None
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._reject(path, exc, where)
            return None
        try:
            return decode_file(data, key)
        except BadCacheFile as exc:
            self._reject(path, exc, where)
            return None

    def chunks(self, key: FeatureKey, where: dict[str, Any]) -> list[Any]:
        """The verified chunks written so far, contiguous from image 0; the rest is dropped."""
        if self.root is None:
            return []
        folder = self._partial(key)
        if not folder.is_dir():
            return []
        found: dict[int, tuple[int, Path]] = {}
        for p in folder.glob("*.safetensors"):
            try:
                start, end = (int(x) for x in p.stem.split("-"))
            except ValueError:
                continue
            found[start] = (end, p)
        out: list[Any] = []
        done = 0
        while done in found:
            end, p = found.pop(done)
            try:
                out.append(decode_file(p.read_bytes(), key, done, end - done))
            except (BadCacheFile, OSError) as exc:
                self._reject(p, exc, where)
                break
            done = end
        for _end, p in found.values():  # after a gap or a bad chunk: recomputed anyway
            p.unlink(missing_ok=True)
        return out

    def write_chunk(self, key: FeatureKey, start: int, feats: Any) -> None:
        """Persist rows ``start..`` of ``key`` (OSError on failure)."""
        if self.root is None:
            return
        end = start + feats.shape[0]
        atomic_write(
            self._partial(key) / f"{start:09d}-{end:09d}.safetensors", encode_file(key, feats, start)
        )

    def write(self, key: FeatureKey, feats: Any) -> None:
        """Persist the whole features of ``key`` and drop its chunks (OSError on failure)."""
        if self.root is None:
            return
        atomic_write(self.path(key), encode_file(key, feats))
        shutil.rmtree(self._partial(key), ignore_errors=True)


def compute_features(
    encode_images: Callable[[Any], Any],
    preprocess: Callable[[Any], Any],
    split: Split,
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Any:
    """Encode images ``start..stop`` of ``split`` (batched), L2-normalised; a float32 CPU tensor."""
    import torch

    out = []
    n = len(split) if stop is None else stop
    for first in range(start, n, batch_size):
        last = min(n, first + batch_size)
        batch = torch.stack([preprocess(split.load(i)) for i in range(first, last)])
        feats = encode_images(batch).float()
        out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
        metrics.IMAGES_ENCODED.inc(last - first)
        if progress:
            progress(last, len(split))
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class SplitFeatures:
    """What :func:`load_or_compute` obtained for one split."""

    features: Any
    source: FeaturesSource
    resumed: int = 0  # images read back from chunks of an earlier, interrupted run
    cache_error: str | None = None  # why the features could not be written to the cache


def load_or_compute(
    cache: FeatureCache,
    model_fingerprint: str,
    dataset_id: str,
    split: Split,
    encode_images: Callable[[Any], Any],
    preprocess: Callable[[Any], Any],
    batch_size: int = 64,
    chunk_images: int = 1024,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SplitFeatures:
    """Features of ``split``: verified from the cache, else resumed from chunks and computed.

    ``progress(done)`` is told the images of this split ready so far; ``should_stop`` is asked
    between chunks (True raises :class:`Stopped`, chunks written so far are kept).
    """
    import torch

    where = {"dataset": dataset_id, "split": split.name}
    # Without a cache folder no key is needed: hashing every image would only cost a read.
    key = cache.key(model_fingerprint, split) if cache.root is not None else None
    parts: list[Any] = []
    if key is not None:
        cached = cache.load(key, where)
        if cached is not None:
            log.info(
                "image features loaded from cache",
                extra={**where, "images": len(split), "path": str(cache.path(key))},
            )
            if progress:
                progress(len(split))
            return SplitFeatures(cached, FeaturesSource.CACHE)
        parts = cache.chunks(key, where)
    done = sum(p.shape[0] for p in parts)
    if done:
        log.info("resuming image features", extra={**where, "done": done, "total": len(split)})
    if progress:
        progress(done)
    started, last_log = time.perf_counter(), [time.perf_counter()]
    cache_error: str | None = None

    def encoded(n: int, total: int) -> None:
        if progress:
            progress(n)
        now = time.perf_counter()
        if now - last_log[0] > 5 or n == total:  # a progress line every few seconds
            last_log[0] = now
            log.info("encoding images", extra={**where, "done": n, "total": total})

    def cache_failed(path: Path | None, exc: OSError) -> str:
        metrics.FEATURE_CACHE_WRITE_ERRORS.labels(write_error_reason(exc)).inc()
        message = f"feature cache not written ({exc.strerror or exc}); features kept in memory"
        log.warning(message, extra={**where, "path": str(path or cache.root), "errno": exc.errno})
        return message

    resumed = done
    chunk = max(1, chunk_images)
    while done < len(split):
        if should_stop is not None and should_stop():
            raise Stopped(f"stopped encoding {dataset_id}/{split.name} at {done} of {len(split)}")
        end = min(len(split), done + chunk)
        feats = compute_features(encode_images, preprocess, split, batch_size, encoded, done, end)
        parts.append(feats)
        if key is not None and cache_error is None and end < len(split):  # the last: whole file
            try:
                cache.write_chunk(key, done, feats)
            except OSError as exc:
                cache_error = cache_failed(None, exc)  # no more chunks: the disk is likely full
        done = end
    feats = torch.cat(parts) if parts else torch.empty(0)
    log.info(
        "image features computed",
        extra={
            **where,
            "images": len(split),
            "resumed": resumed,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    if key is not None:
        try:
            cache.write(key, feats)
            cache_error = None
        except OSError as exc:
            cache_error = cache_failed(cache.path(key), exc)
    return SplitFeatures(feats, FeaturesSource.COMPUTED, resumed, cache_error)
