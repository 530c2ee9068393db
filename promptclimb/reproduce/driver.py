"""Running a plan over gRPC: scorer registration, then one search per cell, several at a time.

Every backbone is a model of one coordinator. Each cell's search names its backbone's model and
asks for transfer scores on every other backbone's model, so the transfer table comes from the
searches themselves. Each finished cell is recorded in the
:class:`~promptclimb.reproduce.cells.ResultsStore`; a failed one stays open for the next run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from promptclimb.reproduce.catalogue import COOP_DATASETS, FoundDataset, ReproduceError
from promptclimb.reproduce.cells import Cell, ResultsStore, transfer_key
from promptclimb.reproduce.profiles import Profile


@dataclass(frozen=True)
class Services:
    """The services of a run: one coordinator, and per backbone the scorer it registers datasets on."""

    coordinator: str
    scorers: dict[str, str]  # backbone -> scorer target


@dataclass
class Plan:
    """What one ``reproduce`` run covers."""

    datasets: list[FoundDataset]
    backbones: list[str]
    shots: int
    seeds: list[int]
    profile: Profile
    overrides: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> list[Cell]:
        """Every search cell, dataset-major so a dataset's features are computed once per run."""
        return [
            Cell(self.profile.name, self.shots, d.info.name, seed, backbone)
            for d in self.datasets
            for seed in self.seeds
            for backbone in self.backbones
        ]


class RunFailed(RuntimeError):
    """A search ended without success; its cell stays open for the next run."""


def log_line(stream: TextIO, message: str) -> None:
    """Print one progress line to ``stream`` now (a long run is watched live)."""
    print(message, file=stream, flush=True)


async def model_ids(services: Services, backbones: Sequence[str]) -> dict[str, str]:
    """Each backbone's model id: what its scorer reports, checked against the coordinator's models.

    ReproduceError when a scorer cannot be asked, two backbones are the same model, or the
    coordinator does not list (or has not found ready) a backbone's model.
    """
    import grpc

    from promptclimb.client import CoordinatorClient, ScorerClient

    ids: dict[str, str] = {}
    for backbone in backbones:
        target = services.scorers[backbone]
        async with ScorerClient(target, timeout=30) as scorer:
            try:
                ids[backbone] = (await scorer.model_info()).model_id
            except grpc.aio.AioRpcError as err:
                raise ReproduceError(
                    f"scorer of {backbone} ({target}): GetModelInfo failed: "
                    f"{err.code().name}: {err.details()}"
                ) from err
        if not ids[backbone]:
            raise ReproduceError(f"scorer of {backbone} ({target}) reports no model id (too old a scorer?)")
    same = [b for b in backbones if list(ids.values()).count(ids[b]) > 1]
    if same:
        raise ReproduceError(
            f"backbones {same} are served as one model ({ids[same[0]]!r}): give each its own scorer"
        )
    async with CoordinatorClient(services.coordinator, timeout=30) as client:
        try:
            served = {m.id: m for m in await client.models()}
        except grpc.aio.AioRpcError as err:
            raise ReproduceError(
                f"coordinator {services.coordinator}: ListModels failed: {err.code().name}: {err.details()}"
            ) from err
    listed = ", ".join(sorted(served)) or "none"
    for backbone, model in ids.items():
        if model not in served:
            raise ReproduceError(
                f"coordinator {services.coordinator} does not serve model {model!r} (the scorer of "
                f"{backbone}, {services.scorers[backbone]}); its models: {listed}. Start it with "
                f"--scorer {model}=TARGET"
            )
        if not served[model].ready:
            raise ReproduceError(
                f"coordinator {services.coordinator} has model {model!r} ({backbone}) not ready: "
                f"{served[model].reason}"
            )
    return ids


async def run_plan(
    plan: Plan,
    services: Services,
    models: dict[str, str],
    store: ResultsStore,
    *,
    parallel: int = 2,
    log: TextIO = sys.stderr,
    register_timeout: float = 24 * 3600.0,
) -> list[str]:
    """Run every unfinished cell of ``plan``, ``parallel`` searches at a time; returns the failed keys.

    ``models``: each backbone's model id on the coordinator (:func:`model_ids`).
    """
    import grpc

    from promptclimb.api.v1 import coordinator_pb2 as pb
    from promptclimb.api.v1 import scorer_pb2
    from promptclimb.client import TERMINAL, CoordinatorClient, ScorerClient, make_spec

    scorers = {b: ScorerClient(target, timeout=3600) for b, target in services.scorers.items()}
    coordinator = CoordinatorClient(services.coordinator, timeout=60)
    backbone_of = {m: b for b, m in models.items()}
    registered: set[tuple[str, str]] = set()
    registering: dict[tuple[str, str], asyncio.Lock] = {}
    by_name = {d.info.name: d for d in plan.datasets}
    failed: list[str] = []

    async def ensure_registered(backbone: str, cell: Cell) -> None:
        key = (backbone, cell.dataset_id)
        async with registering.setdefault(key, asyncio.Lock()):  # cells of one sample run together
            if key in registered:
                return
            d = by_name[cell.dataset]
            coop = scorer_pb2.CoopSource(
                split_json=str(d.split_json), image_root=str(d.image_root), shots=cell.shots, seed=cell.seed
            )
            t0 = time.monotonic()
            dataset = await scorers[backbone].register_dataset(
                cell.dataset_id, coop=coop, timeout=register_timeout
            )
            sizes = ", ".join(f"{s.name} {s.num_images}" for s in dataset.splits)
            log_line(
                log, f"registered {cell.dataset_id} on {backbone} ({sizes}; {time.monotonic() - t0:.1f} s)"
            )
            registered.add(key)

    async def score_one(backbone: str, cell: Cell, template: str) -> float:
        """Test accuracy of one template with ``backbone``."""
        reply = await scorers[backbone].evaluate(cell.dataset_id, "test", [template])
        if reply.scores[0].error.code:
            raise RunFailed(f"{template!r} rejected by {backbone}: {reply.scores[0].error.message}")
        return reply.scores[0].accuracy

    async def search(cell: Cell) -> Any:
        """Start (or find again, by request id) the cell's search and wait for its end."""
        info = COOP_DATASETS[cell.dataset]
        kwargs = {**plan.profile.spec_kwargs(), **plan.overrides}
        transfer = [models[b] for b in plan.backbones if b != cell.backbone]
        spec = make_spec(
            cell.dataset_id,
            selection_split="train",
            evaluation_split="test",
            seed=cell.seed,
            task_description=info.task,
            display_name=f"{info.title} {cell.shots}-shot seed {cell.seed} {cell.backbone} "
            f"({plan.profile.name})",
            model=models[cell.backbone],
            transfer_models=transfer,
            **kwargs,
        )
        for attempt in range(3):  # a failed search under an id stays failed: next id
            request_id = cell.request_id(attempt, [models[cell.backbone], *transfer])
            started = await coordinator.start(spec, request_id=request_id)
            for _ in range(60):  # the watch stream may break while a coordinator restarts
                try:
                    final = await coordinator.wait(started.name)
                    break
                except grpc.aio.AioRpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    await asyncio.sleep(2)
            else:
                raise RunFailed(f"{cell.key}: coordinator unreachable")
            if final.state == pb.SEARCH_STATE_SUCCEEDED:
                return final
            assert final.state in TERMINAL
            log_line(
                log,
                f"search {final.name} of {cell.key} ended "
                f"{pb.SearchState.Name(final.state)}: {final.end_reason}",
            )
        raise RunFailed(f"{cell.key}: search failed 3 times")

    async def run_cell(cell: Cell) -> None:
        log_line(log, f"run {cell.key}")
        try:
            # Every backbone's scorer holds this sample: the search transfers to them.
            await asyncio.gather(*(ensure_registered(b, cell) for b in plan.backbones))
            final = await search(cell)
            transfer: dict[str, dict[str, Any]] = {}
            for t in final.result.transfer:
                transfer[backbone_of.get(t.model, t.model)] = {
                    "model": t.model,
                    "found_test": t.best_evaluation_accuracy,
                    "ensemble_test": t.ensemble_evaluation_accuracy,
                    "plain_template": t.plain_template,
                    "plain_test": t.plain_evaluation_accuracy,
                }
            missing = [b for b in plan.backbones if b != cell.backbone and b not in transfer]
            if missing:
                raise RunFailed(f"search {final.name} has no transfer score for {missing}")
            template = COOP_DATASETS[cell.dataset].template
            handwritten = await score_one(cell.backbone, cell, template)
        except (RuntimeError, TimeoutError, grpc.aio.AioRpcError) as err:  # RunFailed, a failed registration
            detail = (
                f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
            )
            log_line(log, f"FAILED {cell.key}: {detail}")
            failed.append(cell.key)
            return
        u = final.usage
        store.add(
            {
                "key": cell.key,
                "kind": "search",
                **asdict(cell),
                "model": models[cell.backbone],
                "search": final.name,
                "best_template": final.result.best.template,
                "selection_accuracy": final.result.best.accuracy,
                "found_test": final.result.best_evaluation_accuracy,
                "ensemble_templates": list(final.result.ensemble_templates),
                "ensemble_test": final.result.ensemble_evaluation_accuracy,
                "handwritten_template": template,
                "handwritten_test": handwritten,
                "transfer": transfer,
                "llm_calls": u.llm_calls,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "evaluations": u.evaluations,
                "wall_seconds": final.wall_seconds,
            }
        )
        moved = "".join(f" -> {b} {t['found_test']:.4f}" for b, t in transfer.items())
        log_line(
            log,
            f"done {cell.key}: found {final.result.best_evaluation_accuracy:.4f} "
            f"ensemble {final.result.ensemble_evaluation_accuracy:.4f} hand-written {handwritten:.4f}"
            f"{moved} ({u.llm_calls} LLM calls)",
        )

    todo = []
    for cell in plan.cells():
        if cell.key in store:
            log_line(log, f"skip {cell.key} (finished)")
        else:
            todo.append(cell)
    queue = iter(todo)  # shared by the workers: each takes the next cell, in plan order

    async def worker() -> None:
        for cell in queue:
            await run_cell(cell)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
    finally:
        await coordinator.close()
        for scorer in scorers.values():
            await scorer.close()
    return failed


def plan_records(plan: Plan, store: ResultsStore) -> list[dict[str, Any]]:
    """The finished records that belong to ``plan`` (the store may hold other runs' cells).

    Transfer records of earlier versions (scored apart from the search) are read too.
    """
    out = []
    for cell in plan.cells():
        record = store.get(cell.key)
        if record is not None:
            out.append(record)
        for target in plan.backbones:
            t = store.get(transfer_key(cell, target))
            if t is not None:
                out.append(t)
    return out
