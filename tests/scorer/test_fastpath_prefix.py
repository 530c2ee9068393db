"""Prefix sharing: each template's common token prefix encoded once, suffixes against its KV cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.scorer.clip import common_prefix_lengths, encode_shared_prefix
from services.scorer.engine import ScoringEngine
from services.scorer.settings import ScorerSettings
from tests.scorer.conftest import TEMPLATES, paper_scores
from tests.scorer.test_engine import make_engine

CLASSES = ["cat", "dog", "golden retriever", "sea anemone", "x"]


def _tiny(tiny_model: Path) -> tuple[object, object]:
    import open_clip

    model = open_clip.create_model(f"local-dir:{tiny_model}").eval()
    return model, open_clip.get_tokenizer(f"local-dir:{tiny_model}")


def test_prefix_lengths_stop_before_each_group_s_shortest_row(tiny_model: Path) -> None:
    _, tokenizer = _tiny(tiny_model)
    texts = [f"a photo of a {c}." for c in CLASSES] + [f"{c} art" for c in CLASSES]
    tokens = tokenizer(texts)
    lengths = (tokens != 0).sum(dim=1)
    prefix = common_prefix_lengths(tokens, lengths, [0] * 5 + [1] * 5)
    # "<bos> a photo of a" is shared by the first template; only "<bos>" by the second.
    assert prefix.tolist() == [5] * 5 + [1] * 5
    assert bool((prefix < lengths).all())


def test_shared_prefix_features_equal_full_context(tiny_model: Path) -> None:
    import torch
    import torch.nn.functional as F

    model, tokenizer = _tiny(tiny_model)
    templates = [t for t in TEMPLATES if "{}" in t]
    texts = [t.replace("{}", c) for t in templates for c in CLASSES]
    groups = [g for g in range(len(templates)) for _ in CLASSES]
    tokens = tokenizer(texts)
    lengths = (tokens != 0).sum(dim=1)
    with torch.no_grad():
        full = F.normalize(model.encode_text(tokens), dim=-1)
        prefix = common_prefix_lengths(tokens, lengths, groups)
        shared = F.normalize(encode_shared_prefix(model, "argmax", None, tokens, prefix, groups, 0), dim=-1)
    assert float((shared - full).abs().max()) < 1e-5


@pytest.mark.parametrize("sharing", ["on", "off"])
async def test_prefix_sharing_counts_equal_the_paper_computation(
    tiny_model: Path, images: Path, sharing: str
) -> None:
    engine: ScoringEngine = make_engine(tiny_model, images, None, prefix_sharing=sharing)
    assert engine.model is not None and engine.model.share_prefix == (sharing == "on")
    result = await engine.evaluate("demo", "test", TEMPLATES)
    _, flags = paper_scores(tiny_model, images, "test", TEMPLATES)
    assert [s.correct for s in result.scores] == [sum(f) for f in flags]
    await engine.close()


def test_prefix_sharing_needs_truncation(tiny_model: Path) -> None:
    settings = ScorerSettings(model=f"local-dir:{tiny_model}", text_truncation="off", prefix_sharing="on")
    engine = ScoringEngine(settings)
    engine.load_model()
    assert engine.model is not None and not engine.model.share_prefix


def test_length_buckets_group_similar_lengths_within_bounds() -> None:
    from services.scorer.clip import length_buckets

    lengths = [9, 3, 3, 7, 3, 9, 7, 5]
    chunks = length_buckets(lengths, max_rows=3, min_rows=2)
    assert sorted(j for c in chunks for j in c) == list(range(8))
    assert all(len(c) <= 3 for c in chunks)
    # Shortest first, and a chunk never mixes lengths once it holds min_rows.
    assert [[lengths[j] for j in c] for c in chunks] == [[3, 3, 3], [5, 7], [7, 9], [9]]
