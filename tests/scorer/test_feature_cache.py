"""The feature cache heals: a damaged file is logged, recomputed and never scored with.

In process, on the tiny CLIP: every kind of damage a disk fault, a crash mid-write or another
version leaves (truncated, garbled, foreign format, another shape, another dtype, a bad checksum)
makes the scorer recompute exactly the features an uncached scorer computes; the file-digest memo
is rebuilt when it is not a database; a full disk at the write keeps the features in memory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from services.scorer import features as features_module
from services.scorer import metrics
from services.scorer.datasets import FileDigests, parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.features import FORMAT, FeatureKey, FeaturesSource, encode_file
from services.scorer.settings import ScorerSettings


def engine_on(model: Path, cache: Path | None, **settings: object) -> ScoringEngine:
    engine = ScoringEngine(ScorerSettings(model=f"local-dir:{model}", cache_dir=cache, **settings))  # type: ignore[arg-type]
    engine.load_model()
    return engine


def features_of(engine: ScoringEngine, split: str = "test") -> torch.Tensor:
    feats, _labels = engine._features[("demo", split)]
    return feats


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "promptclimb_scorer_feature_cache_rejected_total", {"model": metrics.MODEL_ID, "reason": reason}
    )
    return value or 0.0


def rewrite(
    path: Path, change: Callable[[dict[str, str], np.ndarray], tuple[dict[str, str], np.ndarray]]
) -> None:
    """Re-save a cache file with its metadata and array changed (a well-formed but wrong file)."""
    from safetensors.numpy import load, save

    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + size])["__metadata__"]
    meta, array = change(dict(meta), load(data)["features"])
    path.write_bytes(save({"features": array}, metadata=meta))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(data), size=max(8, len(data) // 20)):
        data[int(i)] ^= 0xFF
    path.write_bytes(bytes(data))


def foreign_format(path: Path) -> None:
    rewrite(path, lambda m, a: ({**m, "format": "promptclimb-features/1"}, a))


def another_shape(path: Path) -> None:
    def change(m: dict[str, str], a: np.ndarray) -> tuple[dict[str, str], np.ndarray]:
        a = a[:-1]  # one image short, metadata and checksum made to agree with it
        return {**m, "rows": str(a.shape[0]), "sha256": features_module._checksum(a)}, a

    rewrite(path, change)


def another_dtype(path: Path) -> None:
    def change(m: dict[str, str], a: np.ndarray) -> tuple[dict[str, str], np.ndarray]:
        a = a.astype(np.float16)
        return {**m, "dtype": "float16", "sha256": features_module._checksum(a)}, a

    rewrite(path, change)


def bad_checksum(path: Path) -> None:
    rewrite(path, lambda m, a: (m, a + np.float32(0.25)))  # other numbers, the old checksum


def another_model(path: Path) -> None:
    rewrite(path, lambda m, a: ({**m, "model": "someone-else"}, a))


DAMAGE = {
    "unreadable": [truncate, garble],
    "format": [foreign_format],
    "shape": [another_shape],
    "dtype": [another_dtype],
    "checksum": [bad_checksum],
    "key": [another_model],
}


@pytest.mark.parametrize(
    ("reason", "damage"),
    [(r, d) for r, ds in DAMAGE.items() for d in ds],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_a_damaged_cache_file_is_logged_and_recomputed(
    tiny_model: Path,
    images: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    reason: str,
    damage: Callable[[Path], None],
) -> None:
    spec = parse_dataset_spec(f"demo={images}")
    uncached = engine_on(tiny_model, None)
    uncached.register(spec)
    first = engine_on(tiny_model, tmp_path)
    first.register(spec)
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 2  # train and test
    for f in files:
        damage(f)

    before = rejected(reason)
    with caplog.at_level(logging.WARNING, logger="services.scorer.features"):
        again = engine_on(tiny_model, tmp_path)
        dataset = again.register(spec)
    assert rejected(reason) == before + 2
    logged = {
        r.__dict__.get("path") for r in caplog.records if r.getMessage().startswith("bad feature cache")
    }
    assert logged == {str(f) for f in files}
    assert {s.features_source for s in dataset.splits.values()} == {FeaturesSource.COMPUTED}
    for split in ("train", "test"):
        assert torch.equal(features_of(again, split), features_of(uncached, split))

    healed = engine_on(tiny_model, tmp_path)  # the recomputed files are whole again
    assert {s.features_source for s in healed.register(spec).splits.values()} == {FeaturesSource.CACHE}
    assert torch.equal(features_of(healed), features_of(uncached))


def test_cache_files_hold_no_pickle_and_say_what_they_are(
    tiny_model: Path, images: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    engine_on(tiny_model, tmp_path).register(parse_dataset_spec(f"demo={images}"))
    for f in (tmp_path / "features").glob("*.safetensors"):
        with safe_open(str(f), "np") as opened:
            meta = opened.metadata()
            array = opened.get_tensor("features")
        assert meta["format"] == FORMAT and meta["dtype"] == "float32"
        assert int(meta["rows"]) == int(meta["images"]) == array.shape[0] in (10, 20)
        assert meta["sha256"] == features_module._checksum(array)
    assert not list((tmp_path / "features").glob(".*tmp*"))  # no temporary file left behind


def test_a_damaged_file_digest_memo_is_rebuilt(
    tiny_model: Path, images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = parse_dataset_spec(f"demo={images}")
    engine_on(tiny_model, tmp_path).register(spec)
    memo = tmp_path / "file-digests.sqlite"
    memo.write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="services.scorer.datasets"):
        again = engine_on(tiny_model, tmp_path)
        dataset = again.register(spec)
    assert any(r.__dict__.get("path") == str(memo) for r in caplog.records)
    # The same cache key from the bytes: the features are still found in the cache.
    assert {s.features_source for s in dataset.splits.values()} == {FeaturesSource.CACHE}
    with FileDigests(memo) as rebuilt:  # and the memo is a working database again
        assert not rebuilt.rebuilt
        rebuilt.digest(next(images.rglob("*.png")))
        assert rebuilt.read == 0


def test_a_chunk_resume_gives_the_features_of_one_run(tiny_model: Path, images: Path, tmp_path: Path) -> None:
    """Chunks written by an interrupted run, one of them damaged, splice into the same features."""
    spec = parse_dataset_spec(f"demo={images}")
    whole = engine_on(tiny_model, None)
    whole.register(spec)
    engine = engine_on(tiny_model, tmp_path)
    assert engine.model is not None
    dataset = spec.load()
    split = dataset.splits["test"]
    key = engine.feature_cache.key(engine.model.fingerprint, split)
    reference = features_of(whole)
    for start in (0, 4, 8, 12):  # four chunks of an interrupted run (the last 4 images missing)
        engine.feature_cache.write_chunk(key, start, reference[start : start + 4])
    truncate(engine.feature_cache._partial(key) / f"{8:09d}-{12:09d}.safetensors")
    encoded: list[int] = []
    model = engine.model

    def encode(batch: torch.Tensor) -> torch.Tensor:
        encoded.append(len(batch))
        return model.encode_images(batch)

    got = features_module.load_or_compute(
        engine.feature_cache,
        model.fingerprint,
        "demo",
        split,
        encode,
        model.preprocess,
        batch_size=4,
        chunk_images=4,
    )
    assert got.resumed == 8 and sum(encoded) == 12  # images 8..19: from the damaged chunk on
    assert torch.allclose(got.features, reference, atol=1e-6)
    assert not engine.feature_cache._partial(key).exists()  # the whole file replaced the chunks
    assert engine.feature_cache.load(key, {}) is not None


def test_a_full_disk_at_the_write_keeps_the_features_in_memory(
    tiny_model: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC at the fsync of every cache write: logged, counted, the split still scores."""

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(features_module.os, "fsync", no_space)
    counter = "promptclimb_scorer_feature_cache_write_errors_total"
    before = REGISTRY.get_sample_value(counter, {"model": metrics.MODEL_ID, "reason": "no_space"}) or 0.0
    engine = engine_on(tiny_model, tmp_path)
    dataset = engine.register(parse_dataset_spec(f"demo={images}"))
    assert dataset.ready
    assert all("No space left on device" in (s.cache_error or "") for s in dataset.splits.values())
    assert REGISTRY.get_sample_value(counter, {"model": metrics.MODEL_ID, "reason": "no_space"}) == before + 2
    assert sorted((tmp_path / "features").iterdir()) == []  # no file, no temporary one left
    monkeypatch.undo()
    reference = engine_on(tiny_model, None)
    reference.register(parse_dataset_spec(f"demo={images}"))
    assert torch.equal(features_of(engine), features_of(reference))


def test_a_file_of_another_key_is_refused_by_decode(tiny_model: Path) -> None:
    key = FeatureKey("model-a", "split-a", 3)
    data = encode_file(key, torch.zeros(3, 4))
    assert features_module.decode_file(data, key).shape == (3, 4)
    for other in (FeatureKey("model-b", "split-a", 3), FeatureKey("model-a", "split-b", 3)):
        with pytest.raises(features_module.BadCacheFile) as err:
            features_module.decode_file(data, other)
        assert err.value.reason == "key"
    with pytest.raises(features_module.BadCacheFile) as err:
        features_module.decode_file(data, FeatureKey("model-a", "split-a", 4))
    assert err.value.reason == "shape"
