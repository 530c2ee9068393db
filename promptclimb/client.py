"""Small async clients of the coordinator and the scorer, for scripts and other services.

Results are the generated, typed proto messages (``promptclimb.api.v1.coordinator_pb2.Search``,
with ``.pyi`` stubs for editors and mypy): ``search.state``, ``search.best.template``,
``search.result.best_evaluation_accuracy``, ``search.history``… Errors are
``grpc.aio.AioRpcError`` with the server's status code (NOT_FOUND, INVALID_ARGUMENT…).

Example::

    import asyncio
    from promptclimb.client import CoordinatorClient

    async def main() -> None:
        async with CoordinatorClient("127.0.0.1:50050") as client:
            search = await client.start(dataset="pets", restarts=2, iterations=3, request_id="demo-1")
            async for event, snapshot in client.watch(search.name):
                print(event, snapshot.iteration, snapshot.best.accuracy)
            done = await client.get(search.name)
            print(done.best.template, done.result.best_evaluation_accuracy)

    asyncio.run(main())

:class:`ScorerClient` asks a scorer directly (``evaluate``, ``evaluate_ensemble``,
``evaluate_descriptions``, ``list_datasets``, ``register_dataset``, ``model_info``), e.g. to score
a template by hand.

A description search (per-class descriptions refined round by round) is
``make_spec(dataset, descriptions=True, description_template="a photo of a {}.", rounds=3)``;
:meth:`CoordinatorClient.plan` says what any spec would spend before it is started.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptclimb.api.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from promptclimb.common.channels import open_channel
from promptclimb.common.vocabulary import (
    OBJECTIVE_TO_PROTO,
    STATE_TO_PROTO,
    STRATEGY_TO_PROTO,
    TERMINAL_PROTO_STATES,
    Objective,
)

# CLI and client names (lower case) to proto values, from the shared vocabulary.
STRATEGIES = {s.value: v for s, v in STRATEGY_TO_PROTO.items()}
STATES = {s.value.lower(): v for s, v in STATE_TO_PROTO.items()}
TERMINAL = TERMINAL_PROTO_STATES


def make_spec(
    dataset: str,
    *,
    selection_split: str = "",
    evaluation_split: str = "",
    strategy: str = "contrast",
    best_k: int | None = None,
    worst_k: int | None = None,
    temperature: float | None = None,
    pool: str | None = None,
    templates: list[str] | None = None,
    llm_starters: int = 0,
    restarts: int = 0,
    iterations: int = 0,
    templates_per_iteration: int = 0,
    max_llm_calls: int = 0,
    max_tokens: int = 0,
    max_evaluations: int = 0,
    max_duration_seconds: float = 0.0,
    seed: int = 0,
    task_description: str = "",
    ensemble_k: int = 0,
    display_name: str = "",
    patience: int = 0,
    min_delta: float = 0.0,
    objective: str | None = None,
    objective_weight: float | None = None,
    mix: list[str] | None = None,
    mix_mode: str | None = None,
    model: str = "",
    transfer_models: list[str] | None = None,
    objective_models: list[str] | None = None,
    objective_aggregate: str | None = None,
    descriptions: bool = False,
    descriptions_per_class: int | None = None,
    rounds: int | None = None,
    weakest_k: int | None = None,
    top_confusions: int | None = None,
    max_classes_per_call: int | None = None,
    description_template: str = "",
    from_search: str = "",
) -> coordinator_pb2.SearchSpec:
    """A ``SearchSpec`` from keyword arguments; 0 / empty leave the server's default.

    ``mix``: strategy names that propose together (empty = just ``strategy``); ``mix_mode``:
    ``"split"`` (the default: each its share of every iteration) or ``"bandit"`` (one per iteration).
    ``model``: the scorer model to search on (a ListModels id; "" = the coordinator's default);
    ``transfer_models``: the found prompts also scored on these; ``objective_models``: selection
    scores aggregated over ``model`` and these by ``objective_aggregate`` (``"mean"`` or ``"min"``).

    ``descriptions``: a description search instead of a template search (the template knobs are
    then unused); ``descriptions_per_class``, ``rounds``, ``weakest_k``, ``top_confusions``,
    ``max_classes_per_call``: None leaves the server's default (0 rounds = describe only);
    ``description_template``: the slot template each description goes into (e.g. ``"a photo of a
    {}."``); ``from_search``: a SUCCEEDED template search (``searches/ID`` or the bare id) whose best
    template is used instead.
    """
    spec = coordinator_pb2.SearchSpec(
        dataset=dataset,
        selection_split=selection_split,
        evaluation_split=evaluation_split,
        strategy=STRATEGIES[strategy],
        best_k=best_k,  # None leaves the field unset: the documented default (3)
        worst_k=worst_k,  # 0 is a real value: no bad examples shown to the LLM
        restarts=restarts,
        iterations=iterations,
        templates_per_iteration=templates_per_iteration,
        seed=seed,
        task_description=task_description,
        ensemble_k=ensemble_k,
        display_name=display_name,
        patience=patience,
        min_delta=min_delta,
        objective=OBJECTIVE_TO_PROTO[Objective(objective)] if objective else None,
        objective_weight=objective_weight,
        mix=[STRATEGIES[s] for s in mix or ()],
        mix_mode=coordinator_pb2.MixMode.Value(f"MIX_MODE_{mix_mode.upper()}") if mix_mode else None,
        model=model,
        transfer_models=list(transfer_models or ()),
        objective_models=list(objective_models or ()),
        objective_aggregate=coordinator_pb2.ObjectiveAggregate.Value(
            f"OBJECTIVE_AGGREGATE_{objective_aggregate.upper()}"
        )
        if objective_aggregate
        else None,
        budget=coordinator_pb2.Budget(
            max_llm_calls=max_llm_calls,
            max_tokens=max_tokens,
            max_evaluations=max_evaluations,
            max_duration=duration_pb2.Duration(
                seconds=int(max_duration_seconds), nanos=int((max_duration_seconds % 1) * 1e9)
            ),
        ),
    )
    if temperature is not None:
        spec.temperature = temperature
    if templates:
        spec.initial_pool.templates.templates.extend(templates)
    elif llm_starters:
        spec.initial_pool.llm_starters = llm_starters
    elif pool:
        spec.initial_pool.named_pool = pool
    # Keyword names; the DescriptionSearchSpec field is the same but for "description_template".
    knobs = {
        "descriptions_per_class": descriptions_per_class,
        "rounds": rounds,
        "weakest_k": weakest_k,
        "top_confusions": top_confusions,
        "max_classes_per_call": max_classes_per_call,
        "description_template": description_template or None,
        "from_search": search_name(from_search) if from_search else None,
    }
    given = {k: v for k, v in knobs.items() if v is not None}  # 0 is a real value: rounds=0 describes only
    if descriptions:
        spec.descriptions.SetInParent()  # present even with every knob at its default: that marks the mode
        for keyword, value in given.items():
            setattr(spec.descriptions, keyword.removeprefix("description_"), value)
    elif given:
        raise ValueError(f"{', '.join(given)}: only for a description search (descriptions=True)")
    return spec


def search_name(name: str) -> str:
    """``searches/ID`` from ``searches/ID`` or the bare ``ID``."""
    return name if name.startswith("searches/") else f"searches/{name}"


def event_name(event: int) -> str:
    """``"snapshot"``, ``"iteration_done"``… from a ``SearchEventType`` value."""
    return coordinator_pb2.SearchEventType.Name(event).removeprefix("SEARCH_EVENT_TYPE_").lower()


class ClientSettings(BaseSettings):
    """How a client reaches the coordinator: env ``PROMPTCLIMB_CLIENT_*``; arguments override.

    The token also reads ``PROMPTCLIMB_COORDINATOR_AUTH_TOKEN``, so one variable serves a local
    coordinator and the CLI talking to it.
    """

    model_config = SettingsConfigDict(env_prefix="PROMPTCLIMB_CLIENT_", extra="ignore", populate_by_name=True)

    token: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices(
            "token", "PROMPTCLIMB_CLIENT_TOKEN", "PROMPTCLIMB_COORDINATOR_AUTH_TOKEN"
        ),
        description="bearer token sent as 'authorization: Bearer …'",
    )
    tls_ca: Path | None = Field(None, description="PEM CA of the coordinator's certificate; enables TLS")
    tls_cert: Path | None = Field(None, description="client certificate (mTLS)")
    tls_key: Path | None = Field(None, description="key of tls_cert")
    tls_server_name: str | None = Field(None, description="name expected in the server certificate")


class CoordinatorClient:
    """Async client of ``CoordinatorService``; use as ``async with`` or call :meth:`close`.

    TLS and the bearer token come from the arguments, else from :class:`ClientSettings` (env).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        env = ClientSettings()  # type: ignore[call-arg]  # every field has a default
        self.channel = open_channel(
            target,
            tls_ca=tls_ca or env.tls_ca,
            tls_cert=tls_cert or env.tls_cert,
            tls_key=tls_key or env.tls_key,
            tls_server_name=tls_server_name or env.tls_server_name,
        )
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)
        self.timeout = timeout
        secret = token if token is not None else (env.token.get_secret_value() if env.token else None)
        # Sent per call: call credentials would refuse a plaintext loopback channel.
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {secret}"),) if secret else ()
        )

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def start(
        self, spec: coordinator_pb2.SearchSpec | None = None, *, request_id: str | None = None, **kwargs: Any
    ) -> coordinator_pb2.Search:
        """Start a search from ``spec`` or from :func:`make_spec` keyword arguments.

        A retried call with the same ``request_id`` returns the same search (one is generated when
        omitted, so pass your own to make retries across processes safe).
        """
        if spec is None:
            spec = make_spec(**kwargs)
        request = coordinator_pb2.StartSearchRequest(spec=spec, request_id=request_id or uuid.uuid4().hex)
        return (await self.stub.StartSearch(request, timeout=self.timeout, metadata=self._metadata)).search

    async def plan(
        self, spec: coordinator_pb2.SearchSpec | None = None, **kwargs: Any
    ) -> coordinator_pb2.SearchPlan:
        """What the search of ``spec`` (or :func:`make_spec` keyword arguments) would spend at most:
        LLM calls, estimated tokens, cost, evaluations and the budgets that would stop it.

        Sent as StartSearch with ``validate_only``: the server checks the spec (INVALID_ARGUMENT,
        NOT_FOUND… as a start would get) and starts and stores nothing.
        """
        if spec is None:
            spec = make_spec(**kwargs)
        request = coordinator_pb2.StartSearchRequest(spec=spec, validate_only=True)
        return (await self.stub.StartSearch(request, timeout=self.timeout, metadata=self._metadata)).plan

    async def get(self, name: str, *, full: bool = True) -> coordinator_pb2.Search:
        """One search (``searches/ID`` or the bare id); ``full`` includes the scored history."""
        view = coordinator_pb2.SEARCH_VIEW_FULL if full else coordinator_pb2.SEARCH_VIEW_BASIC
        request = coordinator_pb2.GetSearchRequest(name=name, view=view)
        return (await self.stub.GetSearch(request, timeout=self.timeout, metadata=self._metadata)).search

    async def watch(
        self, name: str, *, full: bool = False
    ) -> AsyncIterator[tuple[str, coordinator_pb2.Search]]:
        """``(event, snapshot)`` pairs: the snapshot first, then every change until the search ends."""
        view = coordinator_pb2.SEARCH_VIEW_FULL if full else coordinator_pb2.SEARCH_VIEW_BASIC
        call = self.stub.WatchSearch(
            coordinator_pb2.WatchSearchRequest(name=name, view=view), metadata=self._metadata
        )
        try:
            async for message in call:
                yield event_name(message.event), message.search
        finally:
            call.cancel()

    async def cancel(self, name: str) -> coordinator_pb2.Search:
        """Cancel a running search (FAILED_PRECONDITION if it already ended)."""
        request = coordinator_pb2.CancelSearchRequest(name=name)
        return (await self.stub.CancelSearch(request, timeout=self.timeout, metadata=self._metadata)).search

    async def replay(self, name: str, **changes: Any) -> coordinator_pb2.ReplaySearchResponse:
        """Re-run a finished search from its journal with ``changes`` (spec field names), e.g.
        ``patience=2`` or ``objective="accuracy"``; nothing is stored. A field that would change
        what the LLM is shown is refused (FAILED_PRECONDITION) with the reason."""
        spec = coordinator_pb2.SearchSpec()
        paths = []
        for field_name, value in changes.items():
            if value is None:
                continue
            if field_name == "objective":
                value = OBJECTIVE_TO_PROTO[Objective(value)]
            elif field_name == "strategy":
                value = STRATEGIES[value]
            setattr(spec, field_name, value)
            paths.append(field_name)
        request = coordinator_pb2.ReplaySearchRequest(
            name=name, spec=spec, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        return await self.stub.ReplaySearch(request, timeout=self.timeout, metadata=self._metadata)

    async def models(self) -> list[coordinator_pb2.ServedModel]:
        """The scorer models of the coordinator (ListModels)."""
        reply = await self.stub.ListModels(
            coordinator_pb2.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return list(reply.models)

    async def list(self, *, state: str | None = None, page_size: int = 50) -> list[coordinator_pb2.Search]:
        """Every search (newest first, BASIC view), following pages; ``state`` e.g. ``"running"``."""
        out: list[coordinator_pb2.Search] = []
        token = ""
        while True:
            request = coordinator_pb2.ListSearchesRequest(
                page_size=page_size,
                page_token=token,
                state=STATES[state] if state else coordinator_pb2.SEARCH_STATE_UNSPECIFIED,
            )
            reply = await self.stub.ListSearches(request, timeout=self.timeout, metadata=self._metadata)
            out.extend(reply.searches)
            token = reply.next_page_token
            if not token:
                return out

    async def wait(self, name: str) -> coordinator_pb2.Search:
        """Block until the search ends; returns it in the FULL view."""
        async for _event, snapshot in self.watch(name):
            if snapshot.state in TERMINAL:
                break
        return await self.get(name)


class ScorerClient:
    """Async client of ``ScorerService`` over one channel; use as ``async with`` or call :meth:`close`.

    Every method takes a ``timeout`` in seconds (None: the client's default), sent as the call's
    gRPC deadline so the scorer stops working on a call nobody waits for. Errors are
    ``grpc.aio.AioRpcError`` with the scorer's status (UNAVAILABLE while it loads, NOT_FOUND for an
    unknown dataset or split, RESOURCE_EXHAUSTED with a retry delay when its queue is full…).
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 300.0,
        max_message_bytes: int = 16 * 1024 * 1024,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.channel = open_channel(
            target,
            max_message_bytes=max_message_bytes,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_server_name=tls_server_name,
        )
        self.stub = scorer_pb2_grpc.ScorerServiceStub(self.channel)
        self.timeout = timeout

    async def __aenter__(self) -> ScorerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def evaluate(
        self,
        dataset: str,
        split: str,
        templates: list[str],
        *,
        per_class: bool = False,
        per_image: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> scorer_pb2.EvaluatePromptsResponse:
        """Score each template on ``dataset``/``split``; a rejected template has its ``error`` set.

        ``per_image``: also every image's result (``per_image_correct`` bits, ``per_image_loss``
        float32s; :mod:`promptclimb.common.per_image` decodes them).
        """
        request = scorer_pb2.EvaluatePromptsRequest(
            dataset=dataset, split=split, templates=templates, per_class=per_class, per_image=per_image
        )
        return await self.stub.EvaluatePrompts(request, timeout=self._timeout(timeout))

    async def evaluate_ensemble(
        self,
        dataset: str,
        split: str,
        templates: list[str],
        *,
        per_class: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> scorer_pb2.EvaluateEnsembleResponse:
        """Score the ensemble of ``templates`` (INVALID_ARGUMENT if any of them is invalid)."""
        request = scorer_pb2.EvaluateEnsembleRequest(
            dataset=dataset, split=split, templates=templates, per_class=per_class
        )
        return await self.stub.EvaluateEnsemble(request, timeout=self._timeout(timeout))

    async def evaluate_descriptions(
        self,
        dataset: str,
        split: str,
        sets: Mapping[str, Mapping[str, Sequence[str]]],
        *,
        template: str = "",
        per_class: bool = False,
        top_confusions: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> scorer_pb2.EvaluateDescriptionsResponse:
        """Score description sets, ``{set name: {class name: texts}}`` ("{}" in a text is the class
        name; ``template``'s "{}" takes each text); a rejected set has its ``error`` set.

        ``top_confusions``: also each set's most frequent (true class -> predicted class) counts.
        """
        request = scorer_pb2.EvaluateDescriptionsRequest(
            dataset=dataset,
            split=split,
            sets=[
                scorer_pb2.DescriptionSet(
                    name=name,
                    classes=[
                        common_pb2.ClassDescriptions(class_name=c, texts=list(t)) for c, t in texts.items()
                    ],
                    template=template,
                )
                for name, texts in sets.items()
            ],
            per_class=per_class,
            top_confusions=top_confusions,
        )
        return await self.stub.EvaluateDescriptions(request, timeout=self._timeout(timeout))

    async def list_datasets(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> list[scorer_pb2.Dataset]:
        """Every registered dataset, by id, with its splits and where their features came from."""
        reply = await self.stub.ListDatasets(scorer_pb2.ListDatasetsRequest(), timeout=self._timeout(timeout))
        return list(reply.datasets)

    async def register_dataset(
        self,
        id: str,
        *,
        image_folder: str | None = None,
        array: str | None = None,
        coop: scorer_pb2.CoopSource | None = None,
        wait: bool = True,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> scorer_pb2.Dataset:
        """Register a dataset from exactly one source.

        The scorer checks the source and answers at once, computing the image features in the
        background; ``wait`` (the default) then polls ListDatasets until they are ready, within
        ``timeout`` (TimeoutError past it; RuntimeError when computing them failed).
        """
        given = [s for s in (image_folder, array, coop) if s is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image_folder, array, coop")
        request = scorer_pb2.RegisterDatasetRequest(id=id)
        if image_folder is not None:
            request.image_folder.path = image_folder
        elif array is not None:
            request.array.path = array
        elif coop is not None:
            request.coop.CopyFrom(coop)
        deadline = time.monotonic() + self._timeout(timeout)
        reply = await self.stub.RegisterDataset(request, timeout=self._timeout(timeout))
        dataset = reply.dataset
        delay = 0.05
        while wait and not dataset.ready:
            if dataset.error:
                raise RuntimeError(f"dataset {id!r} failed on the scorer: {dataset.error}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"dataset {id!r} not ready within {self._timeout(timeout)} s "
                    f"({dataset.images_done} of {dataset.images_total} images)"
                )
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 1.0)
            listed = {d.id: d for d in await self.list_datasets(timeout=max(left, 1.0))}
            if id not in listed:
                raise RuntimeError(f"dataset {id!r} is no longer registered on the scorer")
            dataset = listed[id]
        return dataset

    async def model_info(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline the scorer sees)
    ) -> scorer_pb2.GetModelInfoResponse:
        """The loaded model (UNAVAILABLE while it loads)."""
        return await self.stub.GetModelInfo(scorer_pb2.GetModelInfoRequest(), timeout=self._timeout(timeout))
