"""The scorer models one coordinator reaches: ``--scorer MODEL_ID=TARGET``, repeatable.

Each entry gets its own :class:`~services.coordinator.clients.GrpcScorer` (channel, chunks,
retries). A bare ``TARGET`` is the default model, its id learned from the scorer; without one the
first entry is the default. At start and every ``check_seconds`` each target is asked
GetModelInfo and ListDatasets: a target that serves another model than the id it is listed under
is refused (logged; the model is not ready and searches naming it end FAILED_PRECONDITION); an
unreachable one is only marked not ready (its calls are retried as every scorer call is).

The registry is itself the search's default :class:`~services.coordinator.search.TemplateScorer`
and a :class:`~services.coordinator.search.ModelScorers`, so a runner built on it needs nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from promptclimb.api.v1 import scorer_pb2
from services.coordinator import metrics
from services.coordinator.clients import DescriptionScore, GrpcScorer
from services.coordinator.search import Score, SearchFailed, TemplateScorer
from services.coordinator.settings import ModelEntry

log = logging.getLogger(__name__)
RECHECK_SECONDS = 2.0  # how soon a model that is not ready is asked again


@dataclass
class ModelStatus:
    """What the last check of one entry found (ListModels)."""

    entry: ModelEntry
    default: bool
    learned_id: str = ""  # the id the scorer reported
    ready: bool = False
    reason: str = "not checked yet"
    mismatch: bool = False  # the target serves another model: refused
    datasets: tuple[str, ...] = ()
    model_name: str = ""
    pretrained: str = ""

    @property
    def id(self) -> str:
        """The listed id, else the one the scorer reported ("" until it was reached)."""
        return self.entry.id or self.learned_id


@dataclass
class NamedScorer:
    """A model's scorer as a search sees it: a dataset missing there is FAILED_PRECONDITION."""

    model: str
    target: str
    scorer: GrpcScorer

    async def class_names(self, dataset: str) -> list[str]:
        """The dataset's class names on this model's scorer."""
        try:
            return await self.scorer.class_names(dataset)
        except SearchFailed as err:
            if err.code != "NOT_FOUND":
                raise
            raise SearchFailed(
                "FAILED_PRECONDITION",
                f"dataset {dataset!r} is not registered on the scorer of model {self.model!r} "
                f"({self.target}): {err.message}",
            ) from err

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,
    ) -> list[Score]:
        """Templates scored on this model."""
        return await self.scorer.score(dataset, split, templates, on_chunk, per_image=per_image)

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        """An ensemble scored on this model."""
        return await self.scorer.ensemble_accuracy(dataset, split, templates)

    async def evaluate_descriptions(
        self,
        dataset: str,
        split: str,
        sets: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        template: str = "",
        per_class: bool = False,
        top_confusions: int = 0,
        drop_overlong: bool = False,
    ) -> list[DescriptionScore]:
        """Description sets scored on this model."""
        return await self.scorer.evaluate_descriptions(
            dataset,
            split,
            sets,
            template=template,
            per_class=per_class,
            top_confusions=top_confusions,
            drop_overlong=drop_overlong,
        )


@dataclass
class ModelRegistry:
    """Every scorer model of the coordinator, checked at start and every ``check_seconds``."""

    entries: Sequence[ModelEntry]
    make_scorer: Callable[[str], GrpcScorer]
    check_seconds: float = 30.0
    check_deadline_seconds: float = 5.0
    scorers: list[GrpcScorer] = field(init=False)
    status: list[ModelStatus] = field(init=False)
    _task: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        default = next((i for i, e in enumerate(self.entries) if not e.id), 0)
        self.scorers = [self.make_scorer(e.target) for e in self.entries]
        self.status = [ModelStatus(e, default=i == default) for i, e in enumerate(self.entries)]
        self._default = default

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every target once, then keep checking in the background."""
        await self.check()
        self._task = asyncio.create_task(self._keep_checking(), name="scorer-models")

    async def close(self) -> None:
        """Stop checking and close every channel."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(s.close() for s in self.scorers))

    async def _keep_checking(self) -> None:
        while True:
            # A model not ready yet (a scorer still loading, one restarting) is asked again soon.
            ready = all(s.ready or s.mismatch for s in self.status)
            await asyncio.sleep(self.check_seconds if ready else min(self.check_seconds, RECHECK_SECONDS))
            try:
                await self.check()
            except Exception:  # a check must never end the loop
                log.exception("scorer model check failed")

    async def check(self) -> None:
        """Ask every target which model it serves and which datasets it has."""
        await asyncio.gather(*(self._check(i) for i in range(len(self.entries))))

    async def _check(self, i: int) -> None:
        status, stub = self.status[i], self.scorers[i].stub
        entry = status.entry
        try:
            info = await stub.GetModelInfo(
                scorer_pb2.GetModelInfoRequest(), timeout=self.check_deadline_seconds
            )
            listed = await stub.ListDatasets(
                scorer_pb2.ListDatasetsRequest(), timeout=self.check_deadline_seconds
            )
        except grpc.aio.AioRpcError as err:
            was_ready = status.ready
            status.ready, status.mismatch = False, False
            status.reason = f"{err.code().name}: {err.details()}"
            if was_ready:
                log.warning("scorer model not ready", extra={"model": status.id, "reason": status.reason})
        else:
            status.learned_id = info.model_id
            status.model_name, status.pretrained = info.model_name, info.pretrained
            status.datasets = tuple(sorted(d.id for d in listed.datasets))
            if entry.id and info.model_id != entry.id:
                status.ready, status.mismatch = False, True
                status.reason = f"{entry.target} serves model {info.model_id!r}, not {entry.id!r}"
                log.error("scorer target refused", extra={"model": entry.id, "reason": status.reason})
            else:
                status.ready, status.mismatch, status.reason = True, False, ""
        if status.id:
            metrics.SCORER_MODEL_READY.labels(status.id).set(1 if status.ready else 0)

    # ---- lookups -------------------------------------------------------------------------------

    def _index(self, model: str) -> int | None:
        if not model:
            return self._default
        for i, s in enumerate(self.status):
            if s.entry.id == model:
                return i
        for i, s in enumerate(self.status):  # the default's id, once its scorer reported it
            if not s.entry.id and s.learned_id == model:
                return i
        return None

    def known(self, model: str) -> bool:
        """Whether ``model`` ("" = the default) is one of this coordinator's models."""
        return self._index(model) is not None

    def known_ids(self) -> list[str]:
        """The ids of the models, as far as known."""
        return [s.id for s in self.status if s.id]

    def scorer_of(self, model: str) -> TemplateScorer:
        """The scorer of ``model`` ("" = the default).

        Unknown -> NOT_FOUND; a target that serves another model -> FAILED_PRECONDITION.
        """
        i = self._index(model)
        if i is None:
            known = ", ".join(self.known_ids()) or "none"
            raise SearchFailed("NOT_FOUND", f"model {model!r} is not served here (models: {known})")
        status = self.status[i]
        if status.mismatch:
            raise SearchFailed(
                "FAILED_PRECONDITION", f"model {model or status.id!r} is refused: {status.reason}"
            )
        if not model:
            return self.scorers[i]  # the default: errors exactly as before models had names
        return NamedScorer(model, status.entry.target, self.scorers[i])

    # ---- the default model's TemplateScorer ------------------------------------------------------

    async def class_names(self, dataset: str) -> list[str]:
        """The default model's class names of ``dataset``."""
        return await self.scorers[self._default].class_names(dataset)

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,
    ) -> list[Score]:
        """Templates scored on the default model."""
        return await self.scorers[self._default].score(
            dataset, split, templates, on_chunk, per_image=per_image
        )

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        """An ensemble scored on the default model."""
        return await self.scorers[self._default].ensemble_accuracy(dataset, split, templates)
