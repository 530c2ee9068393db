"""User commands: ``up`` (all three services locally), ``search start|watch|get|cancel|list``, ``eval``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from promptclimb.common.processes import die_with_parent

DEFAULT_COORDINATOR = os.environ.get("PROMPTCLIMB_COORDINATOR_TARGET", "127.0.0.1:50050")
_LISTENING = re.compile(r"promptclimb (\w+) listening port=(\d+)(?: metrics_port=(\d+))?")


def add_parsers(commands: Any, services: Any) -> None:
    """Register ``up``, ``search`` and ``eval``."""
    up = commands.add_parser("up", help="run scorer, optimizer and coordinator locally (Ctrl-C stops all)")
    up.add_argument("--model", required=True, help="scorer model: open_clip name or local-dir:PATH")
    up.add_argument("--pretrained", help="open_clip pretrained tag or weights file")
    up.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="ID=SOURCE",
        help="dataset for the scorer (repeatable), as in `serve scorer`",
    )
    up.add_argument("--device", help="scorer torch device")
    up.add_argument("--llm-base-url", required=True, help="OpenAI-compatible endpoint for the optimizer")
    up.add_argument("--llm-model", required=True, help="LLM model name")
    up.add_argument("--llm-api-key-file", help="file holding the LLM API key")
    up.add_argument(
        "--state-dir", default=".promptclimb", help="SQLite store and feature cache (.promptclimb)"
    )
    up.add_argument("--port", type=int, default=50050, help="coordinator port (0 = any free; printed)")
    up.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for each service")
    up.set_defaults(func=_up)

    search = commands.add_parser("search", help="start, watch, get, cancel or list searches")
    sub = search.add_subparsers(dest="search_command", required=True, metavar="ACTION")

    start = sub.add_parser("start", help="start a search (--wait to follow it to the end)")
    _target(start)
    start.add_argument("--dataset", required=True)
    start.add_argument("--selection-split", default="")
    start.add_argument("--evaluation-split", default="")
    start.add_argument("--strategy", choices=["conversation", "contrast", "trajectory"], default="contrast")
    start.add_argument("--best-k", type=int, default=0)
    start.add_argument("--worst-k", type=int, default=0)
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
    start.add_argument("--name", dest="display_name", default="")
    start.add_argument("--request-id", help="idempotency key (a retried start returns the same search)")
    start.add_argument("--wait", action="store_true", help="follow the search with a progress bar")
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

    ls = sub.add_parser("list", help="list searches, newest first")
    _target(ls)
    ls.add_argument("--state", choices=["pending", "running", "succeeded", "failed", "cancelled"])
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_search_list)

    ev = commands.add_parser("eval", help="score templates directly against a scorer")
    ev.add_argument("--scorer", default="127.0.0.1:50051", help="scorer target")
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--ensemble", action="store_true", help="also score the ensemble of all templates")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("templates", nargs="+", help='templates with a "{}" class-name slot')
    ev.set_defaults(func=_eval)


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--coordinator",
        default=DEFAULT_COORDINATOR,
        help="coordinator target (env PROMPTCLIMB_COORDINATOR_TARGET, default 127.0.0.1:50050)",
    )


def _outputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the search as JSON")
    p.add_argument("--export-json", type=Path, help="write the full search (with history) as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of best/mean accuracy per iteration")


# ---- search ------------------------------------------------------------------------------------


def _search_start(args: argparse.Namespace) -> int:
    from promptclimb.client import make_spec

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
        display_name=args.display_name,
    )

    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
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


def _search_list(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.client import CoordinatorClient

        async with CoordinatorClient(args.coordinator) as client:
            found = await client.list(state=args.state)
        if args.json:
            from services.coordinator.export import search_to_dict

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
                f"{s.best.accuracy:.4f}" if s.best.template else "-",
                s.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            )
        Console().print(table)
        return 0

    return _rpc(run)


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
            total = s.spec.restarts * s.spec.iterations
            done_iterations = sum(1 for i in s.iterations if i.iteration > 0)
            b = s.spec.budget
            used = f"llm {s.usage.llm_calls}" + (f"/{b.max_llm_calls}" if b.max_llm_calls else "")
            used += f" tok {s.usage.prompt_tokens + s.usage.completion_tokens}" + (
                f"/{b.max_tokens}" if b.max_tokens else ""
            )
            used += f" eval {s.usage.evaluations}" + (f"/{b.max_evaluations}" if b.max_evaluations else "")
            status = f"{_state(s)} r{s.restart}.i{s.iteration} best {s.best.accuracy:.4f} | {used}"
            bar.update(task, total=total, completed=done_iterations, status=status)
    final = await client.get(name)
    _show(final, args)
    return 0 if final.state == pb.SEARCH_STATE_SUCCEEDED else 1


def _show(s: Any, args: argparse.Namespace) -> None:
    from services.coordinator.export import export_json, plot_progress, search_to_dict

    if getattr(args, "export_json", None):
        export_json(s, args.export_json)
    if getattr(args, "plot", None):
        plot_progress(s, args.plot)
    if args.json:
        print(json.dumps(search_to_dict(s), indent=2, ensure_ascii=False))
        return
    print(f"search {s.name}: {_state(s)}" + (f" ({s.end_reason})" if s.end_reason else ""))
    sel, ev = s.spec.selection_split or "train", s.spec.evaluation_split or "test"
    if s.best.template:
        print(f"best template: {s.best.template}")
        print(f"selection accuracy ({sel}): {s.best.accuracy:.4f}")
    if s.result.best.template:
        print(f"evaluation accuracy ({ev}): {s.result.best_evaluation_accuracy:.4f}")
        print(
            f"ensemble of {len(s.result.ensemble_templates)} accuracy ({ev}): "
            f"{s.result.ensemble_evaluation_accuracy:.4f}"
        )
    u = s.usage
    print(
        f"usage: {u.llm_calls} LLM calls, {u.prompt_tokens + u.completion_tokens} tokens, "
        f"{u.evaluations} evaluations, {s.wall_seconds:.1f} s"
    )


def _state(s: Any) -> str:
    from promptclimb.api.v1 import coordinator_pb2 as pb

    return pb.SearchState.Name(s.state).removeprefix("SEARCH_STATE_")


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


# ---- eval --------------------------------------------------------------------------------------


def _eval(args: argparse.Namespace) -> int:
    async def run() -> int:
        from promptclimb.api.v1 import scorer_pb2, scorer_pb2_grpc
        from promptclimb.common.channels import open_channel

        async with open_channel(args.scorer) as channel:
            stub = scorer_pb2_grpc.ScorerServiceStub(channel)
            reply = await stub.EvaluatePrompts(
                scorer_pb2.EvaluatePromptsRequest(
                    dataset=args.dataset, split=args.split, templates=args.templates
                ),
                timeout=300,
            )
            ensemble = None
            if args.ensemble:
                ensemble = await stub.EvaluateEnsemble(
                    scorer_pb2.EvaluateEnsembleRequest(
                        dataset=args.dataset, split=args.split, templates=args.templates
                    ),
                    timeout=300,
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


# ---- up ----------------------------------------------------------------------------------------


@dataclass
class LocalService:
    """A ``promptclimb serve NAME`` child process and the ports it announced."""

    name: str
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int | None  # None unless started with --metrics-port

    @property
    def target(self) -> str:
        """Its gRPC address on loopback."""
        return f"127.0.0.1:{self.port}"


def launch_service(
    name: str,
    argv: list[str],
    timeout: float,
    log: IO[str] | None = None,
    *,
    stdout_log: IO[str] | None = None,
    env: dict[str, str] | None = None,
    credentials: Any = None,
) -> LocalService:
    """Start ``promptclimb serve NAME …``; wait for its "listening" line and SERVING health.

    ``log`` receives the service's stderr (its logs; None leaves it on ours) and ``stdout_log``
    a copy of its stdout. ``env`` replaces our environment; ``credentials`` (grpc channel
    credentials) make the health check use TLS. The child is in its own session, so a terminal's
    Ctrl-C reaches only us and we stop the children in order; it dies with us on SIGKILL too.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptclimb", "serve", name, *argv],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,  # Ctrl-C reaches us, we stop them
        preexec_fn=die_with_parent(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # exited
            if stdout_log is not None:
                stdout_log.write(line)
                stdout_log.flush()
            m = _LISTENING.search(line)
            if m and m.group(1) == name:
                # Keep draining its stdout so a chatty child never blocks on a full pipe.
                threading.Thread(target=_drain, args=(proc.stdout, stdout_log), daemon=True).start()
                service = LocalService(name, proc, int(m.group(2)), int(m.group(3)) if m.group(3) else None)
                _wait_serving(name, service.port, proc, deadline - time.monotonic(), credentials)
                return service
        raise RuntimeError(f"{name} did not start (exit code {proc.poll()})")
    except BaseException:
        # Also on Ctrl-C while waiting: the caller never got this process, so it is ours to end.
        proc.kill()
        proc.wait()
        raise


def start_service(
    name: str, argv: list[str], timeout: float, log: IO[str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    """:func:`launch_service` for ``up`` and ``reproduce``: the process and its gRPC port."""
    service = launch_service(name, argv, timeout, log)
    return service.proc, service.port


def _drain(stream: IO[str], copy: IO[str] | None) -> None:
    for line in stream:
        if copy is not None:
            copy.write(line)
            copy.flush()


def _wait_serving(
    name: str, port: int, proc: subprocess.Popen[str], timeout: float, credentials: Any = None
) -> None:
    """Poll grpc.health.v1 until the service says SERVING (the scorer loads model and features first)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not become ready (exit code {proc.poll()})")


def stop_services(procs: list[tuple[str, subprocess.Popen[str]]]) -> None:
    """SIGTERM in reverse start order, then wait (kill after 15 s)."""
    for _, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for name, p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in 15 s; killing it", file=sys.stderr)
            p.kill()
            p.wait()


@dataclass
class LocalServices:
    """Scorer, optimizer and coordinator running as child processes on loopback."""

    scorer: str
    optimizer: str
    coordinator: str
    store: Path
    procs: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def dead(self) -> list[str]:
        """Names of the services that have exited."""
        return [n for n, p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        """SIGTERM in reverse start order, then wait (kill after 15 s)."""
        stop_services(self.procs)


def start_local_services(
    *,
    model: str,
    datasets: list[str],
    state: Path,
    llm_base_url: str | None,
    llm_model: str | None,
    llm_api_key_file: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    scorer_threads: int | None = None,
    port: int = 0,
    timeout: float = 300.0,
    log: IO[str] | None = None,
) -> LocalServices:
    """Start the three services (store and feature cache under ``state``) and wait until they serve.

    ``llm_base_url`` None leaves the optimizer on its default endpoint (OpenAI, key from env).
    With a fixed coordinator ``port`` the scorer takes ``port + 1`` and the optimizer ``port + 2``
    (so `promptclimb eval`'s default scorer target, 127.0.0.1:50051, finds `up`'s scorer); with 0,
    every service takes a free port.
    On any failure or interrupt, whatever was started is stopped before the exception propagates.
    """
    procs: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        scorer_argv = ["--model", model, "--port", str(port + 1 if port else 0)]
        scorer_argv += ["--cache-dir", str(state / "features")]
        for flag, value in (("pretrained", pretrained), ("device", device), ("threads", scorer_threads)):
            if value:
                scorer_argv += [f"--{flag}", str(value)]
        for d in datasets:
            scorer_argv += ["--dataset", d]
        proc, scorer_port = start_service("scorer", scorer_argv, timeout, log)
        procs.append(("scorer", proc))
        optimizer_argv = ["--port", str(port + 2 if port else 0)]
        for flag, value in (
            ("llm-base-url", llm_base_url),
            ("llm-model", llm_model),
            ("llm-api-key-file", llm_api_key_file),
        ):
            if value:
                optimizer_argv += [f"--{flag}", value]
        proc, optimizer_port = start_service("optimizer", optimizer_argv, timeout, log)
        procs.append(("optimizer", proc))
        store = state / "searches.db"
        coordinator_argv = [
            "--scorer", f"127.0.0.1:{scorer_port}", "--optimizer", f"127.0.0.1:{optimizer_port}",
            "--store", str(store), "--port", str(port),
        ]  # fmt: skip
        proc, coordinator_port = start_service("coordinator", coordinator_argv, timeout, log)
        procs.append(("coordinator", proc))
    except BaseException:
        stop_services(procs)
        raise
    return LocalServices(
        scorer=f"127.0.0.1:{scorer_port}",
        optimizer=f"127.0.0.1:{optimizer_port}",
        coordinator=f"127.0.0.1:{coordinator_port}",
        store=store,
        procs=procs,
    )


def _up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).expanduser().resolve()
    state.mkdir(parents=True, exist_ok=True)
    running: LocalServices | None = None
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        running = start_local_services(
            model=args.model,
            datasets=args.dataset,
            state=state,
            llm_base_url=args.llm_base_url,
            llm_model=args.llm_model,
            llm_api_key_file=args.llm_api_key_file,
            pretrained=args.pretrained,
            device=args.device,
            port=args.port,
            timeout=args.startup_timeout,
        )
        print(
            f"promptclimb up scorer={running.scorer} optimizer={running.optimizer} "
            f"coordinator={running.coordinator} store={running.store}",
            flush=True,
        )
        print(
            f"try: promptclimb search start --coordinator {running.coordinator} --dataset ID --wait",
            file=sys.stderr,
            flush=True,
        )
        while not stop["now"]:
            dead = running.dead()
            if dead:
                print(f"{', '.join(dead)} exited; stopping the others", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if running is not None:
            running.stop()
        for s, h in old.items():
            signal.signal(s, h)
