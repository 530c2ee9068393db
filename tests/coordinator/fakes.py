"""In-process fake scorer and optimizer servicers for coordinator tests.

They are real gRPC servers on loopback (so the coordinator's clients, retries and deadlines are
exercised), with deterministic answers and counters a test can assert on.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

import grpc

from promptclimb.api.v1 import common_pb2, optimizer_pb2, optimizer_pb2_grpc, scorer_pb2, scorer_pb2_grpc
from promptclimb.common.errors import ServiceError
from promptclimb.common.per_image import pack_correct, pack_loss


def fake_accuracy(template: str) -> float:
    """A stable accuracy in [0, 1] per template (the same in every process)."""
    return int(hashlib.sha256(template.encode()).hexdigest()[:4], 16) / 0xFFFF


def fake_bits(template: str, n: int) -> str:
    """Per-image results ("1" = right) of a template on ``n`` images: round(fake_accuracy x n) of
    them right, which ones drawn from the template's hash (the same in every process)."""
    right = set(
        random.Random(hashlib.sha256(template.encode()).digest()).sample(
            range(n), round(fake_accuracy(template) * n)
        )
    )
    return "".join("1" if i in right else "0" for i in range(n))


def bits_loss(bits: str) -> list[float]:
    """The fake per-image losses of per-image results: 0.25 nats where right, 2 where wrong."""
    return [0.25 if b == "1" else 2.0 for b in bits]


def vote(members: list[str]) -> str:
    """The fake ensemble's per-image results: right where at least half of the members are."""
    return "".join(
        "1" if 2 * sum(b == "1" for b in col) >= len(members) else "0" for col in zip(*members, strict=True)
    )


class FakeScorer(scorer_pb2_grpc.ScorerServiceServicer):
    """Scores with :func:`fake_accuracy` over 100 images; counts every template it scores.

    With ``images`` set (template -> per-image results such as ``"1100000000"``; other templates
    get :func:`fake_bits` over as many images), it scores from the bits instead: correct = the
    ones, loss = the mean of :func:`bits_loss`, per-image results when asked, and ensembles by
    :func:`vote` of their members' bits.
    """

    def __init__(
        self, datasets: dict[str, list[str]] | None = None, *, delay: float = 0.0, unavailable_first: int = 0
    ) -> None:
        self.datasets = datasets or {"toy": ["cat", "dog", "bird"]}
        self.delay = delay
        self.unavailable_first = unavailable_first  # fail this many EvaluatePrompts calls first
        self.scored: Counter[tuple[str, str]] = Counter()  # (split, template) -> times scored
        self.calls = 0
        self.ensembles = 0
        self.images: dict[str, str] | None = None
        self.per_image_requests = 0  # EvaluatePrompts calls that asked for per-image results

    def bits(self, template: str) -> str:
        """The per-image results of ``template`` (``images`` set)."""
        assert self.images is not None
        n = len(next(iter(self.images.values())))
        return self.images.get(template) or fake_bits(template, n)

    async def EvaluatePrompts(self, request, context):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.unavailable_first > 0:
            self.unavailable_first -= 1
            await context.abort_with_status(
                ServiceError(grpc.StatusCode.UNAVAILABLE, "warming up", retry_after_seconds=0.01).to_status()
            )
        if request.dataset not in self.datasets:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"dataset {request.dataset!r} not found")
        await asyncio.sleep(self.delay)
        scores = []
        for t in request.templates:
            self.scored[(request.split, t)] += 1
            if t.count("{}") != 1:
                scores.append(
                    scorer_pb2.TemplateScore(
                        template=t, error=scorer_pb2.TemplateError(code=3, message="needs one {} slot")
                    )
                )
                continue
            if self.images is not None:
                bits = self.bits(t)
                losses = bits_loss(bits)
                score = scorer_pb2.TemplateScore(
                    template=t,
                    accuracy=bits.count("1") / len(bits),
                    correct=bits.count("1"),
                    total=len(bits),
                    loss=sum(losses) / len(losses),
                )
                if request.per_image:
                    score.per_image_correct = pack_correct([b == "1" for b in bits])
                    score.per_image_loss = pack_loss(losses)
                scores.append(score)
                continue
            acc = fake_accuracy(t)
            scores.append(
                scorer_pb2.TemplateScore(template=t, accuracy=acc, correct=round(acc * 100), total=100)
            )
        self.per_image_requests += int(request.per_image)
        return scorer_pb2.EvaluatePromptsResponse(scores=scores, class_names=self.datasets[request.dataset])

    async def EvaluateEnsemble(self, request, context):  # type: ignore[no-untyped-def]
        self.ensembles += 1
        if self.images is not None:
            bits = vote([self.bits(t) for t in request.templates])
            return scorer_pb2.EvaluateEnsembleResponse(
                score=scorer_pb2.TemplateScore(
                    accuracy=bits.count("1") / len(bits), correct=bits.count("1"), total=len(bits)
                )
            )
        acc = sum(fake_accuracy(t) for t in request.templates) / max(1, len(request.templates))
        return scorer_pb2.EvaluateEnsembleResponse(
            score=scorer_pb2.TemplateScore(accuracy=acc, correct=round(acc * 100), total=100)
        )

    async def ListDatasets(self, request, context):  # type: ignore[no-untyped-def]
        return scorer_pb2.ListDatasetsResponse(
            datasets=[scorer_pb2.Dataset(id=k, class_names=v, ready=True) for k, v in self.datasets.items()]
        )


@dataclass
class FakeOptimizer(optimizer_pb2_grpc.OptimizerServiceServicer):
    """Proposes numbered templates ("a photo of a {} (take N)."), 10 prompt + 5 completion tokens each.

    The edit strategy answers as the real optimizer does: no LLM, so zero usage.
    """

    delay: float = 0.0
    down: bool = False  # answer UNAVAILABLE to everything
    empty: bool = False  # propose nothing
    tag_strategy: bool = False  # name the strategy in each template ("a photo of a {} (edit take N).")
    requests: list[optimizer_pb2.ProposePromptsRequest] = field(default_factory=list)
    counter: int = 0
    extra: int = 0  # templates beyond num_templates in every reply (an LLM that over-delivers)

    async def ProposePrompts(self, request, context):  # type: ignore[no-untyped-def]
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "LLM endpoint unreachable")
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        templates = []
        if not self.empty:
            tag = f"{common_pb2.Strategy.Name(request.strategy).removeprefix('STRATEGY_').lower()} "
            for _ in range(request.num_templates + self.extra):
                self.counter += 1
                templates.append(
                    f"a photo of a {{}} ({tag if self.tag_strategy else ''}take {self.counter})."
                )
        conversation = [
            *request.conversation,
            common_pb2.ChatMessage(role="user", content=f"history of {len(request.history)}"),
            common_pb2.ChatMessage(role="assistant", content="\n".join(templates)),
        ]
        return optimizer_pb2.ProposePromptsResponse(
            templates=templates,
            conversation=conversation,
            model="fake",
            usage=common_pb2.Usage(llm_calls=1, prompt_tokens=10, completion_tokens=5)
            if request.strategy != common_pb2.STRATEGY_EDIT
            else common_pb2.Usage(),
        )


async def start_server(servicer: object, add: object) -> tuple[grpc.aio.Server, int]:
    """Serve ``servicer`` on a free loopback port."""
    server = grpc.aio.server()
    add(servicer, server)  # type: ignore[operator]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def start_scorer(scorer: FakeScorer) -> tuple[grpc.aio.Server, int]:
    """A fake scorer server."""
    return await start_server(scorer, scorer_pb2_grpc.add_ScorerServiceServicer_to_server)


async def start_optimizer(optimizer: FakeOptimizer) -> tuple[grpc.aio.Server, int]:
    """A fake optimizer server."""
    return await start_server(optimizer, optimizer_pb2_grpc.add_OptimizerServiceServicer_to_server)
