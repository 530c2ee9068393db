"""What-if replay from the journal: earlier stops and other picks cost no LLM call and no selection score."""

from __future__ import annotations

import pytest

from services.coordinator.replay import ReplayRefused, replay
from services.coordinator.search import SearchConfig, SearchState
from tests.coordinator.conftest import Harness
from tests.coordinator.test_core import CountingScorer, MemoryJournal, ScriptedProposer, climb


async def finished(config: SearchConfig) -> tuple[SearchState, MemoryJournal, CountingScorer]:
    journal, scorer = MemoryJournal(), CountingScorer()
    state = await climb(config, journal, scorer, ScriptedProposer()).run()
    return state, journal, scorer


def stop_of(state: SearchState, patience: int) -> int:
    """Iterations the patience rule keeps, computed from the summaries directly."""
    best, since = float("-inf"), 0
    for n, summary in enumerate(state.iterations):
        best, since = (summary.best_accuracy, 0) if summary.best_accuracy > best else (best, since + 1)
        if since >= patience:
            return n
    return len(state.iterations) - 1


async def test_an_earlier_stop_replays_without_llm_or_selection_scoring() -> None:
    config = SearchConfig(dataset="d", iterations=12, templates_per_iteration=1)
    state, journal, scorer = await finished(config)
    assert state.end_reason == "completed" and state.usage.llm_calls == 12
    scored_before = sum(scorer.scored.values())
    expected_iterations = stop_of(state, 2)
    assert expected_iterations < 12, "the fake search never plateaus for two iterations"

    replayed = await replay(
        config, state.result, journal.scores, journal.proposals, scorer, {"patience": 2}, started_at=0.0
    )
    assert replayed.state.end_reason == "converged"
    assert replayed.state.iteration == expected_iterations
    assert replayed.state.usage.llm_calls == expected_iterations  # replayed replies, none new
    # Nothing scored on the selection split; the evaluation split only when the pick changed.
    new_scores = sum(scorer.scored.values()) - scored_before
    assert replayed.state.result is not None and state.result is not None
    changed_pick = replayed.state.result.best.template != state.result.best.template
    assert new_scores == (1 if changed_pick else 0)
    assert {k for k, n in scorer.scored.items() if n > 1} == set()  # nothing scored twice


async def test_rules_that_change_what_the_llm_sees_are_refused() -> None:
    config = SearchConfig(dataset="d", iterations=3)
    state, journal, scorer = await finished(config)
    with pytest.raises(ReplayRefused, match="best_k cannot be replayed: it changes what the LLM is shown"):
        await replay(config, state.result, journal.scores, journal.proposals, scorer, {"best_k": 9}, 0.0)


async def test_a_replay_past_where_the_search_stopped_is_refused() -> None:
    config = SearchConfig(dataset="d", iterations=12, templates_per_iteration=1, patience=1)
    state, journal, scorer = await finished(config)
    assert state.end_reason == "converged"
    with pytest.raises(ReplayRefused, match="needs LLM calls the search never made"):
        await replay(config, state.result, journal.scores, journal.proposals, scorer, {"patience": 0}, 0.0)


async def test_replay_over_grpc_saves_llm_calls_and_refuses_what_changes_the_llms_view(
    harness: Harness,
) -> None:
    import grpc

    from promptclimb.api.v1 import coordinator_pb2 as pb
    from promptclimb.cli.search import replay_report
    from promptclimb.client import make_spec

    search = await harness.client.start(
        make_spec("toy", iterations=12, restarts=1, templates_per_iteration=1)
    )
    done = await harness.client.wait(search.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED and done.usage.llm_calls == 12
    asked, scored = len(harness.optimizer.requests), sum(harness.scorer.scored.values())

    reply = await harness.client.replay(search.name, patience=2)
    assert reply.replayed.end_reason == "converged"
    assert reply.replayed.usage.llm_calls < 12
    assert len(harness.optimizer.requests) == asked  # no LLM call
    changed = reply.replayed.result.best.template != done.result.best.template
    assert sum(harness.scorer.scored.values()) - scored == (1 if changed else 0)  # test split only
    assert reply.original.usage.llm_calls == 12
    stored = await harness.client.get(search.name)
    assert stored.end_reason == "completed"  # nothing stored
    text = replay_report(reply, {"patience": 2})
    assert (
        "converged" in text
        and f"LLM calls the new rule would have saved: {12 - reply.replayed.usage.llm_calls}" in text
    )

    try:
        await harness.client.replay(search.name, best_k=9)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "best_k cannot be replayed: it changes what the LLM is shown" in (err.details() or "")
    else:
        raise AssertionError("a replay that changes what the LLM sees was accepted")
    try:
        await harness.client.replay("searches/unknown", patience=1)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    else:
        raise AssertionError("replay of an unknown search was accepted")
