"""Class-specific descriptions (EvaluateDescriptions) against an independent open_clip computation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc
from promptclimb.client import ScorerClient
from services.coordinator.clients import GrpcScorer
from services.scorer.datasets import parse_dataset_spec
from services.scorer.descriptions import MAX_TEXTS_PER_CLASS, DescriptionSet
from services.scorer.engine import ScoringEngine
from services.scorer.errors import BadRequest
from services.scorer.main import build_server
from services.scorer.settings import ScorerSettings

CLASSES = ["black bar", "blue circle", "green cross", "red square", "white noise"]

# Per class its own texts; "{}" is the class name. Uneven counts on purpose (1 to 4 per class).
DESCRIBED: dict[str, list[str]] = {
    "black bar": ["a {}, a dark stripe on a plain background", "a thick black line"],
    "blue circle": ["{}", "a round blue disc", "a circle painted blue, like the sky", "a blue ring"],
    "green cross": ["a {} shaped like a plus sign"],
    "red square": ["a red box with four equal sides", "{}: a square of bright red", "a crimson tile"],
    "white noise": ["static, random grey pixels", "a {} pattern of speckles"],
}
TEMPLATE = "a photo of a {}."


@dataclass
class Reference:
    correct: int
    per_class: list[float]
    loss: float
    confusions: list[tuple[str, str, int]]


def by_open_clip(
    model_dir: Path, image_root: Path, split: str, texts: Mapping[str, Sequence[str]], template: str = ""
) -> Reference:
    """The set's score written independently with plain open_clip at the full 77-token context:
    per class, encode its filled texts, L2-normalise, average, renormalise; argmax of cosine."""
    import open_clip
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    folders = sorted(p.name for p in (image_root / split).iterdir())
    names = [f.replace("_", " ") for f in folders]
    pixels, labels = [], []
    for label, folder in enumerate(folders):
        for f in sorted((image_root / split / folder).glob("*.png")):
            pixels.append(preprocess(Image.open(f).convert("RGB")))
            labels.append(label)
    y = torch.tensor(labels)
    with torch.no_grad():
        img = model.encode_image(torch.stack(pixels))
        img = img / img.norm(dim=-1, keepdim=True)
        weights = []
        for name in names:
            filled = [t.replace("{}", name) for t in texts[name]]
            if template:
                filled = [template.replace("{}", t) for t in filled]
            t = model.encode_text(tokenizer(filled))
            t = t / t.norm(dim=-1, keepdim=True)
            mean = t.mean(dim=0)
            weights.append(mean / mean.norm())
        logits = img @ torch.stack(weights).T
        pred = logits.argmax(dim=-1)
        loss = float(torch.nn.functional.cross_entropy(model.logit_scale.exp() * logits, y))
    predicted = pred.tolist()
    per_class = [
        sum(int(p == c) for p, t in zip(predicted, labels, strict=True) if t == c) / 4 for c in range(5)
    ]
    pairs: dict[tuple[int, int], int] = {}
    for p, t in zip(predicted, labels, strict=True):
        if p != t:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    return Reference(
        int((pred == y).sum()), per_class, loss, [(names[t], names[p], n) for (t, p), n in ranked]
    )


def make_engine(model: Path, images: Path, **settings: object) -> ScoringEngine:
    engine = ScoringEngine(ScorerSettings(model=f"local-dir:{model}", **settings))  # type: ignore[arg-type]
    engine.load_model()
    engine.register(parse_dataset_spec(f"demo={images}"))
    return engine


def without(texts: Mapping[str, Sequence[str]], name: str) -> dict[str, list[str]]:
    return {c: list(t) for c, t in texts.items() if c != name}


@pytest.mark.parametrize("truncation", ["auto", "off"])
async def test_scores_equal_an_independent_open_clip_computation(
    tiny_model: Path, images: Path, truncation: str
) -> None:
    engine = make_engine(tiny_model, images, text_truncation=truncation)
    plain = by_open_clip(tiny_model, images, "test", DESCRIBED)
    wrapped = by_open_clip(tiny_model, images, "test", DESCRIBED, TEMPLATE)
    result = await engine.evaluate_descriptions(
        "demo",
        "test",
        [DescriptionSet.of("plain", DESCRIBED), DescriptionSet.of("wrapped", DESCRIBED, TEMPLATE)],
        per_class=True,
        top_confusions=100,
    )
    assert result.class_names == CLASSES
    for score, ref in zip(result.scores, (plain, wrapped), strict=True):
        assert score.error is None
        assert (score.correct, score.total) == (ref.correct, 20)
        assert score.per_class_accuracy == ref.per_class
        assert score.loss == pytest.approx(ref.loss, rel=1e-4)
        assert [(CLASSES[t], CLASSES[p], n) for t, p, n in score.confusions] == ref.confusions
        assert score.num_texts == 12
    # The two sets really differ (the template changes the texts), and the random model errs.
    assert plain.loss != pytest.approx(wrapped.loss, rel=1e-4)
    assert plain.confusions and wrapped.confusions
    assert any(wrapped.per_class)  # some images right, so the per-class comparison can fail
    # Only the top ones when fewer are asked for, most frequent first.
    top = await engine.evaluate_descriptions(
        "demo", "test", [DescriptionSet.of("p", DESCRIBED)], top_confusions=2
    )
    assert [(CLASSES[t], CLASSES[p], n) for t, p, n in top.scores[0].confusions] == plain.confusions[:2]
    await engine.close()


async def test_one_text_per_class_with_a_template_scores_as_that_template(
    tiny_model: Path, images: Path
) -> None:
    engine = make_engine(tiny_model, images)
    as_set = DescriptionSet.of("t", {c: ["{}"] for c in CLASSES}, "itap of a {}")
    described = await engine.evaluate_descriptions("demo", "test", [as_set], per_class=True)
    templated = await engine.evaluate("demo", "test", ["itap of a {}"], per_class=True)
    d, t = described.scores[0], templated.scores[0]
    assert (d.correct, d.per_class_accuracy) == (t.correct, t.per_class_accuracy)
    assert d.loss == pytest.approx(t.loss, rel=1e-5)
    await engine.close()


async def test_bad_sets_get_their_own_errors_and_the_others_are_scored(
    tiny_model: Path, images: Path
) -> None:
    engine = make_engine(tiny_model, images)
    long_text = "a " + "very " * 80 + "{}"
    bad = {
        "missing": without(DESCRIBED, "green cross"),
        "unknown": {**DESCRIBED, "purple hexagon": ["a {}"]},
        "empty list": {**DESCRIBED, "black bar": []},
        "over-long": {**DESCRIBED, "red square": ["a {}", long_text]},
        "blank text": {**DESCRIBED, "blue circle": ["a {}", "  "]},
        "control": {**DESCRIBED, "white noise": ["a \x00 {}"]},
        "too many": {
            **DESCRIBED,
            "black bar": [f"a {{}} number {i}" for i in range(MAX_TEXTS_PER_CLASS + 1)],
        },
    }
    sets = [DescriptionSet.of("good", DESCRIBED)]
    sets += [DescriptionSet.of(name, texts) for name, texts in bad.items()]
    sets.append(DescriptionSet.of("no slot", DESCRIBED, template="a photo"))
    sets.append(
        DescriptionSet("twice", (("red square", ("a {}",)), *DescriptionSet.of("", DESCRIBED).classes))
    )
    sets.append(DescriptionSet.of("good again", DESCRIBED, TEMPLATE))
    result = await engine.evaluate_descriptions("demo", "test", sets, per_class=True)
    by_name = {s.template: s for s in result.scores}
    assert [s.template for s in result.scores] == [s.name for s in sets]
    expected = {
        "missing": "1 of 5 classes have no texts: 'green cross'",
        "unknown": "class 'purple hexagon' is not a class of the dataset",
        "empty list": "class 'black bar' has no texts",
        "over-long": "is longer than the 77-token context",
        "blank text": "class 'blue circle', text 1: text is empty",
        "control": "U+0000",
        "too many": f"65 texts, more than the {MAX_TEXTS_PER_CLASS} allowed",
        "no slot": 'template: template has no "{}" class-name slot',
        "twice": "class 'red square' is listed more than once",
    }
    for name, message in expected.items():
        score = by_name[name]
        assert score.error is not None and message in score.error, (name, score.error)
        assert (score.correct, score.total, score.per_class_accuracy) == (0, 0, [])
    assert "class 'red square'" in (by_name["over-long"].error or "")
    reference = by_open_clip(tiny_model, images, "test", DESCRIBED)
    wrapped = by_open_clip(tiny_model, images, "test", DESCRIBED, TEMPLATE)
    assert by_name["good"].error is None and by_name["good"].correct == reference.correct
    assert by_name["good again"].error is None and by_name["good again"].correct == wrapped.correct
    assert by_name["good again"].per_class_accuracy == wrapped.per_class
    await engine.close()


async def test_drop_overlong_leaves_out_only_the_over_long_texts(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images)
    long_text = "a " + "very " * 80 + "{}"
    texts = {**DESCRIBED, "red square": ["a {}", long_text], "black bar": [long_text]}
    result = await engine.evaluate_descriptions(
        "demo", "test", [DescriptionSet.of("s", texts, TEMPLATE)], per_class=True, drop_overlong=True
    )
    (score,) = result.scores
    assert score.error is None
    assert score.dropped == [
        (CLASSES.index("black bar"), [long_text]),
        (CLASSES.index("red square"), [long_text]),
    ]
    # Scored as the set without them, the emptied class with its bare name in the template.
    pruned = {**DESCRIBED, "red square": ["a {}"], "black bar": ["{}"]}
    expected = by_open_clip(tiny_model, images, "test", pruned, TEMPLATE)
    assert (score.correct, score.per_class_accuracy) == (expected.correct, expected.per_class)
    # Without the flag the same set is rejected, as before.
    (strict,) = (
        await engine.evaluate_descriptions("demo", "test", [DescriptionSet.of("s", texts, TEMPLATE)])
    ).scores
    assert strict.error is not None and "77-token context" in strict.error
    await engine.close()


async def test_request_limits(tiny_model: Path, images: Path) -> None:
    engine = make_engine(tiny_model, images, max_templates_per_request=4)
    one = DescriptionSet.of("s", DESCRIBED)
    with pytest.raises(BadRequest, match="must not be empty"):
        await engine.evaluate_descriptions("demo", "test", [])
    with pytest.raises(BadRequest, match="5 sets exceed the limit of 4"):
        await engine.evaluate_descriptions("demo", "test", [one] * 5)
    # 4 templates' worth of texts for 5 classes: 20 texts; two sets of 12 are 24.
    with pytest.raises(BadRequest, match="24 texts exceed the limit of 20"):
        await engine.evaluate_descriptions("demo", "test", [one, one])
    with pytest.raises(BadRequest, match="top_confusions"):
        await engine.evaluate_descriptions("demo", "test", [one], top_confusions=-1)
    assert (await engine.evaluate_descriptions("demo", "test", [one])).scores[0].total == 20
    await engine.close()


async def test_descriptions_and_templates_share_one_text_pass_and_the_cache(
    tiny_model: Path, images: Path
) -> None:
    engine = make_engine(tiny_model, images, batch_wait_ms=200, text_cache_size=1000)
    described, templated = await asyncio.gather(
        engine.evaluate_descriptions("demo", "test", [DescriptionSet.of("s", DESCRIBED)]),
        engine.evaluate("demo", "test", [TEMPLATE]),
    )
    assert engine.batches == 1  # both requests in one pass
    cached = len(engine.cache)
    assert cached == 12 + 5
    again = await engine.evaluate_descriptions("demo", "test", [DescriptionSet.of("s", DESCRIBED)])
    assert len(engine.cache) == cached  # nothing new encoded
    assert again.scores[0].correct == described.scores[0].correct
    assert templated.scores[0].total == 20
    await engine.close()


@pytest.fixture
async def served(tiny_model: Path, images: Path, tmp_path: Path) -> AsyncIterator[tuple[str, ScoringEngine]]:
    settings = ScorerSettings(
        model=f"local-dir:{tiny_model}", cache_dir=tmp_path, max_templates_per_request=8
    )
    engine = ScoringEngine(settings)
    server = build_server(settings, engine)
    port = await server.start()
    await asyncio.to_thread(engine.load_model)
    await asyncio.to_thread(engine.register, parse_dataset_spec(f"demo={images}"))
    await server.set_ready(True)
    yield f"127.0.0.1:{port}", engine
    await engine.close()
    await server.stop(0)


def set_message(
    name: str, texts: Mapping[str, Sequence[str]], template: str = ""
) -> scorer_pb2.DescriptionSet:
    return scorer_pb2.DescriptionSet(
        name=name,
        classes=[common_pb2.ClassDescriptions(class_name=c, texts=list(t)) for c, t in texts.items()],
        template=template,
    )


async def test_over_grpc_per_set_errors_confusions_and_the_coordinators_client(
    served: tuple[str, ScoringEngine], tiny_model: Path, images: Path
) -> None:
    target, _engine = served
    reference = by_open_clip(tiny_model, images, "test", DESCRIBED, TEMPLATE)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        reply = await stub.EvaluateDescriptions(
            scorer_pb2.EvaluateDescriptionsRequest(
                dataset="demo",
                split="test",
                sets=[
                    set_message("good", DESCRIBED, TEMPLATE),
                    set_message("bad", without(DESCRIBED, "black bar")),
                ],
                per_class=True,
                top_confusions=3,
            )
        )
        good, bad = reply.scores
        assert (good.name, good.correct, good.total, good.HasField("error")) == (
            "good",
            reference.correct,
            20,
            False,
        )
        assert list(good.per_class_accuracy) == reference.per_class
        assert [(c.true_class, c.predicted_class, c.count) for c in good.confusions] == reference.confusions[
            :3
        ]
        assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "'black bar'" in bad.error.message and bad.total == 0
        for request, code in [
            (
                scorer_pb2.EvaluateDescriptionsRequest(dataset="demo", split="test"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                scorer_pb2.EvaluateDescriptionsRequest(
                    dataset="nope", split="test", sets=[set_message("s", DESCRIBED)]
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                scorer_pb2.EvaluateDescriptionsRequest(
                    dataset="demo", split="val", sets=[set_message("s", DESCRIBED)]
                ),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as call:
                await stub.EvaluateDescriptions(request)
            assert call.value.code() == code
    # The coordinator's client: chunks of at most chunk_size templates' worth of texts, in order.
    client = GrpcScorer(target, chunk_size=3)
    try:
        sets = {f"set {i}": DESCRIBED for i in range(3)} | {"bad": without(DESCRIBED, "red square")}
        scores = await client.evaluate_descriptions("demo", "test", sets, template=TEMPLATE, top_confusions=2)
    finally:
        await client.close()
    assert [s.name for s in scores] == [*sets]
    assert [s.correct for s in scores[:3]] == [reference.correct] * 3
    assert scores[0].confusions == tuple(reference.confusions[:2])
    assert scores[3].error is not None and "'red square'" in scores[3].error
    # The public client, as a script would call it.
    async with ScorerClient(target) as public:
        answer = await public.evaluate_descriptions(
            "demo", "test", {"s": DESCRIBED}, template=TEMPLATE, per_class=True
        )
    assert answer.class_names == CLASSES
    assert (answer.scores[0].correct, list(answer.scores[0].per_class_accuracy)) == (
        reference.correct,
        reference.per_class,
    )
