"""Hostile requests on every ScorerService RPC against a real in-process scorer (tiny CLIP).

Every call must end with a code documented for its RPC in docs/ERRORS.md, nothing may be logged
as an unhandled error inside the server, and health must still say SERVING afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb.common.server import ServiceServer
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from services.scorer.datasets import parse_dataset_spec
from services.scorer.engine import ScoringEngine
from services.scorer.servicer import SERVICE_NAME, register
from services.scorer.settings import ScorerSettings
from tests.reliability.conftest import ErrorLog
from tests.reliability.hostile import DOUBLE, HOSTILE, INT32, check_code, hostile_list, hostile_text, mostly
from tests.reliability.inproc import SERVING, LoopThread, call, health_status, raw_call, wait_serving

C = grpc.StatusCode
# The documented sets (docs/ERRORS.md). RESOURCE_EXHAUSTED also covers an over-size message.
# Not UNAVAILABLE: the tests start once the scorer is SERVING with its dataset ready, so a call
# answered UNAVAILABLE (not ready) is a failure, not a documented answer to a hostile request.
EVALUATE = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.RESOURCE_EXHAUSTED}
REGISTER = {C.OK, C.INVALID_ARGUMENT, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED}
READ_ONLY = {C.OK}
# Bytes that are not a protobuf message of the method's type (the server's decode guard).
UNDECODABLE = {C.INVALID_ARGUMENT}

MAX_MESSAGE = 4 * 1024 * 1024


@dataclass
class Scorer:
    channel: grpc.Channel
    stub: scorer_pb2_grpc.ScorerServiceStub
    errors: ErrorLog
    paths: dict[str, Path]

    def assert_healthy(self) -> None:
        assert self.errors.take() == []
        assert health_status(self.channel) == SERVING
        assert health_status(self.channel, SERVICE_NAME) == SERVING


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog) -> Iterator[Scorer]:
    root = tmp_path_factory.mktemp("hostile_scorer")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 1, "test": 2})
    garbage_npz = root / "garbage.npz"
    np.savez(
        garbage_npz, class_names=np.array(["a"]), train_images=np.zeros((2, 3)), train_labels=np.array([0])
    )
    not_npz = root / "not.npz"
    not_npz.write_text("{not an archive}")
    empty_dir = root / "empty"
    empty_dir.mkdir()
    bad_json = root / "split.json"
    bad_json.write_text('{"train": [["x.png", 0, "cat"]], "val": 3')
    settings = ScorerSettings(
        model=f"local-dir:{model}",
        cache_dir=root / "cache",
        batch_wait_ms=0,
        max_templates_per_request=64,
        max_queue_templates=4096,
        text_cache_size=2000,
        max_message_bytes=MAX_MESSAGE,
    )
    engine = ScoringEngine(settings)
    server = ServiceServer("scorer", settings, [SERVICE_NAME], lambda s: register(s, engine))
    loop = LoopThread()
    port = loop.run(server.start())
    engine.load_model()
    engine.register(parse_dataset_spec(f"demo={images}"))
    loop.run(server.set_ready(True))
    # The client may send more than the server accepts, so the server's own limit is exercised.
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        wait_serving(channel, ["", SERVICE_NAME])
        yield Scorer(
            channel,
            scorer_pb2_grpc.ScorerServiceStub(channel),
            error_log,
            {
                "images": images,
                "garbage_npz": garbage_npz,
                "not_npz": not_npz,
                "empty": empty_dir,
                "bad_json": bad_json,
                "missing": root / "missing",
            },
        )
    loop.run(engine.close())
    loop.run(server.stop(0))
    loop.close()


# Dataset and split are known ones more often than not, so hostile templates reach the model.
DATASET = st.one_of(
    st.just("demo"), st.just("demo"), st.just("demo"), st.just("demo"), hostile_text(huge=5_000)
)
SPLIT = st.one_of(
    st.sampled_from(["train", "test"]), st.sampled_from(["train", "test"]), hostile_text(huge=5_000)
)
VALID_TEMPLATES = ["a photo of a {}.", "{}"]
TEMPLATES = hostile_list(mostly(st.sampled_from(VALID_TEMPLATES), hostile_text(huge=3_000)), huge=400)
MAX_TEMPLATES = 64  # the fixture's max_templates_per_request


def known(dataset: str, split: str, templates: list[str]) -> bool:
    """A known dataset and split, and a template count within the limit: the scorer must score it."""
    return dataset == "demo" and split in ("train", "test") and 1 <= len(templates) <= MAX_TEMPLATES


@HOSTILE
@given(dataset=DATASET, split=SPLIT, templates=TEMPLATES, per_class=st.booleans())
def test_evaluate_prompts(
    scorer: Scorer, dataset: str, split: str, templates: list[str], per_class: bool
) -> None:
    request = scorer_pb2.EvaluatePromptsRequest(
        dataset=dataset, split=split, templates=templates, per_class=per_class
    )
    # Hostile template text is refused per template, inside an OK answer.
    code = call(scorer.stub.EvaluatePrompts, request)
    check_code(code, EVALUATE, "EvaluatePrompts", well_formed=known(dataset, split, templates))
    scorer.assert_healthy()


@HOSTILE
@given(dataset=DATASET, split=SPLIT, templates=TEMPLATES, per_class=st.booleans())
def test_evaluate_ensemble(
    scorer: Scorer, dataset: str, split: str, templates: list[str], per_class: bool
) -> None:
    request = scorer_pb2.EvaluateEnsembleRequest(
        dataset=dataset, split=split, templates=templates, per_class=per_class
    )
    valid = known(dataset, split, templates) and all(t in VALID_TEMPLATES for t in templates)
    code = call(scorer.stub.EvaluateEnsemble, request)
    check_code(code, EVALUATE, "EvaluateEnsemble", well_formed=valid)
    scorer.assert_healthy()


PATH_KEYS = ["images", "garbage_npz", "not_npz", "empty", "bad_json", "missing"]


@HOSTILE
@given(
    dataset_id=st.one_of(st.just("demo"), hostile_text(huge=2_000)),
    kind=st.sampled_from(["image_folder", "array", "coop", None]),
    known=st.sampled_from(PATH_KEYS),
    text=hostile_text(huge=2_000),
    use_known=st.booleans(),
    shots=INT32,
    seed=INT32,
)
def test_register_dataset(
    scorer: Scorer,
    dataset_id: str,
    kind: str | None,
    known: str,
    text: str,
    use_known: bool,
    shots: int,
    seed: int,
) -> None:
    # A generated path must not name something real on this machine ("/" would be a huge tree).
    if not use_known:
        try:
            assume(not Path(text).exists())
        except (OSError, ValueError):
            pass  # a name the OS cannot even look up (NUL, too long) is fine to send
    path = str(scorer.paths[known]) if use_known else text
    request = scorer_pb2.RegisterDatasetRequest(id=dataset_id)
    if kind == "image_folder":
        request.image_folder.path = path
    elif kind == "array":
        request.array.path = path
    elif kind == "coop":
        request.coop.split_json = path
        request.coop.image_root = text if use_known else str(scorer.paths["images"])
        request.coop.shots = shots
        request.coop.seed = seed
    check_code(call(scorer.stub.RegisterDataset, request, timeout=60), REGISTER, "RegisterDataset")
    scorer.assert_healthy()


METHODS = [
    "/promptclimb.api.v1.ScorerService/EvaluatePrompts",
    "/promptclimb.api.v1.ScorerService/EvaluateEnsemble",
    "/promptclimb.api.v1.ScorerService/ListDatasets",
    "/promptclimb.api.v1.ScorerService/RegisterDataset",
    "/promptclimb.api.v1.ScorerService/GetModelInfo",
]


@HOSTILE
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=300))
def test_raw_bytes_on_every_rpc(scorer: Scorer, method: str, payload: bytes) -> None:
    """Arbitrary bytes: either they decode (unknown fields are ignored) or the call is INVALID_ARGUMENT."""
    name = method.rsplit("/", 1)[1]
    allowed = (
        EVALUATE if name.startswith("Evaluate") else REGISTER if name == "RegisterDataset" else READ_ONLY
    )
    check_code(raw_call(scorer.channel, method, payload), allowed | UNDECODABLE, name)
    scorer.assert_healthy()


@HOSTILE
@given(
    unknown_field=st.integers(100, 10_000), value=st.binary(max_size=50), nums=st.lists(DOUBLE, max_size=3)
)
def test_list_datasets_and_model_info_ignore_unknown_fields(
    scorer: Scorer, unknown_field: int, value: bytes, nums: list[float]
) -> None:
    """The two field-less RPCs with valid wire-format unknown fields: answered OK."""
    tag = (unknown_field << 3) | 2  # length-delimited
    payload = _varint(tag) + _varint(len(value)) + value
    for method in METHODS[2], METHODS[4]:
        assert raw_call(scorer.channel, method, payload) == C.OK
    scorer.assert_healthy()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def test_over_size_request_is_resource_exhausted(scorer: Scorer) -> None:
    """A request above the server's max_message_bytes is refused, and the server goes on."""
    request = scorer_pb2.EvaluatePromptsRequest(
        dataset="demo", split="test", templates=["{}" * (MAX_MESSAGE // 2 + 10)]
    )
    assert call(scorer.stub.EvaluatePrompts, request) == C.RESOURCE_EXHAUSTED
    ok = scorer.stub.EvaluatePrompts(
        scorer_pb2.EvaluatePromptsRequest(dataset="demo", split="test", templates=["a {}"])
    )
    assert ok.scores[0].total == 10
    scorer.assert_healthy()
