"""User commands: ``search start|watch|get|cancel|list`` and ``eval``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from promptclimb.api.v1 import coordinator_pb2
from promptclimb.common.vocabulary import (
    DEFAULT_OBJECTIVE,
    DEFAULT_STRATEGY,
    LifecycleState,
    Objective,
    Strategy,
    state_name,
)

DEFAULT_COORDINATOR = os.environ.get("PROMPTCLIMB_COORDINATOR_TARGET", "127.0.0.1:50050")


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``search`` and ``eval``."""
    search = commands.add_parser("search", help="start, watch, get, cancel or list searches")
    sub = search.add_subparsers(dest="search_command", required=True, metavar="ACTION")

    start = sub.add_parser("start", help="start a search (--wait to follow it to the end)")
    _target(start)
    start.add_argument("--dataset", required=True)
    start.add_argument("--selection-split", default="")
    start.add_argument("--evaluation-split", default="")
    start.add_argument("--strategy", choices=[s.value for s in Strategy], default=DEFAULT_STRATEGY.value)

    def strategy_list(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in {s.value for s in Strategy}]
        if unknown:
            known = ", ".join(s.value for s in Strategy)
            raise argparse.ArgumentTypeError(f"unknown strategy {', '.join(unknown)} (choose from {known})")
        return names

    start.add_argument(
        "--mix",
        type=strategy_list,
        action="extend",
        help="strategies proposing together, repeatable or comma-separated (e.g. contrast,edit); "
        "--strategy then only asks for --llm-starters",
    )
    start.add_argument(
        "--mix-mode",
        choices=[m.removeprefix("MIX_MODE_").lower() for m in coordinator_pb2.MixMode.keys()[1:]],
        help="split (default): each strategy its share of every iteration; "
        "bandit: one per iteration, by Thompson sampling of who made new bests",
    )
    start.add_argument("--best-k", type=int, help="best templates shown to the LLM (default 3)")
    start.add_argument(
        "--worst-k", type=int, help="worst templates shown to the LLM (default 3; 0 = none, positive-only)"
    )
    start.add_argument("--temperature", type=float)
    pool = start.add_mutually_exclusive_group()
    pool.add_argument("--pool", help="built-in initial pool: basic, clip80")
    pool.add_argument("--template", dest="templates", action="append", help="initial template (repeatable)")
    pool.add_argument("--llm-starters", type=int, default=0, help="ask the LLM for N starting templates")
    start.add_argument("--restarts", type=int, default=0)
    start.add_argument("--iterations", type=int, default=0)
    start.add_argument("--templates-per-iteration", type=int, default=0)
    start.add_argument("--max-llm-calls", type=int, default=0)
    start.add_argument("--max-tokens", type=int, default=0)
    start.add_argument("--max-evaluations", type=int, default=0)
    start.add_argument("--max-duration", type=float, default=0.0, help="seconds")
    start.add_argument("--seed", type=int, default=0)
    start.add_argument("--task-description", default="")
    start.add_argument("--ensemble-k", type=int, default=0)
    start.add_argument(
        "--patience", type=int, default=0, help="stop after N iterations without a new best (0 = never)"
    )
    start.add_argument(
        "--min-delta", type=float, default=0.0, help="accuracy gain that counts as a new best (e.g. 0.01)"
    )
    start.add_argument(
        "--objective",
        choices=[o.value for o in Objective],
        help=f"how the best template is picked (default {DEFAULT_OBJECTIVE.value})",
    )
    start.add_argument(
        "--objective-weight", type=float, help="blended: accuracy - WEIGHT x cross-entropy (default 0.05)"
    )
    models = start.add_argument_group("models (promptclimb models list)")
    models.add_argument("--model", default="", help="scorer model to search on (default: the coordinator's)")

    def model_list(text: str) -> list[str]:
        return [m.strip() for m in text.split(",") if m.strip()]

    models.add_argument(
        "--transfer-models",
        type=model_list,
        default=[],
        metavar="A,B",
        help="also score the found prompts on these models' evaluation split",
    )
    models.add_argument(
        "--objective-models",
        type=model_list,
        default=[],
        metavar="A,B",
        help="rank candidates by their selection scores on --model and these models",
    )
    models.add_argument(
        "--objective-aggregate",
        choices=["mean", "min"],
        help="how --objective-models' scores combine (default mean)",
    )
    described = start.add_argument_group(
        "descriptions",
        "a description search: the LLM writes short visual descriptions for every class, then rewrites "
        "the weakest classes each round, keeping a rewrite only when it scores higher; the "
        "template-search options (--strategy, --mix, --pool, --template, --restarts, --iterations…) "
        "are not used, the splits and budgets are",
    )
    described.add_argument("--descriptions", action="store_true", help="run a description search")
    for flag, helptext in DESCRIPTION_KNOBS.items():
        described.add_argument(flag, type=int, metavar="N", help=helptext)
    slot = described.add_mutually_exclusive_group()
    slot.add_argument(
        "--description-template",
        default="",
        metavar="T",
        help='slot template each description goes into, e.g. "a photo of a {}." (default: none, the '
        "descriptions as they are)",
    )
    slot.add_argument(
        "--from-search",
        default="",
        metavar="NAME",
        help="searches/ID or ID of a SUCCEEDED template search: its best template is the slot template",
    )
    start.add_argument("--name", dest="display_name", default="")
    start.add_argument("--request-id", help="idempotency key (a retried start returns the same search)")
    start.add_argument("--wait", action="store_true", help="follow the search with a progress bar")
    start.add_argument(
        "--dry-run",
        action="store_true",
        help="print what the search would spend (LLM calls, tokens, cost, evaluations, the budgets that "
        "would stop it) and start nothing; --wait is then ignored",
    )
    _outputs(start)
    start.set_defaults(func=_search_start)

    for action, helptext in (
        ("watch", "follow a search to its end"),
        ("get", "show a search"),
        ("cancel", "cancel a running search"),
    ):
        p = sub.add_parser(action, help=helptext)
        _target(p)
        p.add_argument("name", help="searches/ID or ID")
        _outputs(p)
        p.set_defaults(func=_search_one, action=action)

    rp = sub.add_parser(
        "replay",
        help="what if: re-run a finished search from its journal under other stopping/picking rules",
        description="Replays a finished search from its recorded LLM replies and scores: no LLM call, no "
        "selection scoring (a new pick is scored once on the evaluation split), nothing stored. "
        "Rules that would change what the LLM is shown (e.g. --best-k) are refused with the reason.",
    )
    _target(rp)
    rp.add_argument("name", help="searches/ID or ID")
    rp.add_argument("--objective", choices=[o.value for o in Objective])
    rp.add_argument("--objective-weight", type=float)
    rp.add_argument("--patience", type=int)
    rp.add_argument("--min-delta", type=float)
    rp.add_argument("--ensemble-k", type=int)
    # Accepted so that the server can say why they cannot be replayed.
    for flag, kind in (("--best-k", int), ("--worst-k", int), ("--temperature", float)):
        rp.add_argument(flag, type=kind, help=argparse.SUPPRESS)
    rp.add_argument("--strategy", choices=[s.value for s in Strategy], help=argparse.SUPPRESS)
    rp.add_argument("--json", action="store_true", help="print both searches as JSON")
    rp.set_defaults(func=_search_replay)

    ls = sub.add_parser("list", help="list searches, newest first")
    _target(ls)
    ls.add_argument("--state", choices=[s.value.lower() for s in LifecycleState])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_search_list)

    models_cmd = commands.add_parser("models", help="the scorer models a coordinator reaches")
    models_sub = models_cmd.add_subparsers(dest="models_command", required=True)
    mls = models_sub.add_parser("list", help="each model: id, target, ready, datasets")
    _target(mls)
    mls.add_argument("--json", action="store_true")
    mls.set_defaults(func=_models_list)

    ev = commands.add_parser("eval", help="score templates directly against a scorer")
    ev.add_argument("--scorer", default="127.0.0.1:50051", help="scorer target")
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--ensemble", action="store_true", help="also score the ensemble of all templates")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("templates", nargs="+", help='templates with a "{}" class-name slot')
    ev.set_defaults(func=_eval)


# The description search's numeric knobs: flag -> help (the flag's dest is the make_spec keyword).
DESCRIPTION_KNOBS = {
    "--descriptions-per-class": "descriptions the LLM writes per class (default 3, at most 10)",
    "--rounds": "refine rounds after the first descriptions (default 3; 0 = describe only)",
    "--weakest-k": "weakest classes rewritten per round (default 3)",
    "--top-confusions": "most frequent confusions shown to the LLM per round (default 50)",
    "--max-classes-per-call": "most classes in one LLM call (default: the optimizer's, 8)",
}


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--coordinator",
        default=DEFAULT_COORDINATOR,
        help="coordinator target (env PROMPTCLIMB_COORDINATOR_TARGET, default 127.0.0.1:50050)",
    )


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the search as JSON")
    p.add_argument(
        "--grafana-url",
        default=os.environ.get("PROMPTCLIMB_GRAFANA_URL", ""),
        help="Grafana base URL: also print the link to the search on the promptclimb dashboard "
        "(env PROMPTCLIMB_GRAFANA_URL)",
    )
    p.add_argument("--export-json", type=Path, help="write the full search (with history) as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of best/mean accuracy per iteration")


# ---- search ------------------------------------------------------------------------------------


def _search_start(args: argparse.Namespace) -> int:
    from promptclimb.client import make_spec

    # Every description flag's dest is its make_spec keyword.
    flags = (*DESCRIPTION_KNOBS, "--description-template", "--from-search")
    dests = {f: f.removeprefix("--").replace("-", "_") for f in flags}
    given = [f for f, dest in dests.items() if getattr(args, dest) not in (None, "")]
    if given and not args.descriptions:
        print(
            f"error: {', '.join(given)}: only for a description search (add --descriptions)", file=sys.stderr
        )
        return 2
    spec = make_spec(
        args.dataset,
        selection_split=args.selection_split,
        evaluation_split=args.evaluation_split,
        strategy=args.strategy,
        best_k=args.best_k,
        worst_k=args.worst_k,
        temperature=args.temperature,
        pool=args.pool,
        templates=args.templates,
        llm_starters=args.llm_starters,
        restarts=args.restarts,
        iterations=args.iterations,
        templates_per_iteration=args.templates_per_iteration,
        max_llm_calls=args.max_llm_calls,
        max_tokens=args.max_tokens,
        max_evaluations=args.max_evaluations,
        max_duration_seconds=args.max_duration,
        seed=args.seed,
        task_description=args.task_description,
        ensemble_k=args.ensemble_k,
        patience=args.patience,
        min_delta=args.min_delta,
        objective=args.objective,
        objective_weight=args.objective_weight,
        mix=args.mix,
        mix_mode=args.mix_mode,
        display_name=args.display_name,
        model=args.model,
        transfer_models=args.transfer_models,
        objective_models=args.objective_models,
        objective_aggregate=args.objective_aggregate,
        descriptions=args.descriptions,
        **{dest: getattr(args, dest) for dest in dests.values()},
    )

    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
            if args.dry_run:
                plan = await client.plan(spec)
                if args.json:
                    from promptclimb.export import message_to_dict

                    print(json.dumps(message_to_dict(plan), indent=2, ensure_ascii=False))
                else:
                    print(plan_report(plan, spec))
                return 0
            search = await client.start(spec, request_id=args.request_id)
            if not args.wait:
                _show(search, args)
                return 0
            if not args.json:
                print(f"started {search.name}", file=sys.stderr)
            return await _follow(client, search.name, args)

    return _rpc(run)


def _search_one(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
            if args.action == "watch":
                return await _follow(client, args.name, args)
            if args.action == "cancel":
                await client.cancel(args.name)
            _show(await client.get(args.name), args)
            return 0

    return _rpc(run)


REPLAY_FIELDS = (
    "objective", "objective_weight", "patience", "min_delta", "ensemble_k",
    "best_k", "worst_k", "temperature", "strategy",
)  # fmt: skip


def _search_replay(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        changes = {f: getattr(args, f) for f in REPLAY_FIELDS if getattr(args, f) is not None}
        if not changes:
            print("error: name at least one rule to replay with (e.g. --patience 2)", file=sys.stderr)
            return 2
        async with CoordinatorClient(args.coordinator) as client:
            reply = await client.replay(args.name, **changes)
        if args.json:
            from promptclimb.export import search_to_dict

            both = {"original": search_to_dict(reply.original), "replayed": search_to_dict(reply.replayed)}
            print(json.dumps({**both, "scored": list(reply.scored)}, indent=2, ensure_ascii=False))
            return 0
        print(replay_report(reply, changes))
        return 0

    return _rpc(run)


def replay_report(reply: Any, changes: dict[str, Any]) -> str:
    """Original and replayed outcome side by side."""
    a, b = reply.original, reply.replayed
    said = ", ".join(f"{k}={v}" for k, v in changes.items())
    rows = [
        (
            "end",
            f"{a.end_reason} at r{a.restart}.i{a.iteration}",
            f"{b.end_reason} at r{b.restart}.i{b.iteration}",
        ),
        ("best template", a.result.best.template, b.result.best.template),
        ("selection accuracy", f"{a.result.best.accuracy:.4f}", f"{b.result.best.accuracy:.4f}"),
        (
            "evaluation accuracy",
            f"{a.result.best_evaluation_accuracy:.4f}",
            f"{b.result.best_evaluation_accuracy:.4f}",
        ),
        (
            f"ensemble accuracy (top {len(a.result.ensemble_templates)}/{len(b.result.ensemble_templates)})",
            f"{a.result.ensemble_evaluation_accuracy:.4f}",
            f"{b.result.ensemble_evaluation_accuracy:.4f}",
        ),
        ("LLM calls", str(a.usage.llm_calls), str(b.usage.llm_calls)),
        ("templates scored (selection)", str(len(a.history)), str(len(b.history))),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"replay of {a.name} with {said}", f"{'':{width}}  original  ->  replayed"]
    lines += [f"{name:{width}}  {x}  ->  {y}" for name, x, y in rows]
    saved = a.usage.llm_calls - b.usage.llm_calls
    lines.append(f"LLM calls the new rule would have saved: {saved}" if saved > 0 else "no LLM call saved")
    lines.append(
        "scored for this replay: "
        + (", ".join(reply.scored) if reply.scored else "nothing (all from the journal)")
    )
    return "\n".join(lines)


def _search_list(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
            found = await client.list(state=args.state)
        if args.json:
            from promptclimb.export import search_to_dict

            print(json.dumps([search_to_dict(s) for s in found], indent=2))
            return 0
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "state", "dataset", "restart.iter", "best", "created")
        for s in found:
            table.add_row(
                s.name,
                _state(s),
                s.spec.dataset,
                f"{s.restart}.{s.iteration}",
                _best_accuracy(s),
                s.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            )
        Console().print(table)
        return 0

    return _rpc(run)


def _best_accuracy(s: Any) -> str:
    """The best selection accuracy so far: a description search's kept set, else the best template."""
    if s.spec.HasField("descriptions"):
        return f"{s.iterations[-1].best_accuracy:.4f}" if s.iterations else "-"
    return f"{s.best.accuracy:.4f}" if s.best.template else "-"


async def _follow(client: Any, name: str, args: argparse.Namespace) -> int:
    """A live progress bar until the search ends, then its summary; exit 0 only on SUCCEEDED."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from promptclimb.api.v1 import coordinator_pb2 as pb

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True, disable=args.json, console=_stderr_console()) as bar:
        task = bar.add_task("search", total=None, status="")
        async for _event, s in client.watch(name):
            described = s.spec.HasField("descriptions")
            if described:  # iteration 0 is the first described set, each later one a refine round
                d = s.spec.descriptions
                total = d.rounds if d.HasField("rounds") else None  # unset: the server's default
            else:
                total = s.spec.restarts * s.spec.iterations
            done_iterations = sum(1 for i in s.iterations if i.iteration > 0)
            b = s.spec.budget
            used = f"llm {s.usage.llm_calls}" + (f"/{b.max_llm_calls}" if b.max_llm_calls else "")
            used += f" tok {s.usage.prompt_tokens + s.usage.completion_tokens}" + (
                f"/{b.max_tokens}" if b.max_tokens else ""
            )
            used += f" eval {s.usage.evaluations}" + (f"/{b.max_evaluations}" if b.max_evaluations else "")
            if described:
                kept = f"{s.iterations[-1].best_accuracy:.4f}" if s.iterations else "-"
                status = f"{_state(s)} round {s.iteration} descriptions {kept} | {used}"
            else:
                status = f"{_state(s)} r{s.restart}.i{s.iteration} best {s.best.accuracy:.4f} | {used}"
            bar.update(task, total=total, completed=done_iterations, status=status)
    final = await client.get(name)
    _show(final, args)
    return 0 if final.state == pb.SEARCH_STATE_SUCCEEDED else 1


def _show(s: Any, args: argparse.Namespace) -> None:
    from promptclimb.export import export_json, plot_progress, search_to_dict

    if getattr(args, "export_json", None):
        export_json(s, args.export_json)
    if getattr(args, "plot", None):
        plot_progress(s, args.plot)
    if args.json:
        print(json.dumps(search_to_dict(s), indent=2, ensure_ascii=False))
        return
    print(f"search {s.name}: {_state(s)}" + (f" ({s.end_reason})" if s.end_reason else ""))
    sel, ev = s.spec.selection_split or "train", s.spec.evaluation_split or "test"
    if s.spec.HasField("descriptions") or s.result.HasField("descriptions"):
        print(description_report(s, sel, ev))
    elif s.best.template:
        print(f"best template: {s.best.template}")
        print(f"selection accuracy ({sel}): {s.best.accuracy:.4f}")
    if s.result.best.template and not s.result.HasField("descriptions"):
        if s.result.partial:
            print("partial result: the search failed after seeding; this is the best it had found")
        print(f"evaluation accuracy ({ev}): {s.result.best_evaluation_accuracy:.4f}")
        print(
            f"ensemble of {len(s.result.ensemble_templates)} accuracy ({ev}): "
            f"{s.result.ensemble_evaluation_accuracy:.4f}"
        )
        if s.result.greedy_ensemble_templates:
            print(
                f"greedy ensemble of {len(s.result.greedy_ensemble_templates)} accuracy ({ev}): "
                f"{s.result.greedy_ensemble_evaluation_accuracy:.4f}"
            )
        if s.result.tied_templates or s.spec.objective == coordinator_pb2.OBJECTIVE_CONFIDENT:
            print(f"statistically tied with the best ({sel}): {len(s.result.tied_templates)} templates")
        for t in s.result.transfer:
            print(
                f"on model {t.model} ({ev}): best {t.best_evaluation_accuracy:.4f}, ensemble "
                f"{t.ensemble_evaluation_accuracy:.4f}, plain {t.plain_evaluation_accuracy:.4f}"
            )
    u = s.usage
    print(
        f"usage: {u.llm_calls} LLM calls, {u.prompt_tokens + u.completion_tokens} tokens, "
        f"{u.evaluations} evaluations, {s.wall_seconds:.1f} s"
        + (f", ${u.cost_usd:.4f}" if u.cost_usd else "")
    )
    if getattr(args, "grafana_url", ""):
        print(f"dashboard: {dashboard_url(args.grafana_url, s)}")


SHOWN_CLASSES = 20  # a description result's classes printed (the weakest first); --json has all
SHOWN_DESCRIPTIONS = 3  # per class
SHOWN_CHARS = 100  # per description


def description_report(s: Any, sel: str, ev: str) -> str:
    """A description search: the template alone against the picked descriptions, the refine rounds,
    the missing classes and (the weakest first, truncated) each class's descriptions."""
    d = s.result.descriptions
    source = d.from_search or s.spec.descriptions.from_search
    if s.result.HasField("descriptions"):
        template = _slot_template(d.template)
    else:  # still running (or failed before a result): a from_search template is not known yet
        template = "the best of that search" if source else _slot_template(s.spec.descriptions.template)
    lines = [f"description search{f' from {source}' if source else ''}, template: {template}"]
    if not s.result.HasField("descriptions"):
        if s.iterations:  # the incumbent set's selection accuracy so far
            lines.append(f"descriptions so far ({sel}): {s.iterations[-1].best_accuracy:.4f}")
        return "\n".join(lines)
    if s.result.partial:
        lines.append(
            "partial result: the search failed before its end; these are the best descriptions it had"
        )
    gain_sel = d.selection_accuracy - d.template_selection_accuracy
    gain_ev = d.evaluation_accuracy - d.template_evaluation_accuracy
    kept = [r for r in d.rounds if r.accepted]
    lines += [
        f"template alone: selection ({sel}) {d.template_selection_accuracy:.4f}, "
        f"evaluation ({ev}) {d.template_evaluation_accuracy:.4f}",
        f"descriptions:   selection ({sel}) {d.selection_accuracy:.4f}, "
        f"evaluation ({ev}) {d.evaluation_accuracy:.4f}",
        f"gain over the template alone: {gain_sel:+.4f} selection, {gain_ev:+.4f} evaluation",
        f"first descriptions ({sel}): {d.initial_selection_accuracy:.4f}; "
        f"refine rounds kept: {len(kept)} of {len(d.rounds)}"
        + (f" ({', '.join(f'round {r.round}: {r.selection_accuracy:.4f}' for r in kept)})" if kept else ""),
    ]
    if d.missing:
        lines.append(f"missing (never described, scored as the bare name): {', '.join(d.missing)}")
    ranked = sorted(d.classes, key=lambda c: c.selection_accuracy)
    lines.append(
        f"classes ({len(ranked)}, the weakest first"
        + (f", {SHOWN_CLASSES} shown" if len(ranked) > SHOWN_CLASSES else "")
        + f"), selection accuracy ({sel}) and descriptions:"
    )
    name_width = max((len(c.class_name) for c in ranked[:SHOWN_CLASSES]), default=0)
    for c in ranked[:SHOWN_CLASSES]:
        texts = [
            t if len(t) <= SHOWN_CHARS else t[: SHOWN_CHARS - 1] + "…"
            for t in c.descriptions[:SHOWN_DESCRIPTIONS]
        ]
        more = len(c.descriptions) - SHOWN_DESCRIPTIONS
        lines.append(
            f"  {c.class_name:{name_width}}  {c.selection_accuracy:.4f}  "
            + " | ".join(texts)
            + (f" (+{more} more)" if more > 0 else "")
        )
    if len(ranked) > SHOWN_CLASSES:
        lines.append(f"  … {len(ranked) - SHOWN_CLASSES} more classes (--json or --export-json for all)")
    return "\n".join(lines)


def _slot_template(template: str) -> str:
    return template or "none ({} alone: the descriptions as they are)"


def plan_report(plan: Any, spec: Any) -> str:
    """What a search would spend (a dry run): one line per quantity."""
    kind = "description search" if spec.HasField("descriptions") else "template search"
    cost = (
        f"${plan.cost_usd:.4f} (priced as {plan.priced_as})"
        if plan.priced_as
        else "$0 (no LLM price set on the coordinator: --llm-price)"
    )
    rows = [
        ("LLM calls", str(plan.llm_calls)),
        ("tokens (estimated)", f"{plan.prompt_tokens} prompt + {plan.completion_tokens} completion"),
        ("cost", cost),
        ("evaluations", f"{plan.evaluations} on the selection split"),
        ("classes", str(plan.num_classes)),
        ("stopped first by", ", ".join(plan.stopped_by) or "nothing: the budgets allow the whole plan"),
        ("basis", plan.basis or "-"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"plan of a {kind} on {spec.dataset} (dry run: nothing started)"]
    lines += [f"{name:{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


DASHBOARD_UID = "promptclimb"  # deploy/monitoring/dashboards/promptclimb.json


def dashboard_url(grafana: str, s: Any) -> str:
    """The search on the dashboard: its Search row's variable set, the time range from its creation
    to a minute after its end (to now while it runs)."""
    start = s.create_time.ToMilliseconds()
    end = str(s.end_time.ToMilliseconds() + 60_000) if s.HasField("end_time") else "now"
    search = urllib.parse.quote(s.id, safe="")
    return f"{grafana.rstrip('/')}/d/{DASHBOARD_UID}/promptclimb?var-search={search}&from={start}&to={end}"


def _state(s: Any) -> str:
    return state_name(s.state)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _rpc(run: Any) -> int:
    """Run an async command; a gRPC error becomes a one-line message and exit code 2."""
    import grpc

    try:
        return int(asyncio.run(run()))
    except grpc.aio.AioRpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


# ---- models --------------------------------------------------------------------------------------


def _models_list(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
            models = await client.models()
        if args.json:
            from promptclimb.export import message_to_dict

            print(json.dumps([message_to_dict(m) for m in models], indent=2))
            return 0
        for m in models:
            state = "ready" if m.ready else f"NOT READY ({m.reason})"
            mark = " (default)" if m.default else ""
            print(f"{m.id or '?'}{mark}  {m.target}  {state}  datasets: {', '.join(m.datasets) or '-'}")
        return 0 if models and all(m.ready for m in models) else 1

    return _rpc(run)


# ---- eval --------------------------------------------------------------------------------------


def _eval(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import ScorerClient

        async with ScorerClient(args.scorer) as client:
            reply = await client.evaluate(args.dataset, args.split, args.templates, timeout=300)
            ensemble = None
            if args.ensemble:
                ensemble = await client.evaluate_ensemble(
                    args.dataset, args.split, args.templates, timeout=300
                )
        rows = [
            {
                "template": s.template,
                "accuracy": s.accuracy,
                "correct": s.correct,
                "total": s.total,
                "error": s.error.message if s.error.code else None,
            }
            for s in reply.scores
        ]
        if args.json:
            out: dict[str, Any] = {"dataset": args.dataset, "split": args.split, "scores": rows}
            if ensemble is not None:
                out["ensemble_accuracy"] = ensemble.score.accuracy
            print(json.dumps(out, indent=2))
        else:
            for r in rows:
                shown = (
                    f"error: {r['error']}"
                    if r["error"]
                    else f"{r['accuracy']:.4f} ({r['correct']}/{r['total']})"
                )
                print(f"{shown}  {r['template']}")
            if ensemble is not None:
                print(f"{ensemble.score.accuracy:.4f}  ensemble of {len(args.templates)}")
        return 1 if any(r["error"] for r in rows) else 0

    return _rpc(run)
