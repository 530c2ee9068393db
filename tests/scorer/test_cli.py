"""A scorer started from the command line: health, reflection, correct counts, every bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from tests.scorer.conftest import TEMPLATES, paper_ensemble_correct, paper_scores
from tests.support.processes import ServedProcess, serve

SERVICE = "promptclimb.api.v1.ScorerService"
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def scorer(
    tiny_model: Path, images: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedProcess]:
    cache = tmp_path_factory.mktemp("cache")
    proc = serve(
        "scorer",
        *("--model", f"local-dir:{tiny_model}", "--dataset", f"demo={images}"),
        *("--cache-dir", str(cache), "--max-templates-per-request", "16"),
    )
    try:
        proc.wait_serving()
        yield proc
    finally:
        assert proc.stop() == 0


@pytest.fixture(scope="module")
def stub(scorer: ServedProcess) -> Iterator[scorer_pb2_grpc.ScorerServiceStub]:
    with grpc.insecure_channel(scorer.target) as channel:
        yield scorer_pb2_grpc.ScorerServiceStub(channel)


def evaluate(
    stub: scorer_pb2_grpc.ScorerServiceStub, templates: list[str], **kw: object
) -> scorer_pb2.EvaluatePromptsResponse:
    request = scorer_pb2.EvaluatePromptsRequest(dataset="demo", split="test", templates=templates)
    for key, value in kw.items():
        setattr(request, key, value)
    return stub.EvaluatePrompts(request, timeout=30)


def still_serving(scorer: ServedProcess, stub: scorer_pb2_grpc.ScorerServiceStub) -> None:
    assert scorer.health() == SERVING
    assert evaluate(stub, ["a photo of a {}."]).scores[0].total == 20


def test_health_and_reflection(scorer: ServedProcess) -> None:
    assert scorer.health("") == SERVING
    assert scorer.health(SERVICE) == SERVING
    with grpc.insecure_channel(scorer.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_counts_equal_an_independent_open_clip_computation(
    stub: scorer_pb2_grpc.ScorerServiceStub, tiny_model: Path, images: Path
) -> None:
    response = evaluate(stub, TEMPLATES, per_class=True)
    classes, flags = paper_scores(tiny_model, images, "test", TEMPLATES)
    assert list(response.class_names) == classes
    assert [s.template for s in response.scores] == TEMPLATES
    assert [s.correct for s in response.scores] == [sum(f) for f in flags]
    assert [s.total for s in response.scores] == [20] * len(TEMPLATES)
    assert all(s.loss > 0 for s in response.scores)
    for s, f in zip(response.scores, flags, strict=True):
        assert s.accuracy == pytest.approx(sum(f) / 20)
        assert list(s.per_class_accuracy) == pytest.approx([sum(f[c * 4 : c * 4 + 4]) / 4 for c in range(5)])
    train = stub.EvaluatePrompts(
        scorer_pb2.EvaluatePromptsRequest(dataset="demo", split="train", templates=TEMPLATES[:2]), timeout=30
    )
    _, train_flags = paper_scores(tiny_model, images, "train", TEMPLATES[:2])
    assert [s.correct for s in train.scores] == [sum(f) for f in train_flags]


def test_ensemble_equals_an_independent_computation(
    stub: scorer_pb2_grpc.ScorerServiceStub, tiny_model: Path, images: Path
) -> None:
    chosen = TEMPLATES[:4]
    response = stub.EvaluateEnsemble(
        scorer_pb2.EvaluateEnsembleRequest(dataset="demo", split="test", templates=chosen, per_class=True),
        timeout=30,
    )
    assert response.score.correct == paper_ensemble_correct(tiny_model, images, "test", chosen)
    assert len(response.score.per_class_accuracy) == 5


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("a photo of a dog", 'no "{}"'),
        ("{0.__class__}", 'no "{}"'),
        ("a " + "long " * 80 + "{}", "77-token context"),
        ("a photo of a \x00{}", "U+0000"),
    ],
)
def test_bad_template_gets_its_own_error(
    scorer: ServedProcess, stub: scorer_pb2_grpc.ScorerServiceStub, template: str, message: str
) -> None:
    response = evaluate(stub, ["a photo of a {}.", template])
    good, bad = response.scores
    assert good.total == 20 and not good.HasField("error")
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert message in bad.error.message
    assert bad.total == 0 and bad.template == template
    still_serving(scorer, stub)


def test_braces_are_text_not_format_fields(
    stub: scorer_pb2_grpc.ScorerServiceStub, tiny_model: Path, images: Path
) -> None:
    response = evaluate(stub, ["{}{}{", "{name} of {}"])
    _, flags = paper_scores(tiny_model, images, "test", ["{}{}{", "{name} of {}"])
    assert [s.correct for s in response.scores] == [sum(f) for f in flags]
    assert all(not s.HasField("error") for s in response.scores)


def status_of(call: pytest.ExceptionInfo[grpc.RpcError]) -> tuple[grpc.StatusCode, list[object]]:
    """The code and the decoded rich-error details of a failed call."""
    error = call.value
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    details: list[object] = []
    for d in status.details if status else []:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
            error_details_pb2.RetryInfo,
        ):
            if d.Is(kind.DESCRIPTOR):
                msg = kind()
                d.Unpack(msg)
                details.append(msg)
    return error.code(), details  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("dataset", "split", "templates", "code", "detail"),
    [
        ("unknown", "test", ["a {}"], grpc.StatusCode.NOT_FOUND, error_details_pb2.ResourceInfo),
        ("demo", "validation", ["a {}"], grpc.StatusCode.NOT_FOUND, error_details_pb2.ResourceInfo),
        ("demo", "test", [], grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest),
        ("demo", "test", ["a {}"] * 17, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest),
    ],
)
def test_bad_requests_get_their_status(
    scorer: ServedProcess,
    stub: scorer_pb2_grpc.ScorerServiceStub,
    dataset: str,
    split: str,
    templates: list[str],
    code: grpc.StatusCode,
    detail: type,
) -> None:
    with pytest.raises(grpc.RpcError) as call:
        stub.EvaluatePrompts(
            scorer_pb2.EvaluatePromptsRequest(dataset=dataset, split=split, templates=templates), timeout=30
        )
    got, details = status_of(call)
    assert got == code
    assert any(isinstance(d, detail) for d in details)
    if detail is error_details_pb2.BadRequest:
        assert details[0].field_violations[0].field == "templates"  # type: ignore[attr-defined]
    still_serving(scorer, stub)


def test_list_datasets_and_model_info(stub: scorer_pb2_grpc.ScorerServiceStub, images: Path) -> None:
    listed = stub.ListDatasets(scorer_pb2.ListDatasetsRequest(), timeout=10).datasets
    assert [d.id for d in listed] == ["demo"]
    assert listed[0].ready and listed[0].source == f"imagefolder:{images}"
    assert {s.name: s.num_images for s in listed[0].splits} == {"test": 20, "train": 10}
    info = stub.GetModelInfo(scorer_pb2.GetModelInfoRequest(), timeout=10)
    assert info.context_length == 77 and info.embed_dim == 32
    assert info.text_truncation_exact and info.max_templates_per_request == 16
    assert info.device == "cpu" and info.precision == "fp32"
