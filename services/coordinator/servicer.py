"""CoordinatorService over gRPC: converts messages and calls the runner and the store.

Every store call is awaited on the runner's :class:`AsyncSearchStore` (a worker thread), so a
slow database delays the RPC that waits on it, not every other RPC of the replica.

Error semantics (AIP-style):
- unknown search name -> NOT_FOUND; a bad spec -> INVALID_ARGUMENT with BadRequest field violations;
- CancelSearch of a search that already ended -> FAILED_PRECONDITION (its state is left alone);
- StartSearch while ``max_pending_searches`` wait to run -> RESOURCE_EXHAUSTED with RetryInfo
  (a repeated request id is still answered with its search);
- an unknown dataset is NOT checked at StartSearch (the scorer may be briefly down and a start must
  still be recorded): the search starts and ends FAILED with error_code NOT_FOUND and the reason
  naming the dataset and the registered ones.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from promptclimb.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from promptclimb.common.errors import ServiceError, abort, invalid_argument, not_found
from services.coordinator.convert import (
    EVENT_TO_PROTO,
    STATE_FROM_PROTO,
    SearchEvent,
    config_from_spec,
    plan_to_proto,
    replay_overrides,
    search_id_of,
    search_to_proto,
)
from services.coordinator.models import ModelRegistry
from services.coordinator.plan import plan_search
from services.coordinator.replay import ReplayRefused, replay
from services.coordinator.runner import SearchRunner
from services.coordinator.search import SearchConfig, SearchFailed
from services.coordinator.store import SUCCEEDED, Progress, TooManyPending, is_disk_full, is_transient
from services.coordinator.watch import watch

MAX_PAGE_SIZE = 100
MAX_OFFSET = 2**62  # below every database's 64-bit integer limit


STORE_DOWN = ServiceError(
    grpc.StatusCode.UNAVAILABLE, "the search store is unavailable; retry shortly", retry_after_seconds=1.0
)
# A full disk under the store: writes fail until space is freed, reads and running searches wait.
STORE_FULL = ServiceError(
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    "the search store's disk is full: nothing recorded is lost; retry once space is freed",
    retry_after_seconds=10.0,
)


# Searches waiting past max_pending_searches: one ends, on average, every few seconds per replica.
PENDING_RETRY_SECONDS = 5.0


def too_many_pending(err: TooManyPending) -> ServiceError:
    """RESOURCE_EXHAUSTED for a StartSearch past the bound of waiting searches, with a retry delay."""
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"{err.pending} searches are already waiting to run (max_pending_searches={err.bound});"
        " nothing was started: retry later",
        retry_after_seconds=PENDING_RETRY_SECONDS,
    )


def store_error(err: BaseException) -> ServiceError | None:
    """The status a store error is answered with, or None when it is not the store's condition."""
    if is_disk_full(err):
        return STORE_FULL
    return STORE_DOWN if is_transient(err) else None


def _store_outage_is_unavailable(
    method: Callable[..., Awaitable[Any]],
) -> Callable[..., Awaitable[Any]]:
    """A store outage is UNAVAILABLE, a full disk RESOURCE_EXHAUSTED, each with a retry delay, not UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as err:
            if (status := store_error(err)) is not None:
                await abort(context, status)
            raise

    return wrapper


def _full(view: int) -> bool:
    return view != coordinator_pb2.SEARCH_VIEW_BASIC  # default (unspecified) is FULL


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """The thin adapter."""

    def __init__(self, runner: SearchRunner, models: ModelRegistry | None = None) -> None:
        self.runner = runner
        self.store = runner.store
        self.models = models  # None: a runner on one unnamed scorer (tests, embedded use)

    def _unknown_models(self, config: SearchConfig) -> ServiceError | None:
        """NOT_FOUND naming the first model of the spec this coordinator does not serve."""
        if self.models is None:
            return None
        named = [("spec.model", config.model)]
        named += [(f"spec.transfer_models[{i}]", m) for i, m in enumerate(config.transfer_models)]
        named += [(f"spec.objective_models[{i}]", m) for i, m in enumerate(config.objective_models)]
        for where, model in named:
            if not self.models.known(model):
                known = ", ".join(self.models.known_ids()) or "none"
                why = f"{where}: model {model!r} is not served here (models: {known})"
                return ServiceError(grpc.StatusCode.NOT_FOUND, why)
        return None

    async def _continued(self, config: SearchConfig) -> SearchConfig:
        """A description search ``from_search``: the slot template is that search's best template."""
        d = config.descriptions
        if d is None or not d.from_search:
            return config
        source = await self.store.get(search_id_of(d.from_search))
        if source is None:
            raise not_found("search", d.from_search)
        result = source.progress.result
        if source.state != SUCCEEDED or result is None or result.partial:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"spec.descriptions.from_search: {d.from_search} is {source.state}, not SUCCEEDED:"
                " a description search continues from a finished template search's best template",
            )
        if source.config.descriptions is not None:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"spec.descriptions.from_search: {d.from_search} is a description search,"
                " not a template search",
            )
        return dataclasses.replace(config, descriptions=dataclasses.replace(d, template=result.best.template))

    @_store_outage_is_unavailable
    async def StartSearch(self, request, context):  # type: ignore[no-untyped-def]
        """Validate, then create (or find by request id) and schedule; or only plan (validate_only)."""
        try:
            config = config_from_spec(request.spec)
        except ServiceError as err:
            await abort(context, err)
        if (unknown := self._unknown_models(config)) is not None:
            await abort(context, unknown)
        if len(request.request_id) > 200:
            await abort(context, invalid_argument("at most 200 characters", "request_id"))
        try:
            config = await self._continued(config)
        except ServiceError as err:
            await abort(context, err)
        if request.validate_only:
            try:
                plan = await plan_search(config, self.runner.scorer, self.runner.proposer)  # type: ignore[arg-type]
            except SearchFailed as err:
                await abort(context, ServiceError(getattr(grpc.StatusCode, err.code), err.message))
            return coordinator_pb2.StartSearchResponse(plan=plan_to_proto(plan))
        try:
            record, _ = await self.runner.submit(config, request.request_id or None)
        except TooManyPending as err:
            await abort(context, too_many_pending(err))
        record = await self.store.get(record.id, with_history=False) or record
        return coordinator_pb2.StartSearchResponse(search=search_to_proto(record, full=False))

    @_store_outage_is_unavailable
    async def GetSearch(self, request, context):  # type: ignore[no-untyped-def]
        """One search (FULL view by default)."""
        record = await self.store.get(search_id_of(request.name), with_history=_full(request.view))
        if record is None:
            await abort(context, not_found("search", request.name))
        return coordinator_pb2.GetSearchResponse(search=search_to_proto(record, full=_full(request.view)))

    async def WatchSearch(  # type: ignore[no-untyped-def]
        self, request, context
    ) -> AsyncIterator[coordinator_pb2.WatchSearchResponse]:
        """Snapshot, then every change until the search ends."""
        search_id = search_id_of(request.name)
        try:
            if await self.store.get(search_id) is None:
                await abort(context, not_found("search", request.name))
            full = _full(request.view)
            async for event, record in watch(self.store, self.runner.broadcaster, search_id, full=full):
                yield coordinator_pb2.WatchSearchResponse(
                    event=EVENT_TO_PROTO[SearchEvent(event)], search=search_to_proto(record, full=full)
                )
        except Exception as err:
            if (status := store_error(err)) is not None:
                await abort(context, status)
            raise

    @_store_outage_is_unavailable
    async def CancelSearch(self, request, context):  # type: ignore[no-untyped-def]
        """Cancel a PENDING or RUNNING search; FAILED_PRECONDITION once it has ended."""
        search_id = search_id_of(request.name)
        record = await self.store.get(search_id)
        if record is None:
            await abort(context, not_found("search", request.name))
        if record.done:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"search {request.name!r} already ended ({record.state})",
                ),
            )
        record = await self.runner.cancel(search_id)
        return coordinator_pb2.CancelSearchResponse(search=search_to_proto(record, full=False))

    @_store_outage_is_unavailable
    async def ListSearches(self, request, context):  # type: ignore[no-untyped-def]
        """Newest first, BASIC view; the page token is an opaque offset."""
        size = request.page_size or 50
        if size < 0:
            await abort(context, invalid_argument("must not be negative", "page_size"))
        size = min(size, MAX_PAGE_SIZE)
        offset = 0
        if request.page_token:
            try:
                offset = int(base64.urlsafe_b64decode(request.page_token.encode()).decode())
            except ValueError:
                offset = -1
            if not 0 <= offset <= MAX_OFFSET:  # a forged offset must not reach the database
                await abort(context, invalid_argument("not a token this server issued", "page_token"))
        state = STATE_FROM_PROTO.get(request.state) if request.state else None
        records = await self.store.list_searches(state=state, limit=size + 1, offset=offset)
        token = base64.urlsafe_b64encode(str(offset + size).encode()).decode() if len(records) > size else ""
        return coordinator_pb2.ListSearchesResponse(
            searches=[search_to_proto(r, full=False) for r in records[:size]], next_page_token=token
        )

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        """The scorer models and what their last check found."""
        reply = coordinator_pb2.ListModelsResponse()
        for st in self.models.status if self.models is not None else []:
            reply.models.add(
                id=st.id,
                target=st.entry.target,
                ready=st.ready,
                datasets=list(st.datasets),
                default=st.default,
                reason=st.reason,
                model_name=st.model_name,
                pretrained=st.pretrained,
            )
        return reply

    @_store_outage_is_unavailable
    async def ReplaySearch(self, request, context):  # type: ignore[no-untyped-def]
        """A finished search run again from its journal under the masked spec fields; nothing stored."""
        search_id = search_id_of(request.name)
        record = await self.store.get(search_id, with_history=True)
        if record is None:
            await abort(context, not_found("search", request.name))
        if not record.done:
            await abort(
                context,
                ServiceError(
                    grpc.StatusCode.FAILED_PRECONDITION, f"search {request.name!r} is still {record.state}"
                ),
            )
        if record.config.descriptions is not None:
            why = f"search {request.name!r} is a description search: its rules are not replayable"
            await abort(context, ServiceError(grpc.StatusCode.FAILED_PRECONDITION, why))
        try:
            overrides = replay_overrides(request.spec, list(request.update_mask.paths))
            outcome = await replay(
                record.config,
                record.progress.result,
                await self.store.scores(search_id),
                await self.store.proposals(search_id),
                self.runner.scorer,
                overrides,
                record.start_time or record.create_time,
            )
        except ServiceError as err:
            await abort(context, err)
        except ReplayRefused as err:
            await abort(context, ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(err)))
        except SearchFailed as err:  # the scorer, for a new pick's evaluation score
            await abort(
                context,
                ServiceError(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNAVAILABLE), err.message),
            )
        state = outcome.state
        progress = Progress(
            iterations=state.iterations,
            usage=state.usage,
            best=state.best,
            result=state.result,
            end_reason=state.end_reason,
            wall_seconds=record.progress.wall_seconds,
        )
        replayed = dataclasses.replace(
            record,
            config=state.config,
            phase=state.phase.value,
            restart=state.restart,
            iteration=state.iteration,
            progress=progress,
            history=list(state.history),
        )
        return coordinator_pb2.ReplaySearchResponse(
            original=search_to_proto(record, full=True),
            replayed=search_to_proto(replayed, full=True),
            scored=outcome.scored,
        )
