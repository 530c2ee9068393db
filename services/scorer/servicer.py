"""ScorerService over gRPC: converts messages to engine calls and engine errors to statuses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import grpc

from promptclimb.api.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc
from promptclimb.common.errors import ServiceError, abort, invalid_argument, not_found
from services.scorer.datasets import DatasetError, DatasetSpec, FewShotSet
from services.scorer.descriptions import DescriptionSet
from services.scorer.engine import ScoringEngine
from services.scorer.errors import (
    BadRequest,
    DatasetConflict,
    DatasetFailed,
    DatasetNotReady,
    NotReady,
    QueueFull,
    ScorerError,
    SourceNotAllowed,
    TooManyDatasets,
    UnknownDataset,
    UnknownSplit,
)
from services.scorer.features import FeaturesSource
from services.scorer.results import ModelInfo, TemplateResult

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["ScorerService"].full_name
_INVALID_ARGUMENT = 3  # google.rpc.Code
_FEATURES_SOURCE = {
    None: scorer_pb2.FEATURES_SOURCE_UNSPECIFIED,
    FeaturesSource.COMPUTED: scorer_pb2.FEATURES_SOURCE_COMPUTED,
    FeaturesSource.CACHE: scorer_pb2.FEATURES_SOURCE_CACHE,
    FeaturesSource.PROVIDED: scorer_pb2.FEATURES_SOURCE_PROVIDED,
}

T = TypeVar("T")


def to_service_error(exc: Exception) -> ServiceError:
    """The status a domain error is reported with."""
    if isinstance(exc, DatasetNotReady):  # ResourceInfo tells a caller to wait for this dataset
        return ServiceError(
            grpc.StatusCode.UNAVAILABLE, str(exc), retry_after_seconds=2.0, resource=("dataset", exc.dataset)
        )
    if isinstance(exc, NotReady):
        return ServiceError(grpc.StatusCode.UNAVAILABLE, str(exc), retry_after_seconds=1.0)
    if isinstance(exc, DatasetFailed):
        return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(exc), resource=("dataset", exc.dataset))
    if isinstance(exc, UnknownDataset):
        return not_found("dataset", exc.dataset)
    if isinstance(exc, UnknownSplit):
        return ServiceError(
            grpc.StatusCode.NOT_FOUND, str(exc), resource=("split", f"{exc.dataset}/{exc.split}")
        )
    if isinstance(exc, BadRequest):
        return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), field_violations=exc.violations)
    if isinstance(exc, QueueFull):
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), retry_after_seconds=exc.retry_after)
    if isinstance(exc, DatasetConflict):
        return ServiceError(grpc.StatusCode.ALREADY_EXISTS, str(exc))
    if isinstance(exc, SourceNotAllowed):
        return ServiceError(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    if isinstance(exc, TooManyDatasets):
        return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, DatasetError):
        return invalid_argument(str(exc), "source")
    raise exc


def _score(r: TemplateResult) -> scorer_pb2.TemplateScore:
    msg = scorer_pb2.TemplateScore(
        template=r.template,
        accuracy=r.accuracy,
        correct=r.correct,
        total=r.total,
        per_class_accuracy=r.per_class_accuracy,
        loss=r.loss,
        per_image_correct=r.per_image_correct,
        per_image_loss=r.per_image_loss,
    )
    if r.error is not None:
        msg.error.code = _INVALID_ARGUMENT
        msg.error.message = r.error
    return msg


def _set_score(r: TemplateResult, class_names: Sequence[str]) -> scorer_pb2.DescriptionSetScore:
    msg = scorer_pb2.DescriptionSetScore(
        name=r.template,
        accuracy=r.accuracy,
        correct=r.correct,
        total=r.total,
        per_class_accuracy=r.per_class_accuracy,
        loss=r.loss,
        confusions=[
            common_pb2.Confusion(true_class=class_names[t], predicted_class=class_names[p], count=n)
            for t, p, n in r.confusions
        ],
        num_texts=r.num_texts,
        dropped=[common_pb2.ClassDescriptions(class_name=class_names[c], texts=t) for c, t in r.dropped],
    )
    if r.error is not None:
        msg.error.code = _INVALID_ARGUMENT
        msg.error.message = r.error
    return msg


def description_sets(request: scorer_pb2.EvaluateDescriptionsRequest) -> list[DescriptionSet]:
    """The domain sets of an EvaluateDescriptions request."""
    return [
        DescriptionSet(s.name, tuple((c.class_name, tuple(c.texts)) for c in s.classes), s.template)
        for s in request.sets
    ]


def dataset_message(d: FewShotSet) -> scorer_pb2.Dataset:
    """A registered dataset as a message."""
    return scorer_pb2.Dataset(
        id=d.id,
        class_names=d.class_names,
        splits=[
            scorer_pb2.SplitInfo(
                name=n,
                num_images=len(s),
                features_source=_FEATURES_SOURCE[s.features_source],
                cache_error=s.cache_error or "",
            )
            for n, s in sorted(d.splits.items())
        ],
        source=d.source,
        ready=d.ready,
        images_done=d.images_done if not d.ready else d.images_total,
        images_total=d.images_total,
        error=d.error or "",
    )


def spec_of(request: scorer_pb2.RegisterDatasetRequest) -> DatasetSpec:
    """The dataset spec a RegisterDataset request describes."""
    if not request.id:
        raise BadRequest("id must not be empty", "id")
    kind = request.WhichOneof("source")
    if kind == "image_folder":
        return DatasetSpec(request.id, "imagefolder", request.image_folder.path)
    if kind == "array":
        return DatasetSpec(request.id, "npz", request.array.path)
    if kind == "coop":
        c = request.coop
        options = {
            "split_json": c.split_json,
            "root": c.image_root,
            "shots": str(c.shots),
            "seed": str(c.seed),
        }
        return DatasetSpec(request.id, "coop", c.split_json, options)
    raise BadRequest("one of image_folder, coop, array must be set", "source")


def check_register_roots(spec: DatasetSpec, roots: Sequence[Path]) -> None:
    """Refuse a run-time registration that reads outside ``roots`` (no roots: anything goes).

    Callers of RegisterDataset are remote; without a root list any of them could make the scorer
    walk any folder it can read. Paths are resolved first, so ``..`` and symlinks cannot escape.
    """
    if not roots:
        return
    paths = [spec.path, *(spec.options.get(k, "") for k in ("root",))]
    allowed = [Path(r).resolve() for r in roots]
    for raw in filter(None, paths):
        try:
            resolved = Path(raw).expanduser().resolve()
        except (OSError, ValueError, RuntimeError) as exc:
            raise BadRequest(f"cannot resolve the dataset path: {exc}", "source") from exc
        if not any(resolved == root or root in resolved.parents for root in allowed):
            raise SourceNotAllowed(
                "dataset paths must lie under the scorer's register roots "
                f"({', '.join(str(r) for r in allowed)})"
            )


class ScorerServicer(scorer_pb2_grpc.ScorerServiceServicer):
    """The gRPC adapter of a :class:`ScoringEngine`."""

    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine

    async def _call(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (ScorerError, DatasetError) as exc:
            await abort(context, to_service_error(exc))
            raise AssertionError("unreachable") from exc

    async def EvaluatePrompts(
        self, request: scorer_pb2.EvaluatePromptsRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.EvaluatePromptsResponse:
        """Score each template."""
        result = await self._call(
            context,
            lambda: self.engine.evaluate(
                request.dataset, request.split, list(request.templates), request.per_class, request.per_image
            ),
        )
        return scorer_pb2.EvaluatePromptsResponse(
            scores=[_score(s) for s in result.scores],
            class_names=result.class_names,
            compute_seconds=result.compute_seconds,
        )

    async def EvaluateEnsemble(
        self, request: scorer_pb2.EvaluateEnsembleRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.EvaluateEnsembleResponse:
        """Score the ensemble of the templates."""
        result = await self._call(
            context,
            lambda: self.engine.evaluate_ensemble(
                request.dataset, request.split, list(request.templates), request.per_class
            ),
        )
        return scorer_pb2.EvaluateEnsembleResponse(
            score=_score(result.scores[0]), class_names=result.class_names
        )

    async def EvaluateDescriptions(
        self, request: scorer_pb2.EvaluateDescriptionsRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.EvaluateDescriptionsResponse:
        """Score each description set."""
        result = await self._call(
            context,
            lambda: self.engine.evaluate_descriptions(
                request.dataset,
                request.split,
                description_sets(request),
                request.per_class,
                request.top_confusions,
                request.drop_overlong_texts,
            ),
        )
        return scorer_pb2.EvaluateDescriptionsResponse(
            scores=[_set_score(s, result.class_names) for s in result.scores],
            class_names=result.class_names,
            compute_seconds=result.compute_seconds,
        )

    async def ListDatasets(
        self, request: scorer_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.ListDatasetsResponse:
        """Every registered dataset; UNAVAILABLE while the start-up datasets are still loading.

        An empty list from a scorer that is still starting would read as "not registered": a
        coordinator would end its searches NOT_FOUND instead of retrying (seen in bench/chaos.py).
        """

        async def work() -> list[FewShotSet]:
            if self.engine.starting:
                raise NotReady("the scorer is still loading its model and start-up datasets")
            # list() copies the registry in one step: a registration thread may add to it meanwhile.
            return sorted(list(self.engine.datasets.values()), key=lambda d: d.id)

        datasets = await self._call(context, work)
        return scorer_pb2.ListDatasetsResponse(datasets=[dataset_message(d) for d in datasets])

    async def RegisterDataset(
        self, request: scorer_pb2.RegisterDatasetRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.RegisterDatasetResponse:
        """Register a dataset: the source is checked now, its features computed in the background."""

        async def work() -> FewShotSet:
            spec = spec_of(request)
            check_register_roots(spec, self.engine.settings.register_roots)
            try:
                return await asyncio.to_thread(self.engine.register_in_background, spec)
            except (DatasetError, ScorerError):
                raise
            except (OSError, ValueError) as exc:
                # A path the OS cannot look up (too long, NUL byte, no permission) is the caller's.
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise DatasetError(f"cannot read the dataset source: {reason}") from exc

        dataset = await self._call(context, work)
        return scorer_pb2.RegisterDatasetResponse(dataset=dataset_message(dataset))

    async def GetModelInfo(
        self, request: scorer_pb2.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.GetModelInfoResponse:
        """The loaded model."""

        async def work() -> ModelInfo:
            return self.engine.model_info()

        info = await self._call(context, work)
        return scorer_pb2.GetModelInfoResponse(
            model_name=info.model_name,
            pretrained=info.pretrained,
            device=info.device,
            precision=info.precision,
            context_length=info.context_length,
            embed_dim=info.embed_dim,
            text_truncation_exact=info.text_truncation_exact,
            max_templates_per_request=self.engine.settings.max_templates_per_request,
            model_id=self.engine.settings.resolved_model_id(),
        )


def register(server: grpc.aio.Server, engine: ScoringEngine) -> None:
    """Add the scorer service to ``server``."""
    scorer_pb2_grpc.add_ScorerServiceServicer_to_server(ScorerServicer(engine), server)
