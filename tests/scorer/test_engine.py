"""The scoring engine against the paper's computation, in process (no gRPC)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import pytest

from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.errors import BadRequest, QueueFull, UnknownDataset, UnknownSplit
from services.scorer.settings import ScorerSettings
from tests.scorer.conftest import TEMPLATES, paper_ensemble_correct, paper_scores, paper_scores_and_losses


def make_engine(model: Path, images: Path, cache: Path | None, **settings: object) -> ScoringEngine:
    engine = ScoringEngine(ScorerSettings(model=f"local-dir:{model}", cache_dir=cache, **settings))
    engine.load_model()
    engine.register(parse_dataset_spec(f"demo={images}"))
    return engine


@pytest.fixture(scope="module")
def baseline(tiny_model: Path, images: Path) -> tuple[list[str], list[list[int]]]:
    return paper_scores(tiny_model, images, "test", TEMPLATES)


@pytest.mark.parametrize("truncation", ["auto", "off"])
async def test_counts_equal_the_paper_computation(
    tiny_model: Path, images: Path, baseline: tuple[list[str], list[list[int]]], truncation: str
) -> None:
    engine = make_engine(tiny_model, images, None, text_truncation=truncation)
    assert engine.model is not None
    assert engine.model.truncation_exact
    assert engine.model.truncate == (truncation == "auto")
    result = await engine.evaluate("demo", "test", TEMPLATES, per_class=True)
    classes, flags = baseline
    assert result.class_names == classes
    assert [s.correct for s in result.scores] == [sum(f) for f in flags]
    assert all(s.total == 20 for s in result.scores)
    # Per-class accuracy: the fraction of each class's 4 test images predicted right.
    for score, f in zip(result.scores, flags, strict=True):
        assert score.per_class_accuracy == [sum(f[c * 4 : c * 4 + 4]) / 4 for c in range(5)]
    await engine.close()


async def test_loss_equals_clips_zero_shot_cross_entropy(tiny_model: Path, images: Path) -> None:
    # The tie-breaker the coordinator ranks by: computed here from the same logits as the counts.
    engine = make_engine(tiny_model, images, None)
    result = await engine.evaluate("demo", "test", TEMPLATES)
    _, flags, losses = paper_scores_and_losses(tiny_model, images, "test", TEMPLATES)
    assert [s.correct for s in result.scores] == [sum(f) for f in flags]
    assert [s.loss for s in result.scores] == pytest.approx(losses, rel=1e-4)
    assert len(set(losses)) > 1  # the templates really differ, so the comparison can fail
    await engine.close()


async def test_bidirectional_tower_falls_back_to_full_context(
    bidirectional_model: Path, images: Path
) -> None:
    engine = make_engine(bidirectional_model, images, None)
    assert engine.model is not None
    assert not engine.model.truncation_exact and not engine.model.truncate
    result = await engine.evaluate("demo", "test", TEMPLATES)
    _, flags = paper_scores(bidirectional_model, images, "test", TEMPLATES)
    assert [s.correct for s in result.scores] == [sum(f) for f in flags]
    await engine.close()


async def test_truncated_features_equal_full_context(tiny_model: Path, images: Path) -> None:
    import torch

    engine = make_engine(tiny_model, images, None)
    m = engine.model
    assert m is not None
    texts = [t.replace("{}", "blue circle") for t in TEMPLATES if t != "{}{}{"]
    tokens, _ = m.tokenize(texts)
    cut = m.encode_text(tokens)
    m.truncate = False
    full = m.encode_text(tokens)
    assert torch.allclose(cut, full, atol=1e-5)


async def test_ensemble_equals_independent_computation(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, None)
    chosen = TEMPLATES[:4]
    result = await engine.evaluate_ensemble("demo", "test", chosen)
    assert result.scores[0].correct == paper_ensemble_correct(tiny_model, images, "test", chosen)
    assert result.scores[0].total == 20
    with pytest.raises(BadRequest):
        await engine.evaluate_ensemble("demo", "test", ["a {}", "no slot"])
    await engine.close()


async def test_bad_requests_and_bad_templates(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, None, max_templates_per_request=4)
    with pytest.raises(UnknownDataset):
        await engine.evaluate("nope", "test", ["a {}"])
    with pytest.raises(UnknownSplit):
        await engine.evaluate("demo", "validation", ["a {}"])
    with pytest.raises(BadRequest, match="empty"):
        await engine.evaluate("demo", "test", [])
    with pytest.raises(BadRequest, match="limit of 4"):
        await engine.evaluate("demo", "test", ["a {}"] * 5)
    long = "a " + "very " * 80 + "{}"
    result = await engine.evaluate("demo", "test", ["", long, "a \x00 {}", "a photo of a {}."])
    errors = [s.error for s in result.scores]
    assert "empty" in (errors[0] or "")
    assert "77-token context" in (errors[1] or "")
    assert "U+0000" in (errors[2] or "")
    assert errors[3] is None and result.scores[3].total == 20
    await engine.close()


async def test_text_cache_hits_give_the_same_scores(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, None, text_cache_size=1000)
    first = await engine.evaluate("demo", "test", TEMPLATES)
    cached = len(engine.cache)
    assert cached > 0
    second = await engine.evaluate("demo", "test", TEMPLATES)
    assert len(engine.cache) == cached  # nothing new encoded
    assert [s.correct for s in second.scores] == [s.correct for s in first.scores]
    # A tiny cache still evicts and stays bounded.
    small = make_engine(tiny_model, images, None, text_cache_size=3)
    await small.evaluate("demo", "test", TEMPLATES)
    assert len(small.cache) == 3
    await engine.close()
    await small.close()


async def test_concurrent_requests_coalesce_into_one_pass(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, None, batch_wait_ms=200)
    results = await asyncio.gather(*[engine.evaluate("demo", "test", [t]) for t in TEMPLATES])
    alone = await engine.evaluate("demo", "test", TEMPLATES)
    assert [r.scores[0].correct for r in results] == [s.correct for s in alone.scores]
    assert engine.batches == 2  # eight requests in one pass, then the lone request
    await engine.close()


async def test_lone_request_on_idle_scorer_does_not_wait_for_company(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, None, batch_wait_ms=3000)
    start = time.monotonic()
    result = await engine.evaluate("demo", "test", TEMPLATES[:1])
    assert time.monotonic() - start < 2.0  # not the 3 s batch wait
    assert result.scores[0].total == 20
    await engine.close()


async def test_full_queue_is_refused_with_retry_delay(tiny_model: Path, images: Path) -> None:
    engine = make_engine(
        tiny_model, images, None, batch_wait_ms=2000, batch_wait_alone=True, max_queue_templates=5
    )
    first = asyncio.ensure_future(engine.evaluate("demo", "test", TEMPLATES[:4]))
    deadline = time.monotonic() + 30
    while engine.batcher.pending_templates < 4:  # queued, and held there 2 s for company
        assert time.monotonic() < deadline, "the first request was never queued"
        await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:
        await engine.evaluate("demo", "test", TEMPLATES[4:6])
    assert info.value.retry_after > 0
    assert (await first).scores[0].total == 20
    # Once the queue drained, the same request is accepted.
    assert (await engine.evaluate("demo", "test", TEMPLATES[4:6])).scores[0].total == 20
    await engine.close()


def test_image_features_are_cached_across_restarts(
    tiny_model: Path, images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.scorer.features")
    make_engine(tiny_model, images, tmp_path)
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 2  # train and test
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    assert [r.msg for r in caplog.records].count("image features computed") == 2
    caplog.clear()
    make_engine(tiny_model, images, tmp_path)  # a "restart": a new engine on the same cache
    assert [r.msg for r in caplog.records].count("image features loaded from cache") == 2
    assert "image features computed" not in [r.msg for r in caplog.records]
    assert [os.stat(f).st_mtime_ns for f in files] == mtimes
    # Other weights: other features, computed afresh.
    caplog.clear()
    other = tmp_path / "other_model"
    from promptclimb.testing.tiny_clip import make_tiny_model_dir

    make_tiny_model_dir(other, seed=5)
    make_engine(other, images, tmp_path)
    assert [r.msg for r in caplog.records].count("image features computed") == 2
