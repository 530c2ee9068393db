"""The scoring engine: a CLIP model, cached image features and a batcher -> template accuracies.

Scoring is the paper's rule: fill the template with every class name, encode the texts, L2-normalise,
take the argmax of cosine similarity with the L2-normalised image features. All templates x classes
of the requests one batch coalesces (:mod:`services.scorer.batching`) go through the text tower in
one pass, by the exact fast path of :mod:`services.scorer.clip`; normalised text embeddings are
kept in an LRU (:mod:`services.scorer.textcache`) keyed by (model, text).

No gRPC here: errors are the domain exceptions of :mod:`services.scorer.errors`, which the
servicer maps to status codes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.scorer import metrics
from services.scorer.batching import Batcher
from services.scorer.clip import ClipModel, common_prefix_lengths, length_buckets
from services.scorer.datasets import DatasetSpec, FewShotSet, FileDigests, Split
from services.scorer.descriptions import (
    MAX_TOP_CONFUSIONS,
    DescriptionJob,
    DescriptionSet,
    make_job,
    score_job,
)
from services.scorer.errors import (
    BadRequest,
    DatasetConflict,
    DatasetFailed,
    DatasetNotReady,
    NotReady,
    TooManyDatasets,
    UnknownDataset,
    UnknownSplit,
)
from services.scorer.features import FeatureCache, FeaturesSource, Stopped, load_or_compute
from services.scorer.heads import score_heads
from services.scorer.results import Evaluation, ModelInfo, TemplateResult
from services.scorer.settings import ScorerSettings
from services.scorer.templates import FilledTemplate, TemplateRejected, fill_all
from services.scorer.textcache import TextEmbeddingCache

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One request as the batcher queues it."""

    dataset: FewShotSet
    split: str
    templates: list[str]
    filled: list[FilledTemplate | str]  # a string is the rejection reason
    per_class: bool
    ensemble: bool
    per_image: bool = False

    @property
    def size(self) -> int:
        return len(self.filled)


class ScoringEngine:
    """Loads a CLIP model and datasets, and scores templates through a bounded, batching queue."""

    def __init__(self, settings: ScorerSettings) -> None:
        self.settings = settings
        self.model: ClipModel | None = None
        self.datasets: dict[str, FewShotSet] = {}
        self._features: dict[tuple[str, str], tuple[Any, Any]] = {}  # (id, split) -> (feats, labels)
        self._specs: dict[str, DatasetSpec] = {}
        self.feature_cache = FeatureCache(Path(settings.cache_dir) if settings.cache_dir else None)
        # True while the start-up datasets load: a request for one not registered yet is then
        # UNAVAILABLE (retry), not NOT_FOUND.
        self.starting = False
        self._registry = threading.RLock()  # guards datasets, _specs and _features
        self._encoding = threading.Lock()  # one dataset is encoded at a time; others queue
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.cache = TextEmbeddingCache(settings.text_cache_size)
        self.batcher: Batcher[_Job | DescriptionJob, Evaluation] = Batcher(
            self._compute,
            max_queue_templates=settings.max_queue_templates,
            max_batch_templates=settings.max_batch_templates,
            batch_wait_ms=settings.batch_wait_ms,
            batch_wait_alone=settings.batch_wait_alone,
        )
        self.batches = 0  # text passes run (coalescing shows as fewer batches than requests)

    # -- loading (sync; call through a thread from async code) --
    @property
    def ready(self) -> bool:
        """Model loaded and every registered dataset's features computed."""
        return self.model is not None and all(d.ready for d in self.datasets.values())

    def load_model(self) -> ModelInfo:
        """Create the model (downloads or reads weights as open_clip does)."""
        start = time.perf_counter()
        self.model = ClipModel(self.settings)
        info = self.model.info()
        metrics.MODEL_INFO.labels(info.model_name, info.pretrained, info.device, info.precision).set(1)
        log.info(
            "model loaded",
            extra={
                "model": info.model_name,
                "device": info.device,
                "precision": info.precision,
                "truncation": self.model.truncate,
                "seconds": round(time.perf_counter() - start, 3),
            },
        )
        return info

    def register(self, spec: DatasetSpec) -> FewShotSet:
        """Register a dataset and compute (or load cached) features of every split, then return.

        For the start-up datasets and tools; a failure leaves nothing registered.
        """
        dataset, fresh = self._admit(spec)
        if fresh:
            try:
                self._prepare(dataset)
            except BaseException:
                self._forget(dataset)
                raise
        return dataset

    def register_in_background(self, spec: DatasetSpec) -> FewShotSet:
        """Check the source and register it now; its features are computed in a thread.

        Returns the dataset at once (``ready`` False until its features are in memory; its
        ``images_done`` tell the progress). A source that cannot be read is refused here, with
        the same errors as :meth:`register`; a failure while encoding is kept in ``error``, and
        registering the same source again retries.
        """
        dataset, fresh = self._admit(spec)
        if fresh:
            worker = threading.Thread(
                target=self._prepare_logged, args=(dataset,), name=f"features-{dataset.id}", daemon=True
            )
            self._workers = [w for w in self._workers if w.is_alive()] + [worker]
            worker.start()
        return dataset

    def _admit(self, spec: DatasetSpec) -> tuple[FewShotSet, bool]:
        """The registered dataset of ``spec`` and whether it is new (its features still to do)."""
        if self.model is None:
            raise NotReady("the model is still loading")

        def known() -> FewShotSet | None:
            spec_known = self._specs.get(spec.id)
            if spec_known is None:
                return None
            if spec_known != spec:
                raise DatasetConflict(f"dataset {spec.id!r} is already registered from another source")
            dataset = self.datasets[spec.id]
            if dataset.error is None:
                return dataset
            self._forget(dataset)  # it failed: read the source again and retry
            return None

        def room() -> None:
            if len(self._specs) >= self.settings.max_datasets:
                raise TooManyDatasets(f"{len(self._specs)} datasets are registered, the limit (max_datasets)")

        with self._registry:
            found = known()
            if found is not None:
                return found, False
            room()
        dataset = spec.load()  # outside the lock: it lists folders
        dataset.check()  # every image's header: a missing or non-image file is refused now
        with self._registry:
            found = known()
            if found is not None:
                return found, False
            room()
            self._specs[spec.id] = spec
            self.datasets[spec.id] = dataset
        metrics.IMAGES_PENDING.inc(dataset.images_total)
        return dataset, True

    def _forget(self, dataset: FewShotSet) -> None:
        with self._registry:
            if self.datasets.get(dataset.id) is dataset:
                del self.datasets[dataset.id]
                self._specs.pop(dataset.id, None)
        if dataset.error is None and not dataset.ready:
            metrics.IMAGES_PENDING.dec(dataset.images_total - dataset.images_done)

    def _progress(self, dataset: FewShotSet, done: int) -> None:
        metrics.IMAGES_PENDING.dec(done - dataset.images_done)
        dataset.images_done = done

    def _prepare(self, dataset: FewShotSet) -> None:
        """Compute (or load) the features of every split of ``dataset`` and mark it ready."""
        import torch

        assert self.model is not None
        with self._encoding:
            feats: dict[str, tuple[Any, Any]] = {}
            before = 0
            for name, split in dataset.splits.items():
                got = load_or_compute(
                    self.feature_cache,
                    self.model.fingerprint,
                    dataset.id,
                    split,
                    self.model.encode_images,
                    self.model.preprocess,
                    self.settings.image_batch_size,
                    self.settings.feature_chunk_images,
                    progress=lambda n, base=before: self._progress(dataset, base + n),  # type: ignore[misc]
                    should_stop=self._stop.is_set,
                )
                labels = torch.tensor(split.labels, dtype=torch.long, device=self.model.device)
                feats[name] = (got.features.to(self.model.device), labels)
                split.features_source, split.cache_error = got.source, got.cache_error
                before += len(split)
        with self._registry:
            for name, value in feats.items():
                self._features[(dataset.id, name)] = value
            dataset.ready = True

    def _prepare_logged(self, dataset: FewShotSet) -> None:
        """:meth:`_prepare` in a worker thread: a failure is kept on the dataset and logged."""
        try:
            self._prepare(dataset)
            log.info("dataset ready", extra={"dataset": dataset.id, "splits": len(dataset.splits)})
        except Stopped as exc:
            log.info("dataset encoding stopped", extra={"dataset": dataset.id, "reason": str(exc)})
        except Exception as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            # The source's fault (an image that does not decode), not the server's: a warning.
            log.warning("dataset features failed", extra={"dataset": dataset.id, "error": reason})
            metrics.IMAGES_PENDING.dec(dataset.images_total - dataset.images_done)
            dataset.error = f"computing the image features failed: {reason}"

    def register_features(
        self, dataset_id: str, class_names: Sequence[str], split: str, features: Any, labels: Any
    ) -> FewShotSet:
        """Register a split from already computed image features (benchmarks, offline tools).

        ``features`` (N, D) are L2-normalised here; ``labels`` (N,) index ``class_names``.
        """
        import torch

        if self.model is None:
            raise NotReady("the model is still loading")
        feats = torch.nn.functional.normalize(torch.as_tensor(features).float(), dim=-1)
        labels_t = torch.as_tensor(labels, dtype=torch.long)
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            dataset = FewShotSet(dataset_id, list(class_names), {}, source="features", ready=True)
            self.datasets[dataset_id] = dataset
        elif dataset.class_names != list(class_names):
            raise DatasetConflict(f"dataset {dataset_id!r} is already registered with other classes")

        def fingerprint(_memo: FileDigests | None = None) -> str:
            return f"features:{dataset_id}:{split}"

        dataset.splits[split] = Split(
            split, labels_t.tolist(), lambda i: None, fingerprint, FeaturesSource.PROVIDED
        )
        self._features[(dataset_id, split)] = (feats.to(self.model.device), labels_t.to(self.model.device))
        return dataset

    def model_info(self) -> ModelInfo:
        """The loaded model, or NotReady."""
        if self.model is None:
            raise NotReady("the model is still loading")
        return self.model.info()

    # -- requests (async) --
    async def evaluate(
        self,
        dataset: str,
        split: str,
        templates: Sequence[str],
        per_class: bool = False,
        per_image: bool = False,
    ) -> Evaluation:
        """Score each template on ``dataset``/``split``; invalid templates get their own error.

        ``per_image``: also each image's correctness and loss (:mod:`promptclimb.common.per_image`).
        """
        return await self._submit(dataset, split, templates, per_class, ensemble=False, per_image=per_image)

    async def evaluate_ensemble(
        self, dataset: str, split: str, templates: Sequence[str], per_class: bool = False
    ) -> Evaluation:
        """Score the ensemble of ``templates``; any invalid template rejects the request."""
        return await self._submit(dataset, split, templates, per_class, ensemble=True)

    async def evaluate_descriptions(
        self,
        dataset_id: str,
        split: str,
        sets: Sequence[DescriptionSet],
        per_class: bool = False,
        top_confusions: int = 0,
        drop_overlong: bool = False,
    ) -> Evaluation:
        """Score each description set (:mod:`services.scorer.descriptions`); an invalid set gets its
        own error. ``top_confusions``: that many of each set's most frequent confusions;
        ``drop_overlong``: over-long texts leave their class instead of rejecting the set."""
        dataset = self._target(dataset_id, split)
        limit = self.settings.max_templates_per_request
        if not sets:
            raise BadRequest("sets must not be empty", "sets")
        if len(sets) > limit:
            raise BadRequest(f"{len(sets)} sets exceed the limit of {limit} per request", "sets")
        texts, text_limit = sum(s.num_raw_texts for s in sets), limit * len(dataset.class_names)
        if texts > text_limit:
            raise BadRequest(
                f"{texts} texts exceed the limit of {text_limit} per request "
                f"(max_templates_per_request x {len(dataset.class_names)} classes)",
                "sets",
            )
        if not 0 <= top_confusions <= MAX_TOP_CONFUSIONS:
            raise BadRequest(f"top_confusions must be between 0 and {MAX_TOP_CONFUSIONS}", "top_confusions")
        job = make_job(dataset, split, sets, per_class, top_confusions, drop_overlong)
        return await self.batcher.submit(job, job.size)

    def _target(self, dataset_id: str, split: str) -> FewShotSet:
        """The ready dataset a request names, or the error that says why not."""
        if self.model is None:
            raise NotReady("the scorer is still loading its model and image features")
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            if self.starting:
                raise NotReady("the scorer is still loading its start-up datasets")
            raise UnknownDataset(dataset_id)
        if not dataset.ready:
            if dataset.error is not None:
                raise DatasetFailed(dataset_id, dataset.error)
            raise DatasetNotReady(dataset_id, dataset.images_done, dataset.images_total)
        if split not in dataset.splits:
            raise UnknownSplit(dataset_id, split, sorted(dataset.splits))
        return dataset

    async def _submit(
        self,
        dataset_id: str,
        split: str,
        templates: Sequence[str],
        per_class: bool,
        ensemble: bool,
        per_image: bool = False,
    ) -> Evaluation:
        dataset = self._target(dataset_id, split)
        if not templates:
            raise BadRequest("templates must not be empty", "templates")
        limit = self.settings.max_templates_per_request
        if len(templates) > limit:
            raise BadRequest(
                f"{len(templates)} templates exceed the limit of {limit} per request", "templates"
            )
        filled: list[FilledTemplate | str] = []
        for t in templates:
            try:
                filled.append(fill_all(t, dataset.class_names))
            except TemplateRejected as exc:
                filled.append(str(exc))
        if ensemble:
            bad = [(f"templates[{i}]", f) for i, f in enumerate(filled) if isinstance(f, str)]
            if bad:
                raise BadRequest("ensemble templates are invalid", "templates", bad)
        job = _Job(dataset, split, list(templates), filled, per_class, ensemble, per_image)
        result = await self.batcher.submit(job, job.size)
        if ensemble and result.scores[0].error:
            raise BadRequest(f"ensemble templates are invalid: {result.scores[0].error}", "templates")
        return result

    async def close(self) -> None:
        """Stop the batching worker and feature encoding; waiting requests fail with NotReady."""
        self._stop.set()  # workers end after their current chunk; what they wrote is kept
        await self.batcher.close(NotReady("the scorer is shutting down"))

    # -- the torch work (runs in a worker thread) --
    def _embed(self, groups: Sequence[Sequence[str]]) -> tuple[dict[str, Any], dict[str, str]]:
        """Normalised embeddings of the texts (cache first) and the over-long ones with a reason.

        ``groups`` are the filled texts of each template; with prefix sharing the texts of one
        group share their leading tokens, which are then encoded once.
        """
        assert self.model is not None
        m = self.model
        found: dict[str, Any] = {}
        misses: list[str] = []
        group_of: list[int] = []
        seen: set[str] = set()
        for g, texts in enumerate(groups):
            for text in texts:
                if text in seen:
                    continue
                seen.add(text)
                emb = self.cache.get((m.id, text))
                if emb is None:
                    misses.append(text)
                    group_of.append(g)
                else:
                    found[text] = emb
        metrics.CACHE_HITS.inc(len(found))
        metrics.CACHE_MISSES.inc(len(misses))
        too_long: dict[str, str] = {}
        if not misses:
            return found, too_long
        tokens, over = m.tokenize(misses)
        keep = [i for i, o in enumerate(over) if not o]
        for i, o in enumerate(over):
            if o:
                too_long[misses[i]] = f"longer than the {m.context_length}-token context"
        if not keep:
            return found, too_long
        tokens, kept_groups = tokens[keep], [group_of[i] for i in keep]
        lengths = m.real_lengths(tokens)
        prefix = None
        if m.share_prefix:
            prefix = common_prefix_lengths(tokens, lengths, kept_groups)
            lengths = lengths - prefix  # what each row still computes is its suffix
        for idx in length_buckets(lengths.tolist(), self._text_batch_size()):
            if prefix is not None:
                embs = m.encode_text_shared(tokens[idx], prefix[idx], [kept_groups[j] for j in idx])
            else:
                embs = m.encode_text(tokens[idx])
            for j, emb in zip(idx, embs, strict=True):
                text = misses[keep[j]]
                found[text] = emb
                self.cache.put((m.id, text), emb)
        return found, too_long

    def _text_batch_size(self) -> int:
        """Texts per forward: the setting, else a device default.

        On CPU, chunks of 512 keep the activations small (peak extra memory 270 MB instead of
        600 MB for 6,400 texts of ViT-B-32) at the same or slightly better speed; an accelerator
        wants large batches to fill its matrix units.
        """
        if self.settings.text_batch_size:
            return self.settings.text_batch_size
        assert self.model is not None
        return 512 if self.model.device.type == "cpu" else 2048

    def _compute(self, batch: list[_Job | DescriptionJob]) -> list[Evaluation]:
        import torch

        start = time.perf_counter()
        assert self.model is not None
        scale = self.model.logit_scale
        groups: list[Sequence[str]] = []
        for job in batch:
            if isinstance(job, DescriptionJob):
                groups += job.groups()
            else:
                groups += [f.texts for f in job.filled if not isinstance(f, str)]
        embs, too_long = self._embed(groups)
        out = []
        for job in batch:
            feats, labels = self._features[(job.dataset.id, job.split)]
            if isinstance(job, DescriptionJob):
                out.append(score_job(job, embs, too_long, feats, labels, scale))
                continue
            results: list[TemplateResult] = []
            weights: list[Any] = []
            scored: list[int] = []
            for i, f in enumerate(job.filled):
                if isinstance(f, str):
                    results.append(TemplateResult(job.templates[i], error=f))
                    continue
                over = [
                    (c, t) for c, t in zip(job.dataset.class_names, f.texts, strict=True) if t in too_long
                ]
                if over:
                    results.append(
                        TemplateResult(
                            f.template,
                            error=f"template filled with class {over[0][0]!r} is {too_long[over[0][1]]}",
                        )
                    )
                    continue
                results.append(TemplateResult(f.template))
                weights.append(torch.stack([embs[t] for t in f.texts]))
                scored.append(i)
            if job.ensemble:
                if len(scored) != len(results):
                    bad = [f"templates[{i}]: {r.error}" for i, r in enumerate(results) if r.error]
                    out.append(
                        Evaluation(
                            [TemplateResult("", error="; ".join(bad))], list(job.dataset.class_names), 0.0
                        )
                    )
                    continue
                mean = torch.nn.functional.normalize(torch.stack(weights).mean(dim=0), dim=-1)
                weights, scored = [mean], [0]
                results = [TemplateResult("")]
            score_heads(
                feats,
                labels,
                weights,
                [results[i] for i in scored],
                scale,
                per_class=job.per_class,
                per_image=job.per_image,
            )
            out.append(Evaluation(results, list(job.dataset.class_names), 0.0))
        seconds = time.perf_counter() - start
        size = sum(job.size for job in batch)
        metrics.COMPUTE.observe(seconds)
        metrics.TEMPLATES.inc(size)
        self.batches += 1
        for e in out:
            e.compute_seconds = seconds
        return out
