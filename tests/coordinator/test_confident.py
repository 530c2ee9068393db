"""Selection that knows it looks at ten images: the CONFIDENT objective and the greedy ensemble.

Per-image results are scripted in the fake scorer (``"1100000000"``: the first two of ten images
right); the oracles below compute the paired bootstrap's verdicts exactly (multinomial
enumeration), independently of the coordinator's resampling.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from math import comb
from pathlib import Path

import pytest

from promptclimb.api.v1 import coordinator_pb2 as pb
from promptclimb.cli.search import _show
from promptclimb.client import make_spec
from services.coordinator.clients import GrpcScorer, RetryPolicy
from services.coordinator.pools import NAMED_POOLS
from services.coordinator.replay import replay
from services.coordinator.search import Objective, SearchConfig
from services.coordinator.store import SearchStore
from tests.coordinator.conftest import Harness
from tests.coordinator.fakes import FakeScorer, bits_loss, start_scorer, vote
from tests.coordinator.test_core import Crash, MemoryJournal, ScriptedProposer, climb

pytestmark = pytest.mark.timeout(60)

A = "a photo of a {}."  # the plain prompt: first in the basic pool, the incumbent to beat
B = "a picture of a {}."
C = "an image of a {}."
D = "a close-up photo of a {}."
E = "a {}."
IMAGES = {
    A: "1100000000",  # 2 of 10
    B: "1110000000",  # 3: one image more than A, nothing lost
    C: "1111111100",  # 8: six images more than A
    D: "1111111110",  # 9: one image more than C
    E: "0011111111",  # 8: two images C gets wrong right, two C gets right wrong
}


def bootstrap_tails(diff: list[int]) -> tuple[float, float]:
    """Exactly, for the bootstrap of the mean of ``diff`` (entries -1, 0, 1): P(mean <= 0), P(mean >= 0)."""
    n = len(diff)
    up, down = diff.count(1) / n, diff.count(-1) / n
    at_most = at_least = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            p = comb(n, a) * comb(n - a, b) * up**a * down**b * (1 - up - down) ** (n - a - b)
            at_most += p if a <= b else 0.0
            at_least += p if a >= b else 0.0
    return at_most, at_least


def diff(x: str, y: str) -> list[int]:
    return [int(p) - int(q) for p, q in zip(x, y, strict=True)]


def clear(p: float) -> bool:
    """Far from the 5% line: 1,000 resamples cannot land on the other side (so the oracle is exact)."""
    return p <= 0.02 or p >= 0.10


def expected_winner(order: list[str]) -> str:
    """The incumbent rule, independently: replace when P(mean difference <= 0) < 5%."""
    incumbent = order[0]
    for t in order[1:]:
        at_most, _ = bootstrap_tails(diff(IMAGES[t], IMAGES[incumbent]))
        assert clear(at_most)
        if at_most < 0.05:
            incumbent = t
    return incumbent


def expected_ties(order: list[str], winner: str) -> list[str]:
    """Those whose 90% interval of the mean difference to the winner contains 0."""
    out = []
    for t in order:
        if t == winner:
            continue
        at_most, at_least = bootstrap_tails(diff(IMAGES[t], IMAGES[winner]))
        assert clear(at_most) and clear(at_least)
        if at_most >= 0.05 and at_least >= 0.05:
            out.append(t)
    return out


async def search(
    harness: Harness, objective: str, templates: list[str], images: dict[str, str] = IMAGES, **spec: object
) -> pb.Search:
    harness.scorer.images = images
    harness.optimizer.empty = True  # the pool alone decides; iterations add nothing
    started = await harness.client.start(
        make_spec("toy", templates=templates, objective=objective, restarts=1, iterations=1, **spec)  # type: ignore[arg-type]
    )
    done = await harness.client.wait(started.name)
    assert done.state == pb.SEARCH_STATE_SUCCEEDED, done.end_reason
    return done


async def test_one_image_better_out_of_ten_is_a_tie_under_confident_but_a_win_under_accuracy(
    harness: Harness,
) -> None:
    plain = await search(harness, "accuracy", [A, B])
    assert plain.result.best.template == B
    assert harness.scorer.per_image_requests == 0  # only CONFIDENT asks for per-image results

    confident = await search(harness, "confident", [A, B])
    assert confident.result.best.template == A == expected_winner([A, B])
    assert confident.best.template == A  # the live best says the same
    assert list(confident.result.tied_templates) == [B] == expected_ties([A, B], A)
    assert harness.scorer.per_image_requests > 0


async def test_a_wide_win_replaces_the_incumbent_and_the_ties_are_listed(harness: Harness) -> None:
    order = [A, B, C, D, E]
    done = await search(harness, "confident", order)
    winner = expected_winner(order)
    assert winner == C  # the oracle's own sanity: six images better wins, one better does not
    assert done.result.best.template == C
    assert list(done.result.tied_templates) == expected_ties(order, C) == [D, E]
    # Under accuracy the one-image-better D would have won.
    assert (await search(harness, "accuracy", order)).result.best.template == D


async def test_the_basic_pool_starts_from_the_plain_prompt(harness: Harness) -> None:
    pool = list(NAMED_POOLS["basic"])
    assert pool[0] == A and set(pool) == set(IMAGES)
    done = await search(harness, "confident", [], pool="basic")
    assert done.result.best.template == expected_winner(pool)


async def test_a_resumed_confident_search_picks_the_same_winner_without_rescoring(tmp_path: Path) -> None:
    fake = FakeScorer()
    fake.images = IMAGES
    server, port = await start_scorer(fake)
    scorer = GrpcScorer(f"127.0.0.1:{port}", chunk_size=2, retry=RetryPolicy(max_attempts=2))
    config = SearchConfig(
        dataset="toy",
        user_templates=(A, B, C, D, E),
        objective=Objective.CONFIDENT,
        restarts=1,
        iterations=4,
        templates_per_iteration=2,
        seed=7,
    )
    try:
        journal = MemoryJournal()
        with pytest.raises(Crash):
            await climb(config, journal, scorer, ScriptedProposer(crash_after=2)).run()  # type: ignore[arg-type]
        # The journal goes through the store (as a restarted coordinator reads it back).
        store = SearchStore(str(tmp_path / "s.db"))
        for split in {s for s, _ in journal.scores}:
            store.add_scores(
                "s1", split, [v for (sp, _), v in journal.scores.items() if sp == split], 0, 0, "pool"
            )
        resumed_journal = MemoryJournal()
        resumed_journal.scores = store.scores("s1")
        resumed_journal.proposals = dict(journal.proposals)
        assert all(s.per_image_correct for (sp, _), s in resumed_journal.scores.items() if sp == "train")
        before = dict(fake.scored)
        proposer = ScriptedProposer()
        proposer.calls = 2
        resumed = await climb(config, resumed_journal, scorer, proposer).run()  # type: ignore[arg-type]
        rescored = [k for k, n in fake.scored.items() if k in before and n > before[k]]
        assert rescored == []  # nothing recorded before the crash was scored again
        assert max(fake.scored.values()) == 1

        fresh = FakeScorer()
        fresh.images = IMAGES
        server2, port2 = await start_scorer(fresh)
        try:
            scorer2 = GrpcScorer(f"127.0.0.1:{port2}", chunk_size=2, retry=RetryPolicy(max_attempts=2))
            whole = await climb(config, MemoryJournal(), scorer2, ScriptedProposer()).run()  # type: ignore[arg-type]
            await scorer2.close()
        finally:
            await server2.stop(0)
        assert resumed.result is not None and whole.result is not None
        assert [t.template for t in resumed.history] == [t.template for t in whole.history]
        assert resumed.result.best.template == whole.result.best.template
        assert resumed.result.tied_templates == whole.result.tied_templates
        assert resumed.result.greedy_ensemble_templates == whole.result.greedy_ensemble_templates

        # The what-if replay of the same journal needs no selection scoring either (it would refuse).
        again = await replay(
            config,
            resumed.result,
            resumed_journal.scores,
            resumed_journal.proposals,
            scorer,
            {"ensemble_k": 2},
            0.0,
        )
        assert again.state.result is not None
        assert again.state.result.best.template == resumed.result.best.template
        assert again.state.result.tied_templates == resumed.result.tied_templates
        store.close()
    finally:
        await scorer.close()
        await server.stop(0)


def test_old_databases_gain_the_per_image_columns(tmp_path: Path) -> None:
    import sqlite3

    from services.coordinator.search import Score

    path = tmp_path / "old.db"
    SearchStore(str(path)).close()
    with sqlite3.connect(path) as c:  # a database made before the columns existed
        c.execute("DROP TABLE promptclimb_schema")  # and so before the schema was versioned
        c.execute("ALTER TABLE scored_templates DROP COLUMN per_image_correct")
        c.execute("ALTER TABLE scored_templates DROP COLUMN per_image_loss")
    store = SearchStore(str(path))
    store.add_scores(
        "s",
        "train",
        [Score(A, 0.2, 2, 10, None, 1.0), Score(B, 0.3, 3, 10, None, 0.9, b"\x07\x00", b"\x00" * 40)],
        0,
        0,
        "pool",
    )
    got = store.scores("s")
    assert got[("train", A)].per_image_correct == b"" and got[("train", A)].per_image_loss == b""
    assert (
        got[("train", B)].per_image_correct == b"\x07\x00"
        and got[("train", B)].per_image_loss == b"\x00" * 40
    )
    store.close()


def forward_selection(images: dict[str, str], order: list[str], k: int) -> list[str]:
    """The greedy ensemble, independently: add the member whose vote scores highest; stop when none helps."""
    chosen: list[str] = []
    best = -1
    while len(chosen) < k:
        rest = [t for t in order if t not in chosen]
        if not rest:
            break
        scores = [vote([images[m] for m in [*chosen, t]]).count("1") for t in rest]
        if max(scores) <= best:
            break
        chosen.append(rest[scores.index(max(scores))])
        best = max(scores)
    return chosen


async def test_the_greedy_ensemble_is_forward_selection_on_the_selection_split(harness: Harness) -> None:
    x, y, z, w = "{} x", "{} y", "{} z", "{} w"
    images = {x: "1111110000", y: "0000001111", z: "1111100000", w: "1111010000"}
    done = await search(harness, "accuracy_then_loss", [x, z, w, y], images, ensemble_k=3)
    # The objective's order: accuracy, then loss (which follows accuracy here), then the earliest.
    order = sorted([x, z, w, y], key=lambda t: (-images[t].count("1"), sum(bits_loss(images[t]))))
    assert order[:3] == list(done.result.ensemble_templates) == [x, z, w]
    expected = forward_selection(images, order, 3)
    assert expected == [x, y]  # not the top three: y is weak alone but covers what x misses
    assert list(done.result.greedy_ensemble_templates) == expected
    assert done.result.greedy_ensemble_evaluation_accuracy == pytest.approx(1.0)

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _show(done, argparse.Namespace(json=False))
    assert "greedy ensemble of 2 accuracy (test): 1.0000" in out.getvalue()
    assert "statistically tied" not in out.getvalue()  # not a CONFIDENT search

    confident = await search(harness, "confident", [A, B])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _show(confident, argparse.Namespace(json=False))
    assert "statistically tied with the best (train): 1 templates" in out.getvalue()
