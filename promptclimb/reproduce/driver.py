"""Running a plan over gRPC: scorer registration, one search per cell, then the transfer scores.

Each finished cell is recorded in the :class:`~promptclimb.reproduce.cells.ResultsStore`; a
failed one stays open for the next run.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from promptclimb.reproduce.catalogue import COOP_DATASETS, FoundDataset
from promptclimb.reproduce.cells import Cell, ResultsStore, transfer_key
from promptclimb.reproduce.profiles import Profile


@dataclass(frozen=True)
class Endpoints:
    """The services of one backbone: its scorer and the coordinator searching with it."""

    scorer: str
    coordinator: str


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


async def run_plan(
    plan: Plan,
    endpoints: dict[str, Endpoints],
    store: ResultsStore,
    *,
    log: TextIO = sys.stderr,
    register_timeout: float = 24 * 3600.0,
) -> list[str]:
    """Run every unfinished cell of ``plan``; returns the keys of cells that failed.

    Cells run one after another; scale comes from the coordinator's scorer fan-out.
    """
    import grpc

    from promptclimb.api.v1 import scorer_pb2
    from promptclimb.client import CoordinatorClient, ScorerClient

    scorers = {b: ScorerClient(e.scorer, timeout=3600) for b, e in endpoints.items()}
    coordinators = {b: CoordinatorClient(e.coordinator, timeout=60) for b, e in endpoints.items()}
    registered: set[tuple[str, str]] = set()
    by_name = {d.info.name: d for d in plan.datasets}
    failed: list[str] = []

    async def ensure_registered(backbone: str, cell: Cell) -> None:
        if (backbone, cell.dataset_id) in registered:
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
        log_line(log, f"registered {cell.dataset_id} on {backbone} ({sizes}; {time.monotonic() - t0:.1f} s)")
        registered.add((backbone, cell.dataset_id))

    async def score_one(backbone: str, cell: Cell, template: str) -> float:
        """Test accuracy of one template with ``backbone``."""
        await ensure_registered(backbone, cell)
        reply = await scorers[backbone].evaluate(cell.dataset_id, "test", [template])
        if reply.scores[0].error.code:
            raise RunFailed(f"{template!r} rejected by {backbone}: {reply.scores[0].error.message}")
        return reply.scores[0].accuracy

    async def score_ensemble(backbone: str, cell: Cell, templates: Sequence[str]) -> float:
        """Test accuracy of the ensemble of ``templates`` with ``backbone``."""
        await ensure_registered(backbone, cell)
        reply = await scorers[backbone].evaluate_ensemble(cell.dataset_id, "test", list(templates))
        return reply.score.accuracy

    async def search(cell: Cell) -> Any:
        """Start (or find again, by request id) the cell's search and wait for its end."""
        from promptclimb.api.v1 import coordinator_pb2 as pb
        from promptclimb.client import TERMINAL, make_spec

        info = COOP_DATASETS[cell.dataset]
        kwargs = {**plan.profile.spec_kwargs(), **plan.overrides}
        spec = make_spec(
            cell.dataset_id,
            selection_split="train",
            evaluation_split="test",
            seed=cell.seed,
            task_description=info.task,
            display_name=f"{info.title} {cell.shots}-shot seed {cell.seed} {cell.backbone} "
            f"({plan.profile.name})",
            **kwargs,
        )
        client = coordinators[cell.backbone]
        for attempt in range(3):  # a failed search under an id stays failed: next id
            started = await client.start(spec, request_id=cell.request_id(attempt))
            for _ in range(60):  # the watch stream may break while a coordinator restarts
                try:
                    final = await client.wait(started.name)
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

    try:
        cells = plan.cells()
        for cell in cells:
            if cell.key in store:
                log_line(log, f"skip {cell.key} (finished)")
                continue
            log_line(log, f"run {cell.key}")
            try:
                for backbone in plan.backbones:  # every scorer scores this sample (transfer too)
                    await ensure_registered(backbone, cell)
                final = await search(cell)
                template = COOP_DATASETS[cell.dataset].template
                handwritten = await score_one(cell.backbone, cell, template)
            except (RunFailed, grpc.aio.AioRpcError) as err:
                detail = (
                    f"{err.code().name}: {err.details()}"
                    if isinstance(err, grpc.aio.AioRpcError)
                    else str(err)
                )
                log_line(log, f"FAILED {cell.key}: {detail}")
                failed.append(cell.key)
                continue
            u = final.usage
            store.add(
                {
                    "key": cell.key,
                    "kind": "search",
                    **asdict(cell),
                    "search": final.name,
                    "best_template": final.result.best.template,
                    "selection_accuracy": final.result.best.accuracy,
                    "found_test": final.result.best_evaluation_accuracy,
                    "ensemble_templates": list(final.result.ensemble_templates),
                    "ensemble_test": final.result.ensemble_evaluation_accuracy,
                    "handwritten_template": template,
                    "handwritten_test": handwritten,
                    "llm_calls": u.llm_calls,
                    "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens,
                    "evaluations": u.evaluations,
                    "wall_seconds": final.wall_seconds,
                }
            )
            log_line(
                log,
                f"done {cell.key}: found {final.result.best_evaluation_accuracy:.4f} "
                f"ensemble {final.result.ensemble_evaluation_accuracy:.4f} hand-written {handwritten:.4f} "
                f"({u.llm_calls} LLM calls)",
            )
        # Transfer: the found prompts of each finished cell scored on every other backbone.
        for cell in cells:
            record = store.get(cell.key)
            if record is None:
                continue
            for target in plan.backbones:
                key = transfer_key(cell, target)
                if target == cell.backbone or key in store:
                    continue
                try:
                    found = await score_one(target, cell, record["best_template"])
                    ensemble = await score_ensemble(
                        target, cell, record["ensemble_templates"] or [record["best_template"]]
                    )
                except (RunFailed, grpc.aio.AioRpcError) as err:
                    log_line(log, f"FAILED {key}: {err}")
                    failed.append(key)
                    continue
                store.add(
                    {"key": key, "kind": "transfer", "profile": cell.profile, "shots": cell.shots,
                     "dataset": cell.dataset, "seed": cell.seed, "source": cell.backbone, "target": target,
                     "template": record["best_template"], "found_test": found, "ensemble_test": ensemble}
                )  # fmt: skip
                log_line(log, f"done {key}: found {found:.4f} ensemble {ensemble:.4f}")
    finally:
        for client in coordinators.values():
            await client.close()
        for scorer in scorers.values():
            await scorer.close()
    return failed


def plan_records(plan: Plan, store: ResultsStore) -> list[dict[str, Any]]:
    """The finished records that belong to ``plan`` (the store may hold other runs' cells)."""
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
