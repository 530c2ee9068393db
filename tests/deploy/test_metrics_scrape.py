"""The monitoring works against the real services.

One module-wide stack: the three services as subprocesses (``promptclimb serve …``, a tiny
random-weight CLIP, an ImageFolder set, the scripted fake LLM), a real Prometheus scraping them
every second with the repository's scrape config and rules, and one short search run through the
coordinator CLI (``promptclimb search start --wait``). Then:

- every metric name the rules and the dashboard use is exported by some service;
- Prometheus's HTTP API answers the dashboard's key queries (and the recording rules) with data.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptclimb.local import launch_service
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from tests.deploy.conftest import REPO, load_check_deploy
from tests.support.processes import test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DASHBOARD = REPO / "deploy" / "monitoring" / "dashboards" / "promptclimb.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "monitoring" / "prometheus" / "prometheus.yml"
PLAIN_RULES = REPO / "deploy" / "monitoring" / "prometheus" / "promptclimb.rules.yml"
SERVICES = ("scorer", "optimizer", "coordinator")
# Panels whose every query must return data after one search (the others — rejections, retries,
# failures — legitimately stay empty on a healthy run).
KEY_PANELS = (
    "Request rate by service and method",
    "Latency by service and method",
    "Targets up",
    "Scorer queue depth",
    "Batch size",
    "Text-cache hit ratio",
    "Evaluations per second",
    "LLM calls by model and outcome",
    "LLM tokens by model",
    "LLM latency by model",
    "Running searches",
    "Search outcomes",
    "Iteration duration by phase",
)


@dataclass
class Service:
    """A running ``promptclimb serve NAME`` subprocess, its bound ports and its log file."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    log: Path

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return str(resp.read().decode())


@dataclass
class Stack:
    services: dict[str, Service] = field(default_factory=dict)
    prometheus_url: str | None = None
    prometheus_missing: str = ""
    search: dict[str, Any] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_service(name: str, args: list[str], env: dict[str, str], logs: Path) -> Service:
    """``up``'s launcher with a metrics port on loopback; the service's logs go to logs/NAME.log."""
    log = logs / f"{name}.log"
    with log.open("w") as stderr:
        started = launch_service(
            name, ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", *args], 180, stderr, env=env
        )
    assert started.metrics_port is not None
    return Service(name, started.proc, started.port, started.metrics_port, log)


def _wait_serving(port: int, service: str, timeout: float = 180) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise AssertionError(f"{service} on port {port} never became SERVING")


def _prometheus_query(url: str, promql: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _start_prometheus(binary: str, stack: Stack, workdir: Path) -> subprocess.Popen[bytes]:
    """Prometheus on loopback with the repo's scrape config, retargeted at this run's ports."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PLAIN_RULES)]
    for job in config["scrape_configs"]:
        service = job["job_name"].removeprefix("promptclimb-")
        job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.services[service].metrics_port}"]}]
    # The recording rules' group interval (30 s) would outlast the test; evaluate every second here.
    rules = yaml.safe_load(PLAIN_RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (workdir / "rules.yml").write_text(yaml.safe_dump(rules))
    config["rule_files"] = [str(workdir / "rules.yml")]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "prometheus.log").open("wb"),
    )
    stack.prometheus_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            up = _prometheus_query(stack.prometheus_url, 'up{job=~"promptclimb-.+"} == 1')
            if len(up) == len(SERVICES):
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(
        f"Prometheus did not scrape all three services:\n{(workdir / 'prometheus.log').read_text()}"
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 2, "test": 2})
    env = test_env(OPENAI_API_KEY="sk-test")
    counter = iter(range(10_000))

    def reply(_body: dict[str, Any]) -> str:
        n = next(counter)
        return f"1. a photo of a {{}}, take {n}.\n2. a drawing of the {{}}, take {n}."

    fake_llm = FakeOpenAI(default=reply).start()
    result = Stack()
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        scorer = _start_service(
            "scorer",
            [
                "--model",
                f"local-dir:{model}",
                "--dataset",
                f"tiny={images}",
                "--cache-dir",
                str(root / "features"),
                "--threads",
                "1",
            ],
            env,
            root,
        )
        result.services["scorer"] = scorer
        result.services["optimizer"] = _start_service(
            "optimizer", ["--llm-base-url", fake_llm.base_url, "--llm-model", "fake-model"], env, root
        )
        result.services["coordinator"] = _start_service(
            "coordinator",
            [
                "--scorer",
                f"127.0.0.1:{scorer.port}",
                "--optimizer",
                f"127.0.0.1:{result.services['optimizer'].port}",
                "--store",
                str(root / "searches.db"),
            ],
            env,
            root,
        )
        _wait_serving(scorer.port, "promptclimb.api.v1.ScorerService")
        _wait_serving(result.services["coordinator"].port, "promptclimb.api.v1.CoordinatorService")

        try:
            binary = str(load_check_deploy().find_tool("prometheus", REPO))
        except FileNotFoundError as exc:
            result.prometheus_missing = str(exc)
        else:
            (root / "prom").mkdir()
            prometheus = _start_prometheus(binary, result, root / "prom")

        search = subprocess.run(
            [
                sys.executable,
                "-m",
                "promptclimb",
                "search",
                "start",
                "--coordinator",
                f"127.0.0.1:{result.services['coordinator'].port}",
                "--dataset",
                "tiny",
                "--template",
                "a photo of a {}.",
                "--template",
                "a {} in the wild.",
                "--restarts",
                "1",
                "--iterations",
                "2",
                "--templates-per-iteration",
                "2",
                "--wait",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
            cwd=REPO,
            check=False,
        )
        logs = "\n".join(f"--- {s.name}\n{s.log.read_text()[-2000:]}" for s in result.services.values())
        assert search.returncode == 0, f"{search.stdout}\n{search.stderr}\n{logs}"
        result.search = json.loads(search.stdout[search.stdout.index("{") :])
        yield result
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for service in reversed(list(result.services.values())):
            service.proc.terminate()
        for service in result.services.values():
            try:
                service.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.proc.kill()
        fake_llm.stop()


def _exported_sample_names(metrics_text: str) -> set[str]:
    """Every sample name a /metrics page can produce (families without children included)."""
    from prometheus_client.parser import text_string_to_metric_families

    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "info": ("_info",),
        "gauge": ("",),
        "unknown": ("",),
    }
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _unexported(stack: Stack, dashboard: Path, rules_file: Path) -> dict[str, str]:
    """Metric names the rules or the dashboard use that no service exports, with where they are used."""
    check_deploy = load_check_deploy()
    exported: set[str] = set()
    for service in stack.services.values():
        exported |= _exported_sample_names(service.metrics_text())
    rules = check_deploy.rules_of(rules_file)
    recorded = {rule["record"] for rule in rules if "record" in rule}
    used: dict[str, str] = {}
    for rule in rules:
        for name in check_deploy.metric_names(str(rule["expr"])):
            used.setdefault(name, f"rule {rule.get('record') or rule.get('alert')}")
    for title, expr in check_deploy.dashboard_queries(dashboard):
        for name in check_deploy.metric_names(expr):
            used.setdefault(name, f"dashboard panel {title!r}")
    assert len(used) > 20  # the extraction found the queries
    # `up` is Prometheus's own; names with a colon must be recording rules of ours.
    return {
        name: where
        for name, where in used.items()
        if name != "up" and name not in exported and name not in recorded
    }


def test_every_metric_in_rules_and_dashboard_is_exported(stack: Stack) -> None:
    missing = _unexported(stack, DASHBOARD, PLAIN_RULES)
    assert not missing, f"used but not exported by any service: {missing}"


def test_a_misspelt_metric_in_the_dashboard_is_reported(stack: Stack, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next(p for p in dashboard["panels"] if p.get("title") == "Scorer queue depth")
    panel["targets"][0]["expr"] = 'sum(promptclimb_scorer_queue_length{job="promptclimb-scorer"})'
    broken = tmp_path / "dashboard.json"
    broken.write_text(json.dumps(dashboard))
    assert _unexported(stack, broken, PLAIN_RULES) == {
        "promptclimb_scorer_queue_length": "dashboard panel 'Scorer queue depth'"
    }


def test_the_search_behind_the_metrics_succeeded(stack: Stack) -> None:
    assert stack.search["state"] == "SEARCH_STATE_SUCCEEDED", stack.search
    assert len(stack.search["history"]) >= 2  # the seed templates at least were scored


def test_prometheus_answers_the_dashboard_key_queries(stack: Stack) -> None:
    if stack.prometheus_url is None:
        if os.environ.get("PROMPTCLIMB_REQUIRE_TOOLS"):
            pytest.fail(f"{stack.prometheus_missing}; PROMPTCLIMB_REQUIRE_TOOLS is set")
        pytest.skip(stack.prometheus_missing)
    check_deploy = load_check_deploy()
    dashboard = json.loads(DASHBOARD.read_text())
    all_value = next(v["allValue"] for v in dashboard["templating"]["list"] if v["name"] == "job")
    queries = [(t, e) for t, e in check_deploy.dashboard_queries(DASHBOARD) if t in KEY_PANELS]
    assert {t for t, _ in queries} == set(KEY_PANELS)
    queries.append(("recording rule", "promptclimb:grpc_server_handled:rate5m"))
    queries.append(("recording rule", "promptclimb:scorer_templates_evaluated:rate5m"))

    def promql(expr: str) -> str:
        # What Grafana sends with "All" services selected and a 1 s scrape interval.
        return expr.replace("$__rate_interval", "1m").replace("$job", all_value)

    # Samples taken after the search ended need a couple of scrapes to show up in rate windows.
    deadline = time.monotonic() + 30
    empty = queries
    while empty and time.monotonic() < deadline:
        empty = [(t, e) for t, e in empty if not _prometheus_query(stack.prometheus_url, promql(e))]
        if empty:
            time.sleep(1)
    assert not empty, f"queries without data: {empty}"

    # The numbers agree with the search that ran: it scored templates and one search succeeded.
    evaluated = _prometheus_query(
        stack.prometheus_url, 'sum(promptclimb_coordinator_evaluations_total{job="promptclimb-coordinator"})'
    )
    assert float(evaluated[0]["value"][1]) >= 2
    succeeded = _prometheus_query(
        stack.prometheus_url,
        'sum(promptclimb_coordinator_searches_total{job="promptclimb-coordinator", outcome="succeeded"})',
    )
    assert float(succeeded[0]["value"][1]) == 1
    methods = {
        r["metric"]["grpc_method"]
        for r in _prometheus_query(stack.prometheus_url, "sum by (grpc_method) (grpc_server_handled_total)")
    }
    assert {"EvaluatePrompts", "ProposePrompts", "StartSearch"} <= methods
