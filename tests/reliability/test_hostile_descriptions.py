"""Hostile EvaluateDescriptions and ProposeDescriptions requests against real in-process services.

The scorer runs the tiny CLIP; the optimizer's fake LLM answers garbage (and half-right replies),
so what the client sends and what the model says are hostile at once. Every call must end with a
code documented in docs/ERRORS.md, nothing may be logged as an unhandled error, and health must
still say SERVING afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from promptclimb.common.server import ServiceServer
from promptclimb.testing.tiny_clip import TINY_CLASSES, make_image_folder, make_tiny_model_dir
from services.optimizer.main import SERVICE_NAME as OPTIMIZER_SERVICE
from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.servicer import SERVICE_NAME as SCORER_SERVICE
from services.scorer.servicer import register
from services.scorer.settings import ScorerSettings
from tests.reliability.conftest import ErrorLog
from tests.reliability.hostile import (
    DOUBLE,
    ENUM,
    HOSTILE,
    INT32,
    INT64,
    check_code,
    hostile_list,
    hostile_text,
    mostly,
)
from tests.reliability.inproc import (
    SERVING,
    LoopThread,
    call,
    chosen_by_request,
    health_status,
    optimizer_on_fake_llm,
)

C = grpc.StatusCode
# Not UNAVAILABLE: both services are SERVING before the first case (and the fake LLM always answers).
EVALUATE = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED}
PROPOSE = {C.OK, C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.RESOURCE_EXHAUSTED}
CLASSES = [c.replace("_", " ") for c in TINY_CLASSES]
MAX_SETS = 16  # the scorer fixture's max_templates_per_request


@dataclass
class Served:
    channel: grpc.Channel
    service: str
    errors: ErrorLog

    def assert_healthy(self) -> None:
        assert self.errors.take() == []
        assert health_status(self.channel) == SERVING
        assert health_status(self.channel, self.service) == SERVING


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hostile_descriptions")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 1, "test": 2})
    settings = ScorerSettings(
        model=f"local-dir:{model}",
        batch_wait_ms=0,
        max_templates_per_request=MAX_SETS,
        text_cache_size=2000,
        max_message_bytes=4 * 1024 * 1024,
    )
    engine = ScoringEngine(settings)
    server = ServiceServer("scorer", settings, [SCORER_SERVICE], lambda s: register(s, engine))
    loop = LoopThread()
    port = loop.run(server.start())
    engine.load_model()
    engine.register(parse_dataset_spec(f"demo={images}"))
    loop.run(server.set_ready(True))
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        yield Served(channel, SCORER_SERVICE, error_log)
    loop.run(engine.close())
    loop.run(server.stop(0))
    loop.close()


VALID_TEXTS = ["a {}", "{}, a plain shape", "a small picture"]
TEXTS = hostile_list(mostly(st.sampled_from(VALID_TEXTS), hostile_text(huge=3_000)), huge=80)
CLASS_NAME = mostly(st.sampled_from(CLASSES), hostile_text(huge=500))


def description_set(complete: bool) -> st.SearchStrategy[scorer_pb2.DescriptionSet]:
    """Every class with valid texts (``complete``), or hostile names, lists and templates."""
    if complete:
        texts = st.lists(st.sampled_from(VALID_TEXTS), min_size=1, max_size=3, unique=True)
        return st.builds(
            lambda name, lists, template: scorer_pb2.DescriptionSet(
                name=name,
                classes=[
                    common_pb2.ClassDescriptions(class_name=c, texts=t)
                    for c, t in zip(CLASSES, lists, strict=True)
                ],
                template=template,
            ),
            hostile_text(huge=2_000),
            st.lists(texts, min_size=len(CLASSES), max_size=len(CLASSES)),
            st.sampled_from(["", "a photo of a {}.", "{}"]),
        )
    entry = st.builds(lambda c, t: common_pb2.ClassDescriptions(class_name=c, texts=t), CLASS_NAME, TEXTS)
    return st.builds(
        lambda name, classes, template: scorer_pb2.DescriptionSet(
            name=name, classes=classes, template=template
        ),
        hostile_text(huge=2_000),
        hostile_list(entry, huge=400),
        mostly(st.just(""), hostile_text(huge=1_000)),
    )


@HOSTILE
@given(
    dataset=mostly(st.just("demo"), hostile_text(huge=2_000)),
    split=mostly(st.sampled_from(["train", "test"]), hostile_text(huge=2_000)),
    good=st.lists(description_set(True), max_size=3),
    bad=st.lists(description_set(False), max_size=3),
    per_class=st.booleans(),
    top_confusions=mostly(st.integers(0, 30), INT32),
)
def test_evaluate_descriptions(
    scorer: Served,
    dataset: str,
    split: str,
    good: list[scorer_pb2.DescriptionSet],
    bad: list[scorer_pb2.DescriptionSet],
    per_class: bool,
    top_confusions: int,
) -> None:
    request = scorer_pb2.EvaluateDescriptionsRequest(
        dataset=dataset, split=split, sets=good + bad, per_class=per_class, top_confusions=top_confusions
    )
    stub = scorer_pb2_grpc.ScorerServiceStub(scorer.channel)
    # Only complete sets within every limit: the scorer must answer OK (bad sets get their own errors).
    well_formed = (
        dataset == "demo"
        and split in ("train", "test")
        and not bad
        and 1 <= len(good) <= MAX_SETS
        and 0 <= top_confusions <= 1000
    )
    check_code(
        call(stub.EvaluateDescriptions, request), EVALUATE, "EvaluateDescriptions", well_formed=well_formed
    )
    scorer.assert_healthy()


GARBAGE_REPLIES = [
    "",
    "{}",
    "{0.__class__.__mro__[1].__subclasses__()}",
    '{"classes": [{"class": "{}", "descriptions": ["{0}", null, 3]}, {"class": 7}]}',
    '{"classes": [{"class": "rose", "descriptions": ["red spiral petals", "a {} bud"]}]}',
    '{"rose": "a thorny stem", "tulip": ["a cup", {"x": 1}], "": [""]}',
    "rose: red; ; ;\n## tulip\n- a cup\x00 shape\n- " + "x" * 5_000,
    '```json\n{"classes": [{"class": "ROSE", "descriptions": ["' + "{" * 300 + '"]}]}\n```',
    "[" * 2_000,
    "\u202e{} esor\ufeff: petals",
]


garbage = chosen_by_request(GARBAGE_REPLIES)  # stable for a given request


@pytest.fixture(scope="module")
def optimizer(error_log: ErrorLog) -> Iterator[Served]:
    with optimizer_on_fake_llm(garbage) as channel:
        yield Served(channel, OPTIMIZER_SERVICE, error_log)


FLOWERS = ["rose", "tulip", "sun_flower"]


@HOSTILE
@given(
    strategy=mostly(st.sampled_from([1, 2]), ENUM),
    task=hostile_text(huge=3_000),
    class_names=mostly(st.just(FLOWERS), hostile_list(hostile_text(huge=300), huge=1_200)),
    k=mostly(st.integers(1, 4), INT32),
    accuracies=st.lists(mostly(st.floats(0, 1), DOUBLE), min_size=3, max_size=3),
    descriptions=hostile_list(hostile_text(huge=500), huge=200),
    confusions=st.lists(
        st.builds(
            lambda t, p, n: common_pb2.Confusion(true_class=t, predicted_class=p, count=n),
            mostly(st.sampled_from(FLOWERS), hostile_text(huge=100)),
            mostly(st.sampled_from(FLOWERS), hostile_text(huge=100)),
            mostly(st.integers(0, 20), INT64),
        ),
        max_size=4,
    ),
    weakest_k=st.one_of(st.none(), INT32),
    per_call=st.one_of(st.none(), INT32),
    max_calls=st.one_of(st.none(), mostly(st.integers(1, 4), INT32)),
    temperature=st.one_of(st.none(), DOUBLE),
)
def test_propose_descriptions(
    optimizer: Served,
    strategy: int,
    task: str,
    class_names: list[str],
    k: int,
    accuracies: list[float],
    descriptions: list[str],
    confusions: list[common_pb2.Confusion],
    weakest_k: int | None,
    per_call: int | None,
    max_calls: int | None,
    temperature: float | None,
) -> None:
    request = optimizer_pb2.ProposeDescriptionsRequest(
        strategy=strategy,
        task_description=task,
        class_names=class_names,
        descriptions_per_class=k,
        scored=[
            optimizer_pb2.ScoredClass(class_name=c, descriptions=descriptions, accuracy=a)
            for c, a in zip(FLOWERS, accuracies, strict=True)
        ],
        confusions=confusions,
    )
    for field, value in (
        ("weakest_k", weakest_k),
        ("max_classes_per_call", per_call),
        ("max_llm_calls", max_calls),
    ):
        if value is not None:
            setattr(request, field, value)
    if temperature is not None:
        request.temperature = temperature
    stub = optimizer_pb2_grpc.OptimizerServiceStub(optimizer.channel)
    check_code(call(stub.ProposeDescriptions, request, timeout=60), PROPOSE, "ProposeDescriptions")
    optimizer.assert_healthy()
