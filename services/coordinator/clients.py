"""gRPC adapters of the search's ports: the scorer fan-out and the optimizer client.

One aio channel per target (``round_robin`` over a comma list or a ``dns:///`` name, so several
scorers share the load); templates go out in chunks, concurrently under a semaphore; every call
has a deadline; UNAVAILABLE and RESOURCE_EXHAUSTED are retried with backoff (honouring the
server's RetryInfo), every other code fails the step at once. A scorer still computing a
dataset's image features (UNAVAILABLE with a ResourceInfo naming the dataset) is waited for,
up to ``RetryPolicy.ready_wait_seconds``, however many attempts that takes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from promptclimb.common.channels import ClientTLS, open_channel
from promptclimb.common.errors import resource_of, retry_delay_of
from promptclimb.common.vocabulary import DESCRIPTION_STRATEGY_TO_PROTO, DescriptionStrategy
from services.coordinator import metrics
from services.coordinator.convert import STRATEGY_TO_PROTO, scored_to_proto
from services.coordinator.search import Proposal, ProposalRequest, Score, SearchFailed

log = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
T = TypeVar("T")


def _open(target: str, tls: ClientTLS | None, max_message_bytes: int) -> grpc.aio.Channel:
    """The one channel of a client, with TLS when configured."""
    tls_kwargs = tls.kwargs() if tls else {}
    return open_channel(target, max_message_bytes=max_message_bytes, **tls_kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried."""

    max_attempts: int = 6
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 5.0
    # How long a dataset whose features the scorer is still computing is waited for (its
    # answers then count no attempt): registering ImageNet's test set takes minutes on a GPU.
    ready_wait_seconds: float = 3600.0

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` with retries; a final failure becomes :class:`SearchFailed`."""
        delay = self.backoff_seconds
        attempt = 0
        waiting_since: float | None = None
        while True:
            try:
                return await fn()
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if dataset_not_ready(err):
                    waiting_since = waiting_since or time.monotonic()
                    if time.monotonic() - waiting_since >= self.ready_wait_seconds:
                        raise SearchFailed(
                            code.name,
                            f"{what}: dataset still not ready after {self.ready_wait_seconds:g} s: "
                            f"{err.details()}",
                        ) from err
                else:
                    attempt += 1
                    if code not in RETRYABLE or attempt >= self.max_attempts:
                        raise SearchFailed(code.name, f"{what}: {code.name}: {err.details()}") from err
                if what.startswith("scorer"):
                    metrics.SCORER_RETRIES.labels(code.name).inc()
                hinted = retry_delay_of(err)
                wait = hinted if hinted is not None else delay * (0.5 + random.random())  # jitter
                log.warning(
                    "waiting for the dataset's features" if waiting_since is not None else "retrying",
                    extra={
                        "call": what,
                        "code": code.name,
                        "attempt": attempt,
                        "delay_seconds": round(wait, 3),
                        "detail": err.details(),
                    },
                )
                await asyncio.sleep(min(wait, self.max_backoff_seconds * 4))
                delay = min(delay * 2, self.max_backoff_seconds)


def dataset_not_ready(err: grpc.aio.AioRpcError) -> bool:
    """Whether the scorer answered that a dataset's features are still being computed."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    resource = resource_of(err)
    return resource is not None and resource[0] == "dataset"


@dataclass(frozen=True)
class DescriptionScore:
    """What the scorer said about one description set (EvaluateDescriptions) on one split."""

    name: str
    accuracy: float = 0.0
    correct: int = 0
    total: int = 0
    error: str | None = None  # set when the scorer rejected this set
    loss: float = 0.0
    per_class_accuracy: tuple[float, ...] = ()  # in the dataset's class order, when asked
    confusions: tuple[tuple[str, str, int], ...] = ()  # (true, predicted, count), when asked
    dropped: tuple[tuple[str, tuple[str, ...]], ...] = ()  # drop_overlong: (class, texts left out)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (a description search journals it)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DescriptionScore:
        """Inverse of :meth:`to_json`."""
        return cls(
            d["name"],
            d["accuracy"],
            d["correct"],
            d["total"],
            d["error"],
            d["loss"],
            tuple(d["per_class_accuracy"]),
            tuple((t, p, int(n)) for t, p, n in d["confusions"]),
            tuple((c, tuple(texts)) for c, texts in d.get("dropped", ())),
        )


class GrpcScorer:
    """The :class:`~services.coordinator.search.TemplateScorer` port over ScorerService."""

    def __init__(
        self,
        target: str,
        *,
        chunk_size: int = 16,
        max_concurrent_chunks: int = 4,
        deadline_seconds: float = 60.0,
        retry: RetryPolicy | None = None,
        tls: ClientTLS | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.channel = _open(target, tls, max_message_bytes)
        self.stub = scorer_pb2_grpc.ScorerServiceStub(self.channel)
        self.chunk_size = chunk_size
        self.deadline = deadline_seconds
        self.retry = retry or RetryPolicy()
        self._chunks = asyncio.Semaphore(max_concurrent_chunks)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def class_names(self, dataset: str) -> list[str]:
        """Class names from ListDatasets; an unknown id fails the search with NOT_FOUND."""
        reply = await self.retry.call(
            "scorer ListDatasets",
            lambda: self.stub.ListDatasets(scorer_pb2.ListDatasetsRequest(), timeout=self.deadline),
        )
        for d in reply.datasets:
            if d.id == dataset:
                if d.error:  # its features failed: waiting would not help
                    raise SearchFailed("FAILED_PRECONDITION", f"dataset {dataset!r} on the scorer: {d.error}")
                return list(d.class_names)  # known at once; scoring waits until it is ready
        known = ", ".join(sorted(d.id for d in reply.datasets)) or "none"
        raise SearchFailed(
            "NOT_FOUND", f"dataset {dataset!r} is not registered on the scorer (known: {known})"
        )

    async def score(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        on_chunk: Callable[[list[Score]], Awaitable[None]],
        *,
        per_image: bool = False,
    ) -> list[Score]:
        """Score in chunks, concurrently; each chunk is checkpointed through ``on_chunk``.

        ``per_image``: ask for every image's result too (kept in each :class:`Score` as sent).
        """
        chunks = [list(templates[i : i + self.chunk_size]) for i in range(0, len(templates), self.chunk_size)]

        async def one(chunk: list[str]) -> list[Score]:
            async with self._chunks:
                request = scorer_pb2.EvaluatePromptsRequest(
                    dataset=dataset, split=split, templates=chunk, per_image=per_image
                )
                reply = await self.retry.call(
                    "scorer EvaluatePrompts",
                    lambda: self.stub.EvaluatePrompts(request, timeout=self.deadline),
                )
            scores = [
                Score(
                    s.template or t,
                    s.accuracy,
                    s.correct,
                    s.total,
                    s.error.message or "rejected" if s.HasField("error") and s.error.code else None,
                    s.loss,
                    s.per_image_correct,
                    s.per_image_loss,
                )
                for s, t in zip(reply.scores, chunk, strict=False)
            ]
            metrics.EVALUATIONS.inc(len(scores))
            await on_chunk(scores)
            return scores

        results = await asyncio.gather(*(one(c) for c in chunks))
        return [s for chunk in results for s in chunk]

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
        """Score description sets (name -> class name -> texts), in request order.

        Requests hold at most ``chunk_size`` templates' worth of texts (one text per class each),
        sent concurrently; a set the scorer rejects comes back with its ``error``.
        """
        messages = [
            scorer_pb2.DescriptionSet(
                name=name,
                classes=[common_pb2.ClassDescriptions(class_name=c, texts=list(t)) for c, t in texts.items()],
                template=template,
            )
            for name, texts in sets.items()
        ]
        chunks: list[list[scorer_pb2.DescriptionSet]] = []
        size = 0
        for m in messages:
            cost = max(1, -(-sum(len(c.texts) for c in m.classes) // max(1, len(m.classes))))
            if not chunks or size + cost > self.chunk_size:
                chunks.append([])
                size = 0
            chunks[-1].append(m)
            size += cost

        async def one(chunk: list[scorer_pb2.DescriptionSet]) -> list[DescriptionScore]:
            async with self._chunks:
                request = scorer_pb2.EvaluateDescriptionsRequest(
                    dataset=dataset,
                    split=split,
                    sets=chunk,
                    per_class=per_class,
                    top_confusions=top_confusions,
                    drop_overlong_texts=drop_overlong,
                )
                reply = await self.retry.call(
                    "scorer EvaluateDescriptions",
                    lambda: self.stub.EvaluateDescriptions(request, timeout=self.deadline),
                )
            metrics.EVALUATIONS.inc(len(reply.scores))
            return [
                DescriptionScore(
                    s.name,
                    s.accuracy,
                    s.correct,
                    s.total,
                    s.error.message or "rejected" if s.HasField("error") and s.error.code else None,
                    s.loss,
                    tuple(s.per_class_accuracy),
                    tuple((c.true_class, c.predicted_class, c.count) for c in s.confusions),
                    tuple((d.class_name, tuple(d.texts)) for d in s.dropped),
                )
                for s in reply.scores
            ]

        results = await asyncio.gather(*(one(c) for c in chunks))
        return [s for chunk in results for s in chunk]

    async def ensemble_accuracy(self, dataset: str, split: str, templates: Sequence[str]) -> float:
        """EvaluateEnsemble of ``templates``."""
        request = scorer_pb2.EvaluateEnsembleRequest(dataset=dataset, split=split, templates=list(templates))
        reply = await self.retry.call(
            "scorer EvaluateEnsemble", lambda: self.stub.EvaluateEnsemble(request, timeout=self.deadline)
        )
        return reply.score.accuracy


@dataclass(frozen=True)
class DescriptionProposal:
    """What the optimizer wrote for one ProposeDescriptions call, and what it cost."""

    descriptions: dict[str, tuple[str, ...]]  # class name -> descriptions ("{}" = the class name)
    missing: tuple[str, ...] = ()  # classes asked for that no reply described
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cost_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (a description search journals it)."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DescriptionProposal:
        """Inverse of :meth:`to_json`."""
        return cls(
            {c: tuple(texts) for c, texts in d["descriptions"].items()},
            tuple(d["missing"]),
            d["llm_calls"],
            d["prompt_tokens"],
            d["completion_tokens"],
            d["model"],
            d["cost_usd"],
        )


@dataclass(frozen=True)
class DescriptionPlan:
    """What one ProposeDescriptions call would take (PlanDescriptions), no LLM asked."""

    llm_calls: int  # when every reply describes all its classes
    max_llm_calls: int  # when replies leave classes out and they are asked again
    prompt_tokens: int
    completion_tokens: int  # the reply room reserved: at most this many
    model: str
    classes_per_call: tuple[int, ...]


def description_request(
    strategy: DescriptionStrategy,
    *,
    class_names: Sequence[str],
    scored: Mapping[str, tuple[Sequence[str], float]] | None,
    confusions: Sequence[tuple[str, str, int]],
    task_description: str,
    **optional: float | None,
) -> optimizer_pb2.ProposeDescriptionsRequest:
    """The ProposeDescriptions message (also what PlanDescriptions plans); ``optional`` fields set
    only when not None (descriptions_per_class, weakest_k, max_classes_per_call, max_llm_calls,
    temperature, seed)."""
    message = optimizer_pb2.ProposeDescriptionsRequest(
        strategy=DESCRIPTION_STRATEGY_TO_PROTO[strategy],
        task_description=task_description,
        class_names=list(class_names),
        scored=[
            optimizer_pb2.ScoredClass(class_name=c, descriptions=list(d), accuracy=a)
            for c, (d, a) in (scored or {}).items()
        ],
        confusions=[common_pb2.Confusion(true_class=t, predicted_class=p, count=n) for t, p, n in confusions],
    )
    for name, value in optional.items():
        if value is not None:
            setattr(message, name, value)
    return message


class GrpcProposer:
    """The :class:`~services.coordinator.search.TemplateProposer` port over OptimizerService."""

    def __init__(
        self,
        target: str,
        *,
        deadline_seconds: float = 180.0,
        retry: RetryPolicy | None = None,
        tls: ClientTLS | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        self.channel = _open(target, tls, max_message_bytes)
        self.stub = optimizer_pb2_grpc.OptimizerServiceStub(self.channel)
        self.deadline = deadline_seconds
        self.retry = retry or RetryPolicy()
        self.prices = prices or {}  # model -> (USD per 1k prompt tokens, per 1k completion tokens)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD at the price of ``model`` (else the ``*`` entry; 0 when neither is set)."""
        per_prompt, per_completion = self.prices.get(model) or self.prices.get("*") or (0.0, 0.0)
        return (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1000.0

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def propose_descriptions(
        self,
        strategy: DescriptionStrategy,
        *,
        class_names: Sequence[str] = (),
        scored: Mapping[str, tuple[Sequence[str], float]] | None = None,
        confusions: Sequence[tuple[str, str, int]] = (),
        task_description: str = "",
        descriptions_per_class: int | None = None,
        weakest_k: int | None = None,
        max_classes_per_call: int | None = None,
        max_llm_calls: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> DescriptionProposal:
        """One ProposeDescriptions call: ``describe`` ``class_names``, or ``refine`` the weakest of
        ``scored`` (class -> (descriptions, accuracy)) given the set's ``confusions``."""
        message = description_request(
            strategy,
            class_names=class_names,
            scored=scored,
            confusions=confusions,
            task_description=task_description,
            descriptions_per_class=descriptions_per_class,
            weakest_k=weakest_k,
            max_classes_per_call=max_classes_per_call,
            max_llm_calls=max_llm_calls,
            temperature=temperature,
            seed=seed,
        )
        reply = await self.retry.call(
            "optimizer ProposeDescriptions",
            lambda: self.stub.ProposeDescriptions(message, timeout=self.deadline),
        )
        metrics.LLM_TOKENS.labels("prompt").inc(reply.usage.prompt_tokens)
        metrics.LLM_TOKENS.labels("completion").inc(reply.usage.completion_tokens)
        cost = self.cost(reply.model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        metrics.LLM_COST.inc(cost)
        return DescriptionProposal(
            descriptions={d.class_name: tuple(d.texts) for d in reply.descriptions},
            missing=tuple(reply.missing),
            llm_calls=reply.usage.llm_calls,
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            model=reply.model,
            cost_usd=cost,
        )

    async def plan_descriptions(
        self,
        strategy: DescriptionStrategy,
        *,
        class_names: Sequence[str] = (),
        scored: Mapping[str, tuple[Sequence[str], float]] | None = None,
        confusions: Sequence[tuple[str, str, int]] = (),
        task_description: str = "",
        descriptions_per_class: int | None = None,
        weakest_k: int | None = None,
        max_classes_per_call: int | None = None,
        max_llm_calls: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> DescriptionPlan:
        """One PlanDescriptions call: what :meth:`propose_descriptions` with the same arguments
        would take (calls, tokens, the model), without asking the LLM."""
        message = description_request(
            strategy,
            class_names=class_names,
            scored=scored,
            confusions=confusions,
            task_description=task_description,
            descriptions_per_class=descriptions_per_class,
            weakest_k=weakest_k,
            max_classes_per_call=max_classes_per_call,
            max_llm_calls=max_llm_calls,
            temperature=temperature,
            seed=seed,
        )
        request = optimizer_pb2.PlanDescriptionsRequest(request=message)
        reply = await self.retry.call(
            "optimizer PlanDescriptions",
            lambda: self.stub.PlanDescriptions(request, timeout=self.deadline),
        )
        return DescriptionPlan(
            llm_calls=reply.llm_calls,
            max_llm_calls=reply.max_llm_calls,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            model=reply.model,
            classes_per_call=tuple(reply.classes_per_call),
        )

    async def propose(self, request: ProposalRequest) -> Proposal:
        """One ProposePrompts call."""
        message = optimizer_pb2.ProposePromptsRequest(
            task_description=request.task_description,
            class_names=list(request.class_names),
            history=[scored_to_proto(t) for t in request.history],
            strategy=STRATEGY_TO_PROTO[request.strategy],
            best_k=request.best_k,
            worst_k=request.worst_k,
            num_templates=request.num_templates,
            conversation=[common_pb2.ChatMessage(role=r, content=c) for r, c in request.conversation],
        )
        if request.temperature is not None:
            message.temperature = request.temperature
        if request.seed is not None:
            message.seed = request.seed
        reply = await self.retry.call(
            "optimizer ProposePrompts", lambda: self.stub.ProposePrompts(message, timeout=self.deadline)
        )
        metrics.LLM_TOKENS.labels("prompt").inc(reply.usage.prompt_tokens)
        metrics.LLM_TOKENS.labels("completion").inc(reply.usage.completion_tokens)
        cost = self.cost(reply.model, reply.usage.prompt_tokens, reply.usage.completion_tokens)
        metrics.LLM_COST.inc(cost)
        return Proposal(
            templates=tuple(reply.templates),
            llm_calls=reply.usage.llm_calls,  # 0 for a cached reply or a strategy with no LLM
            prompt_tokens=reply.usage.prompt_tokens,
            completion_tokens=reply.usage.completion_tokens,
            conversation=tuple((m.role, m.content) for m in reply.conversation),
            model=reply.model,
            cost_usd=cost,
        )
