"""The search benchmark's statistics and report, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from promptclimb.bench.search import Run, tables
from promptclimb.bench.stats import paired, t975


def test_paired_interval_wins_and_worst_by_hand() -> None:
    found = [0.70, 0.64, 0.66, 0.60]
    plain = [0.64, 0.64, 0.64, 0.64]
    p = paired(found, plain)
    diffs = [0.06, 0.0, 0.02, -0.04]
    mean = sum(diffs) / 4  # 0.01
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    half = 3.182 * sd / 2  # t(0.975, 3 df) x sd / sqrt(4)
    assert p.mean == pytest.approx(mean)
    assert (p.low, p.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert (p.wins, p.ties, p.losses) == (2, 1, 1)
    assert p.worst == pytest.approx(-0.04)
    assert t975(9) == 2.262 and t975(200) == 1.960


def test_the_table_compares_each_strategy_with_plain_and_with_edit() -> None:
    runs = []
    for seed, (llm, edit) in enumerate([(0.70, 0.66), (0.64, 0.68), (0.72, 0.70)]):
        for strategy, test in (("contrast", llm), ("edit", edit)):
            run = Run(1, seed, strategy, "SUCCEEDED", "completed", 0.64, evaluations=29, llm_calls=6)
            run.picks = {"accuracy": ("t {}", 0.8, test)}
            runs.append(run)
    text = tables(runs, ["contrast", "edit"], ["accuracy"])
    contrast = next(line for line in text.splitlines() if line.startswith("| contrast"))
    cells = [c.strip() for c in contrast.split("|")[1:-1]]
    assert cells[2] == "68.7 ± 4.2"  # mean of 70, 64, 72
    assert cells[3].startswith("+4.7 [")  # over 64
    assert cells[4] == "2/1/0"
    assert cells[5] == "+0.0"
    assert cells[6].startswith("+0.7 [")  # paired over edit's 66, 68, 70


def test_a_mixed_arm_becomes_the_spec_a_user_would_write() -> None:
    import argparse

    from promptclimb.bench.search import arm, mix_of

    assert mix_of(arm("edit")) == ("edit", None, None)
    assert mix_of(arm("edit+contrast")) == ("edit", ["edit", "contrast"], "split")
    assert mix_of(arm("edit+released@bandit")) == ("edit", ["edit", "released"], "bandit")
    for bad in ("edit+nonsense", "edit@bandit", "edit+contrast@greedy"):
        with pytest.raises(argparse.ArgumentTypeError, match="want one of"):
            arm(bad)
