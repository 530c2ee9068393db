"""``bench search``'s description arms: parsing, the report's rows, and the grid against fakes."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import pytest

from promptclimb.api.v1 import common_pb2, coordinator_pb2, scorer_pb2
from promptclimb.bench.search import (
    DESCRIPTIONS,
    PLAIN,
    Described,
    Run,
    add_parser,
    arm,
    description_arm,
    grid,
    tables,
    uses_llm,
)

FOUND = "a catalogue photo of a {}."  # the fake edit search's best template
TEST = {PLAIN: 0.60, FOUND: 0.70}  # the fake scorer's test accuracy of each template


def test_description_arms_parse_and_name_the_template_search_they_build_on() -> None:
    assert description_arm(arm("describe")) == (True, None)
    assert description_arm(arm("edit>describe")) == (True, "edit")
    assert description_arm(arm("edit+contrast@bandit>describe")) == (True, "edit+contrast@bandit")
    assert description_arm(arm("edit")) == (False, None)
    assert uses_llm("describe") and uses_llm("edit>describe") and not uses_llm("edit")
    for bad in (
        "describe>describe",
        "nonsense>describe",
        "edit>contrast",
        "edit>describe>describe",
        ">describe",
    ):
        with pytest.raises(argparse.ArgumentTypeError, match="want one of"):
            arm(bad)


def _run(strategy: str, seed: int, test: float, *, evaluations: int, calls: int, alone: float) -> Run:
    run = Run(1, seed, strategy, "SUCCEEDED", "completed", 0.64, evaluations=evaluations, llm_calls=calls)
    template = PLAIN if strategy == "describe" else FOUND
    run.picks = {DESCRIPTIONS: (template, 0.9, test)}
    run.described = Described(template, alone, 0.8, 2, 1 if seed else 0, ["bag"] if seed == 2 else [])
    return run


def test_a_description_row_reads_like_a_template_row_and_says_what_it_compares() -> None:
    runs = []
    for seed, (edit, alone, on_top) in enumerate(
        [(0.66, 0.60, 0.70), (0.68, 0.62, 0.66), (0.70, 0.58, 0.71)]
    ):
        e = Run(1, seed, "edit", "SUCCEEDED", "completed", 0.64, evaluations=21)
        e.picks = {"accuracy_then_loss": ("t {}", 0.8, edit)}
        e.curve = [(1, 0.64), (21, edit)]
        runs += [
            e,
            _run("describe", seed, alone, evaluations=4, calls=4, alone=0.64),
            _run("edit>describe", seed, on_top, evaluations=21 + 4, calls=4, alone=edit),
        ]
    text = tables(runs, ["edit", "describe", "edit>describe"], ["accuracy_then_loss"])
    lines = text.splitlines()
    describe = [c.strip() for c in next(x for x in lines if x.startswith("| describe ")).split("|")[1:-1]]
    assert describe[1] == DESCRIPTIONS
    assert describe[2] == "60.0 ± 2.0"  # 60, 62, 58
    assert describe[3].startswith("-4.0 [")  # under plain's 64 on every split
    assert describe[4] == "0/0/3"
    assert describe[5] == "-6.0"
    assert describe[6].startswith("-8.0 [")  # paired against edit's 66, 68, 70
    assert describe[7:9] == ["4.0", "4.0"]
    on_edit = [c.strip() for c in next(x for x in lines if x.startswith("| edit>describe ")).split("|")[1:-1]]
    assert on_edit[6].startswith("+1.0 [")  # 70-66, 66-68, 71-70
    assert on_edit[7] == "25.0"  # both searches' evaluations
    assert any("not comparable with a template search's" in x for x in lines)
    own = next(x for x in lines if x.startswith("- edit>describe:"))
    assert f"template alone (`{FOUND}`) 68.0, descriptions 69.0: +1.0 [" in own
    assert "refine rounds kept 0.7 of 2.0; classes left undescribed 0.3" in own
    assert "Against `edit` stopped" not in text  # description arms have no equal-evaluations point


class FakeCoordinator:
    """Finishes every search at once: a template search finds FOUND, a description search reports
    descriptions scored through its slot template (from_search resolved to that search's best)."""

    def __init__(self) -> None:
        self.specs: dict[str, coordinator_pb2.SearchSpec] = {}
        self.found: dict[str, str] = {}  # template search -> its best template

    async def start(self, spec: coordinator_pb2.SearchSpec) -> coordinator_pb2.Search:
        name = f"searches/{len(self.specs)}"
        self.specs[name] = spec
        await asyncio.sleep(0)
        return coordinator_pb2.Search(name=name)

    async def wait(self, name: str) -> coordinator_pb2.Search:
        spec = self.specs[name]
        s = coordinator_pb2.Search(
            name=name, state=coordinator_pb2.SEARCH_STATE_SUCCEEDED, end_reason="completed"
        )
        if not spec.HasField("descriptions"):
            for template, accuracy in ((PLAIN, 0.6), (FOUND, 0.8)):
                s.history.add(
                    template=template, accuracy=accuracy, correct=int(10 * accuracy), total=10, loss=1.0
                )
            self.found[name] = FOUND
            return s
        d = spec.descriptions
        template = d.template or self.found[d.from_search]
        s.usage.CopyFrom(common_pb2.Usage(llm_calls=3, prompt_tokens=100, completion_tokens=20))
        for step in range(1 + d.rounds):
            s.iterations.add(iteration=step, num_templates=2 + step)
        r = s.result.descriptions
        r.template, r.from_search, r.selection_accuracy = template, d.from_search, 0.9
        r.template_evaluation_accuracy = TEST[template]
        r.evaluation_accuracy = TEST[template] + 0.05
        r.rounds.add(round=1, accepted=True)
        r.classes.add(class_name="bag", descriptions=["{}, a leather bag"])
        return s


class FakeScorer:
    async def evaluate(
        self, dataset: str, split: str, templates: Sequence[str]
    ) -> scorer_pb2.EvaluatePromptsResponse:
        return scorer_pb2.EvaluatePromptsResponse(
            scores=[scorer_pb2.TemplateScore(template=t, accuracy=TEST[t]) for t in templates]
        )


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["search", "--objectives", "accuracy_then_loss", *argv])


async def test_edit_then_describe_builds_on_the_edit_arms_own_search_and_costs_both() -> None:
    coordinator = FakeCoordinator()
    args = _args(
        "--strategies", "edit", "describe", "edit>describe", "--rounds", "2", "--descriptions-per-class", "2"
    )
    datasets = {(1, 101): "d101", (1, 102): "d102"}
    runs = await asyncio.wait_for(grid(args, coordinator, FakeScorer(), datasets), 10)

    specs = list(coordinator.specs.values())
    edits = {n: s for n, s in coordinator.specs.items() if not s.HasField("descriptions")}
    assert sorted(s.dataset for s in edits.values()) == ["d101", "d102"]  # one edit search per split
    described = [s for s in specs if s.HasField("descriptions")]
    assert all(s.descriptions.descriptions_per_class == 2 and s.descriptions.rounds == 2 for s in described)
    plain = [s for s in described if not s.descriptions.from_search]
    assert [s.descriptions.template for s in plain] == [PLAIN, PLAIN]
    on_edit = [s for s in described if s.descriptions.from_search]
    assert {(s.dataset, edits[s.descriptions.from_search].dataset) for s in on_edit} == {
        ("d101", "d101"),
        ("d102", "d102"),
    }

    by = {(r.strategy, r.seed): r for r in runs}
    assert by["edit", 101].evaluations == 2 and by["edit", 101].llm_calls == 0
    assert by["describe", 101].picks[DESCRIPTIONS] == (PLAIN, 0.9, pytest.approx(0.65))
    assert by["describe", 101].evaluations == 4  # the last step's running count: 2 + 2 rounds
    both = by["edit>describe", 101]
    assert both.picks[DESCRIPTIONS][0] == FOUND and both.picks[DESCRIPTIONS][2] == pytest.approx(0.75)
    assert (both.evaluations, both.llm_calls, both.tokens) == (2 + 4, 3, 120)
    assert both.described is not None and both.described.template_test == pytest.approx(0.70)


async def test_a_describe_arm_alone_runs_its_template_search_even_one_at_a_time() -> None:
    coordinator = FakeCoordinator()
    args = _args("--strategies", "edit>describe", "--parallel", "1")
    runs = await asyncio.wait_for(grid(args, coordinator, FakeScorer(), {(16, 7): "d"}), 10)
    assert [r.strategy for r in runs] == ["edit>describe"]
    assert runs[0].picks[DESCRIPTIONS][0] == FOUND
    assert len(coordinator.specs) == 2
