"""The description-search side of ``promptclimb search``: flags to spec, --dry-run's plan, and the
output of a finished description search (human, --json, --export-json, --plot).

The coordinator here is a fake that records each request and answers hand-built messages: the
tests are about the command line, not about the search (tests/coordinator has that).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from promptclimb.api.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from promptclimb.cli import main
from promptclimb.client import make_spec


class FakeCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Records StartSearch requests; answers with ``plan`` (and a search unless validate_only), and
    GetSearch with ``search``."""

    def __init__(self, plan: coordinator_pb2.SearchPlan, search: coordinator_pb2.Search) -> None:
        self.plan = plan
        self.search = search
        self.starts: list[coordinator_pb2.StartSearchRequest] = []

    def StartSearch(
        self, request: coordinator_pb2.StartSearchRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.StartSearchResponse:
        self.starts.append(request)
        reply = coordinator_pb2.StartSearchResponse(plan=self.plan)
        if not request.validate_only:
            reply.search.CopyFrom(self.search)
            reply.search.spec.CopyFrom(request.spec)
        return reply

    def GetSearch(
        self, request: coordinator_pb2.GetSearchRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.GetSearchResponse:
        return coordinator_pb2.GetSearchResponse(search=self.search)

    def ListSearches(
        self, request: coordinator_pb2.ListSearchesRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListSearchesResponse:
        return coordinator_pb2.ListSearchesResponse(searches=[self.search])


PLAN = coordinator_pb2.SearchPlan(
    llm_calls=17,
    prompt_tokens=12345,
    completion_tokens=6789,
    cost_usd=0.0421,
    evaluations=5,
    num_classes=37,
    stopped_by=["max_llm_calls", "max_tokens"],
    basis="~700 prompt tokens per call (estimated)",
    priced_as="gpt-4o-mini=0.00015,0.0006",
)


def described_search(classes: int = 3, per_class: int = 2) -> coordinator_pb2.Search:
    """A SUCCEEDED description search: refine round 1 kept, round 2 rejected, one class missing."""
    spec = make_spec("demo", descriptions=True, description_template="a photo of a {}.", rounds=2)
    result = coordinator_pb2.SearchResult(
        best=common_pb2.ScoredTemplate(template="a photo of a {}.", accuracy=0.5),
        best_evaluation_accuracy=0.45,
        descriptions=coordinator_pb2.DescriptionSearchResult(
            template="a photo of a {}.",
            selection_accuracy=0.75,
            evaluation_accuracy=0.6,
            template_selection_accuracy=0.5,
            template_evaluation_accuracy=0.45,
            initial_selection_accuracy=0.625,
            missing=["class 2"],
            from_search="",
            rounds=[
                coordinator_pb2.DescriptionRound(
                    round=1, rewritten=["class 0"], selection_accuracy=0.75, accepted=True
                ),
                coordinator_pb2.DescriptionRound(
                    round=2, rewritten=["class 1"], selection_accuracy=0.5, accepted=False
                ),
            ],
            classes=[
                coordinator_pb2.ClassDescriptionResult(
                    class_name=f"class {c}",
                    descriptions=["{}"]
                    if c == 2
                    else [f"a {c}-{k} {'long ' * 40 if k == 0 else ''}thing" for k in range(per_class)],
                    selection_accuracy=1.0 - c / classes,
                )
                for c in range(classes)
            ],
        ),
    )
    return coordinator_pb2.Search(
        name="searches/d1",
        id="d1",
        state=coordinator_pb2.SEARCH_STATE_SUCCEEDED,
        spec=spec,
        best=result.best,
        result=result,
        iterations=[
            coordinator_pb2.IterationSummary(iteration=0, best_accuracy=0.625, mean_accuracy=0.625),
            coordinator_pb2.IterationSummary(iteration=1, best_accuracy=0.75, mean_accuracy=0.75),
            coordinator_pb2.IterationSummary(iteration=2, best_accuracy=0.75, mean_accuracy=0.5),
        ],
    )


@pytest.fixture
def fake() -> Iterator[tuple[FakeCoordinator, str]]:
    servicer = FakeCoordinator(PLAN, described_search())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_make_spec_marks_the_mode_and_leaves_unset_knobs_unset() -> None:
    spec = make_spec("demo", descriptions=True)
    assert spec.HasField("descriptions")
    assert not any(spec.descriptions.HasField(f) for f in ("rounds", "weakest_k", "descriptions_per_class"))
    assert not make_spec("demo").HasField("descriptions")
    spec = make_spec("demo", descriptions=True, rounds=0, from_search="abc")
    assert spec.descriptions.HasField("rounds") and spec.descriptions.rounds == 0  # describe only
    assert spec.descriptions.from_search == "searches/abc"
    with pytest.raises(ValueError, match="rounds, description_template"):
        make_spec("demo", rounds=2, description_template="a {}.")


def test_flags_land_in_the_spec_and_dry_run_asks_for_the_plan_only(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    flags = ["--descriptions-per-class", "4", "--rounds", "0", "--weakest-k", "2", "--top-confusions", "7"]
    argv = ["search", "start", "--coordinator", target, "--dataset", "demo", "--descriptions", *flags]
    assert main([*argv, "--max-classes-per-call", "5", "--from-search", "abc", "--dry-run", "--wait"]) == 0

    (request,) = servicer.starts
    assert request.validate_only
    d = request.spec.descriptions
    assert (d.descriptions_per_class, d.rounds, d.weakest_k, d.top_confusions, d.max_classes_per_call) == (
        4, 0, 2, 7, 5,
    )  # fmt: skip
    assert d.HasField("rounds")  # 0 sent, not dropped as a default
    assert d.from_search == "searches/abc" and d.template == ""
    out = capsys.readouterr().out
    assert "plan of a description search on demo (dry run: nothing started)" in out
    for expected in (
        "LLM calls           17",
        "12345 prompt + 6789 completion",
        "$0.0421 (priced as gpt-4o-mini=0.00015,0.0006)",
        "5 on the selection split",
        "classes             37",
        "max_llm_calls, max_tokens",
        "~700 prompt tokens per call (estimated)",
    ):
        assert expected in out


def test_dry_run_json_and_a_template_search_plan(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    argv = ["search", "start", "--coordinator", target, "--dataset", "demo", "--iterations", "3", "--dry-run"]
    assert main([*argv, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["llm_calls"] == "17" and plan["cost_usd"] == pytest.approx(0.0421)  # int64 as a string
    assert plan["stopped_by"] == ["max_llm_calls", "max_tokens"] and plan["num_classes"] == 37

    servicer.plan = coordinator_pb2.SearchPlan(llm_calls=3, evaluations=12)  # no price, no budget stops it
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "plan of a template search on demo" in out
    assert "$0 (no LLM price set on the coordinator" in out
    assert "nothing: the budgets allow the whole plan" in out
    assert [r.validate_only for r in servicer.starts] == [True, True]
    assert not any(r.spec.HasField("descriptions") for r in servicer.starts)
    assert servicer.starts[1].spec.iterations == 3


def test_description_flags_without_descriptions_are_refused(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    argv = ["search", "start", "--coordinator", target, "--dataset", "demo"]
    assert main([*argv, "--rounds", "2", "--description-template", "a {}."]) == 2
    assert "--rounds, --description-template: only for a description search (add --descriptions)" in (
        capsys.readouterr().err
    )
    assert main([*argv, "--rounds", "0"]) == 2  # 0 is given too
    # A slot template and a search to take it from contradict each other.
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--descriptions", "--description-template", "a {}.", "--from-search", "x"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert servicer.starts == []


def test_a_started_description_search_is_shown_with_its_descriptions(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    argv = [
        "search",
        "start",
        "--coordinator",
        target,
        "--dataset",
        "demo",
        "--descriptions",
        "--rounds",
        "2",
    ]
    assert main([*argv, "--description-template", "a photo of a {}."]) == 0
    (request,) = servicer.starts
    assert not request.validate_only and request.request_id
    assert request.spec.descriptions.template == "a photo of a {}." and request.spec.descriptions.rounds == 2
    out = capsys.readouterr().out
    assert "description search, template: a photo of a {}." in out
    assert "best template:" not in out  # `best` is the template alone, shown as such


def test_search_get_shows_a_description_result(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    assert main(["search", "get", "--coordinator", target, "d1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "template alone: selection (train) 0.5000, evaluation (test) 0.4500" in lines
    assert "descriptions:   selection (train) 0.7500, evaluation (test) 0.6000" in lines
    assert "gain over the template alone: +0.2500 selection, +0.1500 evaluation" in lines
    assert "first descriptions (train): 0.6250; refine rounds kept: 1 of 2 (round 1: 0.7500)" in lines
    assert "missing (never described, scored as the bare name): class 2" in lines
    # The weakest class first; the long description cut with an ellipsis.
    rows = [line for line in lines if line.startswith("  class ")]
    assert [r.split()[1] for r in rows] == ["2", "1", "0"]
    assert rows[0].endswith("0.3333  {}")
    assert "a 1-0 long long" in rows[1] and "…" in rows[1] and rows[1].endswith("| a 1-1 thing")
    assert "evaluation accuracy (test)" not in out and "ensemble of" not in out  # template-search lines

    servicer.search = described_search(classes=25, per_class=5)
    assert main(["search", "get", "--coordinator", target, "d1"]) == 0
    out = capsys.readouterr().out
    assert "classes (25, the weakest first, 20 shown)" in out
    assert "… 5 more classes (--json or --export-json for all)" in out
    assert "(+2 more)" in out  # 5 descriptions, 3 shown


def test_json_export_and_plot_of_a_description_search(
    fake: tuple[FakeCoordinator, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import matplotlib.pyplot as plt

    _, target = fake
    figures: list[Any] = []  # the plotted figure, kept as plot_progress closes it
    close = plt.close

    def keep(fig: Any) -> None:
        figures.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    exported, png = tmp_path / "search.json", tmp_path / "search.png"
    argv = ["search", "get", "--coordinator", target, "d1", "--json"]
    assert main([*argv, "--export-json", str(exported), "--plot", str(png)]) == 0

    printed = json.loads(capsys.readouterr().out)
    written = json.loads(exported.read_text())
    assert printed == written
    d = written["result"]["descriptions"]
    assert d["selection_accuracy"] == 0.75 and d["template_evaluation_accuracy"] == 0.45
    assert d["missing"] == ["class 2"] and [r["accepted"] for r in d["rounds"]] == [True, False]
    assert [c["class_name"] for c in d["classes"]] == ["class 0", "class 1", "class 2"]
    assert len(d["classes"][0]["descriptions"]) == 2  # all of them, untruncated
    assert written["spec"]["descriptions"]["rounds"] == 2

    assert png.read_bytes().startswith(b"\x89PNG")
    (fig,) = figures
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("refine round")
    assert ax.get_title().endswith("description search")
    assert [line.get_label() for line in ax.get_lines()] == ["kept descriptions", "this round's set"]


def test_a_template_search_is_shown_as_before(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    servicer, target = fake
    best = common_pb2.ScoredTemplate(template="a sketch of a {}.", accuracy=0.8)
    servicer.search = coordinator_pb2.Search(
        name="searches/t1",
        state=coordinator_pb2.SEARCH_STATE_SUCCEEDED,
        spec=make_spec("demo", iterations=2),
        best=best,
        result=coordinator_pb2.SearchResult(best=best, best_evaluation_accuracy=0.7),
    )
    assert main(["search", "get", "--coordinator", target, "t1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "best template: a sketch of a {}." in lines
    assert "selection accuracy (train): 0.8000" in lines
    assert "evaluation accuracy (test): 0.7000" in lines
    assert not any("description" in line for line in lines)


def test_search_list_shows_the_kept_descriptions_not_the_template_alone(
    fake: tuple[FakeCoordinator, str], capsys: pytest.CaptureFixture[str]
) -> None:
    _servicer, target = fake
    assert main(["search", "list", "--coordinator", target]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "searches/d1" in line)
    assert "0.7500" in row and "0.5000" not in row  # the kept set (iterations), not best: the template
