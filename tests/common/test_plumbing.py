"""Shared server plumbing: health, reflection, rich errors, SIGTERM, /metrics + promtool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status

from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
from promptclimb.common.errors import ServiceError, abort, retry_delay_of
from promptclimb.common.server import ServiceServer
from promptclimb.common.settings import ServerSettings
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from tests.support.processes import ServedProcess, serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SCORER = "promptclimb.api.v1.ScorerService"


async def _fail(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await abort(
        context,
        ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too busy",
            field_violations=[("templates", "too many")],
            retry_after_seconds=1.5,
            resource=("dataset", "pets"),
        ),
    )
    return b""


def _register_failing_service(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_fail)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Failing", {"Fail": handler})])


@pytest.fixture
async def server() -> Iterator[ServiceServer]:
    s = ServiceServer("test", ServerSettings(port=0), ["test.Failing"], _register_failing_service)
    await s.start()
    yield s
    await s.stop(0)


async def test_health_not_serving_until_ready_then_serving(server: ServiceServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)

        async def status(name: str) -> int:
            return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

        assert [await status(""), await status("test.Failing")] == [NOT_SERVING, NOT_SERVING]
        await server.set_ready(True)
        assert [await status(""), await status("test.Failing")] == [SERVING, SERVING]
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await status("no.Such")
        assert call.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rich_error_details_decode_on_the_client(server: ServiceServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as call:
            await channel.unary_unary("/test.Failing/Fail")(b"")
    error = call.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details() == "too busy"
    assert retry_delay_of(error) == pytest.approx(1.5)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(bad) and status.details[2].Unpack(info)
    assert (bad.field_violations[0].field, bad.field_violations[0].description) == ("templates", "too many")
    assert (info.resource_type, info.resource_name) == ("dataset", "pets")


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedProcess]:
    root = tmp_path_factory.mktemp("plumbing")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"test": 2})
    proc = serve(
        "scorer",
        *("--model", f"local-dir:{model}", "--model-id", "tiny-a"),
        *("--dataset", f"demo={images}", "--cache-dir", str(root)),
    )
    proc.wait_serving()
    yield proc
    proc.stop()


def test_reflection_lists_the_services(scorer: ServedProcess) -> None:
    with grpc.insecure_channel(scorer.target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert services == {SCORER, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def test_model_info_names_the_model_id(scorer: ServedProcess) -> None:
    with grpc.insecure_channel(scorer.target) as channel:
        info = scorer_pb2_grpc.ScorerServiceStub(channel).GetModelInfo(
            scorer_pb2.GetModelInfoRequest(), timeout=30
        )
    assert info.model_id == "tiny-a"


def _promtool() -> str | None:
    """$PROMPTCLIMB_PROMTOOL, PATH, or the copy tools/install_prometheus.sh unpacks into .cache/."""
    unpacked = Path(__file__).resolve().parents[2] / ".cache" / "prometheus" / "usr" / "bin" / "promtool"
    found = os.environ.get("PROMPTCLIMB_PROMTOOL") or shutil.which("promtool")
    return found or (str(unpacked) if unpacked.is_file() else None)


def test_metrics_after_a_call_are_promtool_clean(scorer: ServedProcess, tmp_path: Path) -> None:
    with grpc.insecure_channel(scorer.target) as channel:
        stub = scorer_pb2_grpc.ScorerServiceStub(channel)
        stub.EvaluatePrompts(
            scorer_pb2.EvaluatePromptsRequest(dataset="demo", split="test", templates=["a {}"]), timeout=30
        )
        with pytest.raises(grpc.RpcError):
            stub.EvaluatePrompts(
                scorer_pb2.EvaluatePromptsRequest(dataset="nope", split="test", templates=["a {}"])
            )
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{scorer.metrics_port}/metrics", timeout=10).read().decode()
    )
    method = f'grpc_method="EvaluatePrompts",grpc_service="{SCORER}",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{method}}} 1.0' in text
    assert f'grpc_server_handled_total{{grpc_code="NOT_FOUND",{method}}} 1.0' in text
    assert f"grpc_server_handling_seconds_count{{{method}}} 2.0" in text
    for name in (
        'promptclimb_scorer_queue_depth{model="tiny-a"} 0.0',
        'promptclimb_scorer_batch_size_count{model="tiny-a"} 1.0',
        'promptclimb_scorer_queue_wait_seconds_count{model="tiny-a"} 1.0',
        'promptclimb_scorer_compute_seconds_count{model="tiny-a"} 1.0',
        'promptclimb_scorer_templates_evaluated_total{model="tiny-a"} 1.0',
        'promptclimb_scorer_text_cache_misses_total{model="tiny-a"} 5.0',
        'promptclimb_scorer_model_ready{model="tiny-a"} 1.0',
        'promptclimb_scorer_model_info{device="cpu",model="tiny-a",model_name=',
    ):
        assert name in text, name
    assert 'model="unset"' not in text  # the placeholder id of an unnamed engine is never exported
    promtool = _promtool()
    if promtool is None:
        if os.environ.get("PROMPTCLIMB_REQUIRE_TOOLS"):
            pytest.fail("promtool not found (run tools/install_prometheus.sh, or set PROMPTCLIMB_PROMTOOL)")
        pytest.skip("promtool not installed")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr


def test_sigterm_flips_health_then_stops(tmp_path: Path) -> None:
    model = make_tiny_model_dir(tmp_path / "model")
    images = make_image_folder(tmp_path / "images", per_split={"test": 1})
    proc = serve(
        "scorer",
        *("--model", f"local-dir:{model}", "--dataset", f"demo={images}"),
        env={"PROMPTCLIMB_SCORER_GRACE_SECONDS": "1"},
    )
    try:
        proc.wait_serving()
        with grpc.insecure_channel(proc.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SCORER))
            assert next(watch).status == SERVING
            proc.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING  # reported before the server goes away
        assert proc.proc.wait(timeout=30) == 0
    finally:
        proc.stop()
