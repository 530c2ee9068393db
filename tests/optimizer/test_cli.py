"""``promptclimb serve optimizer`` as a process: flags, key file, health, metrics, SIGTERM."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptclimb.api.v1 import optimizer_pb2_grpc
from promptclimb.testing.fake_openai import FakeOpenAI
from tests.optimizer.conftest import proto_request
from tests.support.processes import serve

KEY = "sk-from-a-mounted-secret-9f8e7d6c5b4a"


def test_serves_with_the_key_from_a_file_and_stops_cleanly(fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.api_key = KEY  # any other key gets 401, so success proves the file was read
    fake.default = lambda _body: json.dumps({"templates": ["a photo of a {class}, from the CLI."]})
    key_file = tmp_path / "api-key"
    key_file.write_text(KEY + "\n")
    served = serve(
        "optimizer",
        "--llm-base-url", fake.base_url, "--llm-model", "fake-model", "--llm-api-key-file", str(key_file),
        env={"OPENAI_API_KEY": "sk-stale-env-key-should-lose", "PROMPTCLIMB_OPTIMIZER_LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            response = optimizer_pb2_grpc.OptimizerServiceStub(channel).ProposePrompts(
                proto_request(), timeout=30
            )
        assert list(response.templates) == ["a photo of a {}, from the CLI."]
        with urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=10) as page:
            metrics = page.read().decode()
        assert 'promptclimb_optimizer_llm_requests_total{model="fake-model",outcome="ok"} 1.0' in metrics
        assert 'promptclimb_optimizer_proposals_total{outcome="accepted",reason="none"} 1.0' in metrics
        assert KEY not in metrics
    finally:
        code = served.stop()
    stderr = served.log()
    assert code == 0
    assert '"msg": "shutting down"' in stderr
    assert KEY not in stderr


def test_unreadable_key_file_is_a_clear_start_up_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    result = subprocess.run(
        [sys.executable, "-m", "promptclimb", "serve", "optimizer", "--llm-api-key-file", missing],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot read llm_api_key_file" in result.stderr
