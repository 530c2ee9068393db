"""One search watched in Grafana: the per-search series against GetSearch and a real Prometheus.

The three services run as subprocesses (tiny random-weight CLIP, an ImageFolder set, the fake
LLM), a real Prometheus scrapes them every second with the repository's config and rules. The
fake LLM holds every request until the test lets it go, so the search stands still in its
PROPOSING phase while it is compared: GetSearch, the coordinator's /metrics and Prometheus must
then agree exactly. After the search ends its series are gone from /metrics, and the Search
row of the dashboard (its queries read from the JSON, ``$search`` set to the search's id) still
shows it from Prometheus's storage.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from promptclimb.testing.fake_openai import FakeOpenAI
from promptclimb.testing.tiny_clip import make_image_folder, make_tiny_model_dir
from tests.deploy.conftest import REPO, load_check_deploy, tool_or_skip
from tests.deploy.test_metrics_scrape import (
    Stack,
    _prometheus_query,
    _start_prometheus,
    _start_service,
    _wait_serving,
)
from tests.support.processes import test_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DASHBOARD = REPO / "deploy" / "monitoring" / "dashboards" / "promptclimb.json"
PREFIX = "promptclimb_coordinator_search_"
LLM_CALLS = 3  # the search's LLM budget: it ends on it, after three held proposals
T = TypeVar("T")


def _until(check: Callable[[], T | None], what: str, timeout: float = 60) -> T:
    """Poll ``check`` until it returns something other than None (or fail naming ``what``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class HeldLLM:
    """Fake LLM replies that wait for :meth:`release`: the search stands still while it waits."""

    def __init__(self) -> None:
        self.arrived = threading.Semaphore(0)
        self._go = threading.Semaphore(0)
        self._count = itertools.count(1)

    def reply(self, _body: dict[str, Any]) -> str:
        n = next(self._count)
        self.arrived.release()
        self._go.acquire(timeout=120)
        return f"1. a photo of a {{}}, take {n}.\n2. a drawing of the {{}}, take {n}."

    def wait_for_request(self) -> None:
        assert self.arrived.acquire(timeout=120), "the search never asked the LLM"

    def release(self) -> None:
        self._go.release()


@dataclass
class Run:
    """The stack, the search and what was seen while it stood still at each held LLM call."""

    stack: Stack
    search_id: str = ""
    held: list[coordinator_pb2.Search] = field(default_factory=list)  # GetSearch at each hold
    exported: list[dict[str, float]] = field(default_factory=list)  # /metrics at each hold
    from_prometheus: list[dict[str, float]] = field(default_factory=list)  # Prometheus at each hold
    scraped_at: list[float] = field(default_factory=list)  # when the test read /metrics at each hold
    labels: dict[str, str] = field(default_factory=dict)  # of one series, as Prometheus stored them
    metrics_lint: tuple[int, str] = (0, "")  # promtool check metrics on /metrics while running
    final: coordinator_pb2.Search | None = None
    metrics_after: str = ""
    started: float = 0.0
    ended: float = 0.0


def _search_series(text: str, search_id: str) -> dict[str, float]:
    """The per-search samples of ``search_id`` in a /metrics page: name[extra label] -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("search_id") != search_id:
                continue
            extra = "".join(
                f"[{k}={v}]" for k, v in sorted(s.labels.items()) if k in ("phase", "kind", "budget")
            )
            out[s.name.removeprefix(PREFIX) + extra] = s.value
    return out


def _expected(s: coordinator_pb2.Search) -> dict[str, float]:
    """What the per-search series must say, read from GetSearch's answer."""
    phase = coordinator_pb2.SearchPhase.Name(s.phase).removeprefix("SEARCH_PHASE_").lower()
    expected = {
        "best_accuracy": s.best.accuracy,
        "mean_accuracy": s.iterations[-1].mean_accuracy,
        "restart": s.restart,
        "iteration": s.iteration,
        "iterations_completed": len(s.iterations),
        "templates_scored": s.usage.evaluations,
        "llm_calls": s.usage.llm_calls,
        "llm_tokens[kind=prompt]": s.usage.prompt_tokens,
        "llm_tokens[kind=completion]": s.usage.completion_tokens,
        "llm_cost_usd": s.usage.cost_usd,
        "budget_used_ratio[budget=max_llm_calls]": s.usage.llm_calls / s.spec.budget.max_llm_calls,
    }
    for p in ("seeding", "proposing", "scoring", "evaluating", "done"):
        expected[f"phase[phase={p}]"] = float(p == phase)
    return expected


def _prometheus_now(url: str, search_id: str, since: float) -> dict[str, float] | None:
    """The three numbers of the issue from Prometheus, once it holds a scrape taken after ``since``."""
    out = {}
    for name in ("best_accuracy", "iteration", "llm_calls"):
        result = _prometheus_query(
            url, f'{PREFIX}{name}{{job="promptclimb-coordinator", search_id="{search_id}"}}'
        )
        if len(result) != 1:
            return None
        stamp = _prometheus_query(
            url, f'timestamp({PREFIX}{name}{{job="promptclimb-coordinator", search_id="{search_id}"}})'
        )
        if not stamp or float(stamp[0]["value"][1]) < since:
            return None
        out[name] = float(result[0]["value"][1])
    return out


def _range(url: str, promql: str, start: float, end: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": "1"})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{query}", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    prometheus_binary = tool_or_skip("prometheus")
    promtool = tool_or_skip("promtool")
    root = tmp_path_factory.mktemp("search-dashboard")
    model = make_tiny_model_dir(root / "model")
    images = make_image_folder(root / "images", per_split={"train": 2, "test": 2})
    env = test_env(OPENAI_API_KEY="sk-test")
    llm = HeldLLM()
    fake_llm = FakeOpenAI(default=llm.reply).start()
    result = Run(Stack())
    services = result.stack.services
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        services["scorer"] = _start_service(
            "scorer",
            ["--model", f"local-dir:{model}", "--dataset", f"tiny={images}", "--threads", "1"],
            env,
            root,
        )
        services["optimizer"] = _start_service(
            "optimizer", ["--llm-base-url", fake_llm.base_url, "--llm-model", "fake-model"], env, root
        )
        services["coordinator"] = _start_service(
            "coordinator",
            [
                "--scorer",
                f"127.0.0.1:{services['scorer'].port}",
                "--optimizer",
                f"127.0.0.1:{services['optimizer'].port}",
                "--store",
                str(root / "searches.db"),
                "--llm-price",
                "*=0.5,1.5",  # a cost to compare, not 0
                "--search-stall-seconds",
                "900",
            ],
            env,
            root,
        )
        _wait_serving(services["scorer"].port, "promptclimb.api.v1.ScorerService")
        _wait_serving(services["coordinator"].port, "promptclimb.api.v1.CoordinatorService")
        (root / "prom").mkdir()
        prometheus = _start_prometheus(prometheus_binary, result.stack, root / "prom")
        url = result.stack.prometheus_url
        assert url is not None
        coordinator = services["coordinator"]

        with grpc.insecure_channel(f"127.0.0.1:{coordinator.port}") as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            spec = coordinator_pb2.SearchSpec(
                dataset="tiny",
                restarts=1,
                iterations=LLM_CALLS + 2,  # more than the budget allows: it ends on the budget
                templates_per_iteration=2,
                display_name="dashboard check",
                budget=coordinator_pb2.Budget(max_llm_calls=LLM_CALLS),
            )
            spec.initial_pool.templates.templates.extend(["a photo of a {}.", "a {} in the wild."])
            result.started = time.time()
            search = stub.StartSearch(coordinator_pb2.StartSearchRequest(spec=spec), timeout=30).search
            result.search_id = search.id
            name = coordinator_pb2.GetSearchRequest(name=search.name, view=coordinator_pb2.SEARCH_VIEW_BASIC)

            def get() -> coordinator_pb2.Search:
                return stub.GetSearch(name, timeout=30).search

            for _ in range(LLM_CALLS):
                llm.wait_for_request()  # the search now waits for this reply and changes nothing
                held_since = time.time()
                before = get()
                exported = coordinator.metrics_text()
                result.scraped_at.append(time.time())
                after = get()
                assert after == before, "the search moved while its LLM call was held"
                result.held.append(before)
                result.exported.append(_search_series(exported, search.id))
                if len(result.held) == 1:
                    lint = subprocess.run(
                        [promtool, "check", "metrics"],
                        input=exported,
                        capture_output=True,
                        text=True,
                        timeout=60,
                    )
                    result.metrics_lint = (lint.returncode, lint.stdout + lint.stderr)
                result.from_prometheus.append(
                    _until(
                        lambda since=held_since: _prometheus_now(url, search.id, since),
                        "a Prometheus scrape of the held search",
                    )
                )
                if len(result.held) == 1:
                    stored = _prometheus_query(url, f'{PREFIX}llm_calls{{search_id="{search.id}"}}')
                    result.labels = dict(stored[0]["metric"]) if stored else {}
                    result.labels.pop("__name__", None)
                llm.release()

            def ended() -> coordinator_pb2.Search | None:
                s = get()
                return s if s.state == coordinator_pb2.SEARCH_STATE_SUCCEEDED else None

            result.final = _until(ended, "the search to succeed", timeout=120)
            result.ended = time.time()
            result.metrics_after = coordinator.metrics_text()
            # Prometheus marks the series stale at its first scrape without them.
            _until(
                lambda: (
                    True
                    if not _prometheus_query(url, f'{PREFIX}iteration{{search_id="{search.id}"}}')
                    else None
                ),
                "the search's series to go stale in Prometheus",
            )
        yield result
    finally:
        llm.release()  # a request still held must not keep the fake's thread forever
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        for service in reversed(list(services.values())):
            service.proc.terminate()
        for service in services.values():
            try:
                service.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.proc.kill()
        fake_llm.stop()


def test_while_it_runs_the_series_equal_what_getsearch_reports(run: Run) -> None:
    assert [s.iteration for s in run.held] == list(range(1, LLM_CALLS + 1))
    progressed = []
    for s, exported in zip(run.held, run.exported, strict=True):
        assert s.state == coordinator_pb2.SEARCH_STATE_RUNNING
        assert s.phase == coordinator_pb2.SEARCH_PHASE_PROPOSING
        exported = dict(exported)
        progressed.append(exported.pop("progress_timestamp_seconds"))  # not a GetSearch field
        assert exported == _expected(s)
    # One more iteration finished at each hold: each seen later than the one before, while running.
    assert run.started <= progressed[0] and progressed == sorted(set(progressed))
    assert all(p <= t for p, t in zip(progressed, run.scraped_at, strict=True))
    assert run.held[-1].usage.llm_calls == LLM_CALLS - 1 and run.held[-1].usage.cost_usd > 0


def test_prometheus_scraped_the_same_numbers(run: Run) -> None:
    for s, seen in zip(run.held, run.from_prometheus, strict=True):
        assert seen == {
            "best_accuracy": s.best.accuracy,
            "iteration": s.iteration,
            "llm_calls": s.usage.llm_calls,
        }


def test_the_series_carry_the_searchs_bounded_labels(run: Run) -> None:
    s = run.held[0]
    assert run.labels == {
        "search_id": s.id,
        "display_name": s.spec.display_name,
        "dataset": s.spec.dataset,
        "strategy": "contrast",  # the default strategy, as the spec names it
        # model="" (the coordinator's default scorer model): Prometheus stores an empty label as none
        "job": "promptclimb-coordinator",
        "instance": f"127.0.0.1:{run.stack.services['coordinator'].metrics_port}",
    }
    assert common_pb2.Strategy.Name(s.spec.strategy) == "STRATEGY_CONTRAST"


def test_the_stall_threshold_is_the_coordinators_setting(run: Run) -> None:
    assert "\npromptclimb_coordinator_search_stall_threshold_seconds 900.0\n" in run.metrics_after


def test_the_metrics_page_passes_promtool(run: Run) -> None:
    code, output = run.metrics_lint
    assert code == 0 and not output.strip(), output


def test_after_it_ends_the_coordinator_no_longer_exports_it(run: Run) -> None:
    assert run.final is not None and run.final.end_reason == "budget: max_llm_calls"
    assert run.search_id not in run.metrics_after
    assert f"# TYPE {PREFIX}best_accuracy gauge" in run.metrics_after  # the family stays, empty


def test_a_budget_spent_without_beating_the_seed_pool_is_counted(run: Run) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    assert run.final is not None
    counted = {
        s.labels["budget"]: s.value
        for family in text_string_to_metric_families(run.metrics_after)
        for s in family.samples
        if s.name == "promptclimb_coordinator_searches_unimproved_total"
    }
    unimproved = run.final.best.iteration == 0  # its best is still a seed-pool template
    assert counted == {
        "max_llm_calls": float(unimproved),
        "max_tokens": 0.0,
        "max_evaluations": 0.0,
        "max_duration": 0.0,
    }


def _search_row_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every panel in the dashboard's Search row."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"].startswith("Search"))
    row = list(itertools.takewhile(lambda p: p["type"] != "row", panels[start + 1 :]))
    assert len(row) >= 6, row
    return [(p["title"], t["expr"]) for p in row for t in p["targets"]]


def _substitute(expr: str, search_id: str) -> str:
    """What Grafana sends with this search picked (a single value) and a 1 s step."""
    return expr.replace("$search", search_id).replace("$__interval", "1s")


def test_the_dashboards_search_row_shows_the_finished_search(run: Run) -> None:
    url = run.stack.prometheus_url
    assert url is not None
    queries = _search_row_queries()
    assert {t for t, _ in queries} >= {
        "Search accuracy",
        "Search iteration",
        "Search phase",
        "Search budget used",
    }
    for title, expr in queries:
        series = _range(url, _substitute(expr, run.search_id), run.started, run.ended + 5)
        assert series, f"{title}: {expr} has no data for the search"
        assert {s["metric"].get("search_id") for s in series} == {run.search_id}, (title, series)
    # The best accuracy line ends at the last value GetSearch gave while running, or above it.
    best = _range(url, _substitute(queries[0][1], run.search_id), run.started, run.ended + 5)
    assert max(float(v) for _, v in best[0]["values"]) >= run.held[-1].best.accuracy


def test_the_search_picker_lists_it(run: Run) -> None:
    url = run.stack.prometheus_url
    assert url is not None
    variable = next(v for v in load_check_deploy().dashboard_queries(DASHBOARD) if v[0] == "variable search")
    query = urllib.parse.urlencode({"match[]": variable[1], "start": run.started, "end": run.ended + 5})
    with urllib.request.urlopen(f"{url}/api/v1/label/search_id/values?{query}", timeout=10) as resp:
        assert run.search_id in json.load(resp)["data"]


def test_the_new_best_annotation_follows_the_best_accuracy(run: Run) -> None:
    url = run.stack.prometheus_url
    assert url is not None
    assert run.final is not None
    annotation = next(
        e for w, e in load_check_deploy().dashboard_queries(DASHBOARD) if w == "annotation New best"
    )
    marks = _range(url, _substitute(annotation, run.search_id), run.started, run.ended + 5)
    bests = [s.best.accuracy for s in run.held]
    if any(b > a for a, b in itertools.pairwise(bests)):
        assert marks, f"the best rose ({bests}) while Prometheus watched, but no annotation"
    if run.final.best.accuracy == bests[0]:  # the best accuracy only rises: it never moved
        assert not marks, f"annotations without a new best: {marks}"


def test_search_get_links_to_the_dashboard_over_the_searchs_time(run: Run) -> None:
    coordinator = run.stack.services["coordinator"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "promptclimb",
            "search",
            "get",
            run.search_id,
            "--coordinator",
            f"127.0.0.1:{coordinator.port}",
            "--grafana-url",
            "https://grafana.example.com/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=test_env(),
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    link = next(line for line in proc.stdout.splitlines() if line.startswith("dashboard: "))
    url = urllib.parse.urlsplit(link.removeprefix("dashboard: "))
    uid = json.loads(DASHBOARD.read_text())["uid"]
    assert (url.scheme, url.netloc, url.path) == ("https", "grafana.example.com", f"/d/{uid}/promptclimb")
    query = urllib.parse.parse_qs(url.query)
    assert query["var-search"] == [run.search_id]
    start, end = int(query["from"][0]) / 1000, int(query["to"][0]) / 1000
    # Everything Prometheus holds of the search lies in the linked time range.
    prometheus = run.stack.prometheus_url
    assert prometheus is not None
    series = _range(prometheus, f'{PREFIX}iteration{{search_id="{run.search_id}"}}', start - 300, end + 300)
    times = [float(t) for s in series for t, _ in s["values"]]
    assert times and start <= min(times) and max(times) <= end


def test_the_link_of_a_running_search_ends_now() -> None:
    from promptclimb.cli.search import dashboard_url

    s = coordinator_pb2.Search(id="a1/b")
    s.create_time.FromMilliseconds(1_796_276_481_000)
    assert dashboard_url("http://grafana:3000", s) == (
        "http://grafana:3000/d/promptclimb/promptclimb?var-search=a1%2Fb&from=1796276481000&to=now"
    )
