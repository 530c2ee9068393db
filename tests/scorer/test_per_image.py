"""Per-image results on request: each image's correctness and loss, against an independent computation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from promptclimb.client import ScorerClient
from promptclimb.common.per_image import unpack_correct, unpack_loss
from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.main import build_server
from services.scorer.settings import ScorerSettings
from tests.scorer.conftest import TEMPLATES

VALID = list(TEMPLATES)


def per_image_by_open_clip(
    model_dir: Path, image_root: Path, split: str, templates: Sequence[str]
) -> list[tuple[list[bool], list[float]]]:
    """Per template and image (class-folder order, files sorted): predicted right, and
    -log softmax(logit_scale * cosine)[true class] -- written with plain open_clip at full context."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    folders = sorted(p.name for p in (image_root / split).iterdir())
    pixels, labels = [], []
    for label, folder in enumerate(folders):
        for f in sorted((image_root / split / folder).glob("*.png")):
            pixels.append(preprocess(Image.open(f).convert("RGB")))
            labels.append(label)
    y = torch.tensor(labels)
    out = []
    with torch.no_grad():
        img = model.encode_image(torch.stack(pixels))
        img = img / img.norm(dim=-1, keepdim=True)
        for template in templates:
            txt = model.encode_text(tokenizer([template.replace("{}", f.replace("_", " ")) for f in folders]))
            txt = txt / txt.norm(dim=-1, keepdim=True)
            logits = model.logit_scale.exp() * img @ txt.T
            right = (logits.argmax(dim=-1) == y).tolist()
            losses = torch.nn.functional.cross_entropy(logits, y, reduction="none").tolist()
            out.append((right, losses))
    return out


def make_engine(model: Path, images: Path) -> ScoringEngine:
    engine = ScoringEngine(ScorerSettings(model=f"local-dir:{model}"))
    engine.load_model()
    engine.register(parse_dataset_spec(f"demo={images}"))
    return engine


async def test_per_image_bits_and_losses_equal_an_independent_computation(
    tiny_model: Path, images: Path
) -> None:
    engine = make_engine(tiny_model, images)
    result = await engine.evaluate("demo", "test", ["", *TEMPLATES], per_image=True)  # "" is rejected
    expected = per_image_by_open_clip(tiny_model, images, "test", VALID)
    scored = [s for s in result.scores if s.error is None]
    assert [s.template for s in scored] == VALID
    rejected = [s for s in result.scores if s.error is not None]
    assert [(s.per_image_correct, s.per_image_loss) for s in rejected] == [(b"", b"")]
    for score, (right, losses) in zip(scored, expected, strict=True):
        assert len(score.per_image_correct) == 3  # 20 images: ceil(20 / 8) bytes
        bits = unpack_correct(score.per_image_correct, score.total)
        assert bits.tolist() == right
        assert int(bits.sum()) == score.correct
        per_loss = unpack_loss(score.per_image_loss)
        assert per_loss.tolist() == pytest.approx(losses, rel=1e-4, abs=1e-5)
        assert float(per_loss.mean()) == pytest.approx(score.loss, rel=1e-5)
    # The oracle can fail: the templates disagree on some image, and the losses differ.
    assert len({tuple(r) for r, _ in expected}) > 1
    assert len({round(sum(lo), 4) for _, lo in expected}) > 1
    # Not asked: nothing extra on the wire.
    plain = await engine.evaluate("demo", "test", TEMPLATES[:1])
    assert plain.scores[0].per_image_correct == b"" and plain.scores[0].per_image_loss == b""
    await engine.close()


def test_bit_order_is_little_endian_within_each_byte() -> None:
    from promptclimb.common.per_image import pack_correct

    # Image 0 is the lowest bit of byte 0, image 8 the lowest of byte 1; unused high bits are 0.
    assert pack_correct([True, False, False, False, False, False, False, False, True]) == b"\x01\x01"
    assert pack_correct([False, True, True]) == b"\x06"
    assert unpack_correct(b"\x06", 3).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        unpack_correct(b"\x06\x00", 3)


async def test_per_image_results_over_grpc(tiny_model: Path, images: Path, tmp_path: Path) -> None:
    settings = ScorerSettings(model=f"local-dir:{tiny_model}", cache_dir=tmp_path)
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    try:
        await asyncio.to_thread(engine.load_model)
        await asyncio.to_thread(engine.register, parse_dataset_spec(f"demo={images}"))
        await server.set_ready(True)
        direct = await engine.evaluate("demo", "train", VALID[:3], per_image=True)
        async with ScorerClient(f"127.0.0.1:{port}", timeout=30) as client:
            reply = await client.evaluate("demo", "train", VALID[:3], per_image=True)
            plain = await client.evaluate("demo", "train", VALID[:1])
        for wire, local in zip(reply.scores, direct.scores, strict=True):
            assert wire.total == 10 and wire.per_image_correct == local.per_image_correct
            assert np.array_equal(unpack_loss(wire.per_image_loss), unpack_loss(local.per_image_loss))
            assert int(unpack_correct(wire.per_image_correct, wire.total).sum()) == wire.correct
        assert plain.scores[0].per_image_correct == b"" and plain.scores[0].per_image_loss == b""
    finally:
        await engine.close()
        await server.stop(0)
