"""The scoring engine: CLIP text tower + cached image features -> template accuracies.

Scoring is the paper's rule: fill the template with every class name, encode the texts, L2-normalise,
take the argmax of cosine similarity with the L2-normalised image features. The fast path changes
how, never what: all templates x classes of the queued requests go through the text tower in
one batched pass; padding after the longest end-of-text token is cut where the tower is causal
with end-of-text pooling (then the padding cannot influence the pooled feature); normalised text
embeddings are kept in an LRU cache keyed by (model, text).

No gRPC here: errors are the domain exceptions below, which the servicer maps to status codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.scorer import metrics
from services.scorer.datasets import DatasetError, DatasetSpec, FewShotSet, FileDigests, Split
from services.scorer.features import load_or_compute
from services.scorer.settings import ScorerSettings
from services.scorer.templates import FilledTemplate, TemplateRejected, fill_all

log = logging.getLogger(__name__)


# ---- domain errors (mapped to gRPC codes by the servicer) -------------------------------------
class ScorerError(Exception):
    """Base of the engine's request errors."""


class NotReady(ScorerError):
    """The model or the features are still loading (UNAVAILABLE)."""


class UnknownDataset(ScorerError):
    """No dataset with that id (NOT_FOUND)."""

    def __init__(self, dataset: str) -> None:
        super().__init__(f"dataset {dataset!r} is not registered")
        self.dataset = dataset


class UnknownSplit(ScorerError):
    """The dataset has no such split (NOT_FOUND)."""

    def __init__(self, dataset: str, split: str, known: Sequence[str]) -> None:
        super().__init__(f"dataset {dataset!r} has no split {split!r} (has: {', '.join(known)})")
        self.dataset, self.split = dataset, split


class BadRequest(ScorerError):
    """The request as a whole is invalid (INVALID_ARGUMENT); ``field`` names the culprit."""

    def __init__(self, message: str, field: str, violations: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.violations = list(violations) or [(field, message)]


class QueueFull(ScorerError):
    """Too many templates are waiting (RESOURCE_EXHAUSTED); retry after ``retry_after`` seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: float) -> None:
        super().__init__(f"scorer queue is full ({waiting} of {limit} templates waiting)")
        self.retry_after = retry_after


class DatasetConflict(ScorerError):
    """A dataset id is already registered from another source (ALREADY_EXISTS)."""


class SourceNotAllowed(ScorerError):
    """A RegisterDataset path lies outside the configured register roots (PERMISSION_DENIED)."""


class TooManyDatasets(ScorerError):
    """The registry is at ``max_datasets`` (RESOURCE_EXHAUSTED)."""


# ---- results ----------------------------------------------------------------------------------
@dataclass
class TemplateResult:
    """One template's score on a split, or why it was rejected."""

    template: str
    correct: int = 0
    total: int = 0
    per_class_accuracy: list[float] = field(default_factory=list)
    error: str | None = None
    # Mean cross-entropy of the true class under softmax(logit_scale * cosine), CLIP's own
    # zero-shot probabilities: a finer signal than the count for telling tied templates apart.
    loss: float = 0.0

    @property
    def accuracy(self) -> float:
        """Fraction correct (0 for a rejected template)."""
        return self.correct / self.total if self.total else 0.0


@dataclass
class Evaluation:
    """The answer to one request."""

    scores: list[TemplateResult]
    class_names: list[str]
    compute_seconds: float


@dataclass
class ModelInfo:
    """What is loaded."""

    model_name: str
    pretrained: str
    device: str
    precision: str
    context_length: int
    embed_dim: int
    text_truncation_exact: bool


# ---- the model --------------------------------------------------------------------------------
def _text_tower(model: Any) -> tuple[Any, str, int | None] | None:
    """The module holding the token embedding and transformer, its pool type and eos id."""
    from open_clip.model import CLIP
    from open_clip.transformer import TextTransformer

    if isinstance(model, CLIP):
        return model, model.text_pool_type, getattr(model, "text_eos_id", None)
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return text, text.pool_type, text.eos_id
    return None


def truncation_is_exact(model: Any) -> bool:
    """Whether cutting padding after the longest real sequence leaves every text feature unchanged.

    True only for an open_clip text transformer with a causal attention mask (a token never sees
    later ones) that pools at the end-of-text token ('argmax' or 'eos'): the pooled position and
    everything before it are then independent of the padding. Anything else (bidirectional
    towers, 'last'/'first'/attention pooling, HF towers, CoCa's appended class token) is encoded
    at full context.
    """
    import torch

    tower = _text_tower(model)
    if tower is None:
        return False
    module, pool, _eos = tower
    mask = getattr(module, "attn_mask", None)
    if mask is None or mask.ndim != 2 or pool not in ("argmax", "eos"):
        return False
    n = mask.shape[0]
    causal = torch.ones(n, n, dtype=torch.bool).triu(1)
    return bool(torch.equal(torch.isinf(mask.cpu()) & (mask.cpu() < 0), causal)) and bool(
        torch.all(mask.cpu()[~causal] == 0)
    )


def prefix_sharing_is_exact(model: Any) -> bool:
    """Whether the text tower can run a shared token prefix once and the suffixes against its cache.

    Requires what truncation requires (causal mask, end-of-text pooling) plus blocks this module
    knows how to run by hand: open_clip's ``ResidualAttentionBlock`` with a batch-first
    ``nn.MultiheadAttention`` and no cross-attention. Anything else uses the plain path.
    """
    import torch
    from open_clip.transformer import ResidualAttentionBlock

    if not truncation_is_exact(model):
        return False
    tower = _text_tower(model)
    assert tower is not None
    transformer = tower[0].transformer
    if not getattr(transformer, "batch_first", False):
        return False
    for blk in transformer.resblocks:
        if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
            return False
        attn = blk.attn
        if (
            not isinstance(attn, torch.nn.MultiheadAttention)
            or not attn.batch_first
            or not attn._qkv_same_embed_dim
            or attn.in_proj_weight is None
            or attn.bias_k is not None
        ):
            return False
    return True


def common_prefix_lengths(tokens: Any, lengths: Any, groups: Sequence[int]) -> Any:
    """Per row, how many leading tokens it shares with every other row of its group.

    ``lengths`` are the real (unpadded) lengths. The shared prefix stops at least one token
    before the shortest row of the group ends, so every row keeps its end-of-text token (the
    pooled position) in its own suffix.
    """
    import torch

    group_t = torch.as_tensor(list(groups), device=tokens.device)
    out = torch.empty(tokens.shape[0], dtype=torch.long, device=tokens.device)
    for g in group_t.unique().tolist():
        rows = (group_t == g).nonzero().squeeze(1)
        block = tokens[rows]
        same = (block == block[:1]).all(dim=0).long().cumprod(dim=0).sum()
        out[rows] = torch.minimum(same, lengths[rows].min() - 1).clamp(min=1)
    return out


def _heads(x: Any, heads: int) -> Any:
    n, length, width = x.shape
    return x.view(n, length, heads, width // heads).transpose(1, 2)


def _qkv(blk: Any, x: Any) -> tuple[Any, Any, Any]:
    import torch.nn.functional as F

    attn = blk.attn
    q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    h = attn.num_heads
    return _heads(q, h), _heads(k, h), _heads(v, h)


def _finish_block(blk: Any, x: Any, attended: Any) -> Any:
    import torch.nn.functional as F

    n, _h, length, _d = attended.shape
    merged = attended.transpose(1, 2).reshape(n, length, x.shape[-1])
    out = F.linear(merged, blk.attn.out_proj.weight, blk.attn.out_proj.bias)
    x = x + blk.ls_1(out)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def encode_shared_prefix(
    tower: Any, pool: str, eos: int | None, tokens: Any, prefix: Any, groups: Sequence[int], pad_id: int
) -> Any:
    """Pooled, projected (not normalised) text features, computing each group's prefix once.

    ``tokens`` (B, L) are full-context rows; ``prefix[b]`` is the number of leading tokens row
    ``b`` shares with its group ``groups[b]`` (see :func:`common_prefix_lengths`). In a causal
    tower the hidden states of those tokens are the same for every row of the group, so they are
    computed once per group; each row then runs only its suffix, attending to the prefix's
    keys/values of each layer (a KV cache) and to its own earlier suffix tokens.
    """
    import torch
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool

    device = tokens.device
    context = tokens.shape[1]
    nonpad = (tokens != pad_id).long()
    lengths = (nonpad * torch.arange(1, context + 1, device=device)).max(dim=1).values
    uniq, gidx = torch.unique(torch.as_tensor(list(groups), device=device), return_inverse=True)
    # One representative row and prefix length per group.
    first = torch.zeros(len(uniq), dtype=torch.long, device=device).scatter_(
        0, gidx.flip(0), torch.arange(len(gidx) - 1, -1, -1, device=device)
    )
    plen = prefix[first]
    pmax = int(plen.max())
    prefix_tokens = tokens[first, :pmax]
    # Suffix of each row, left-aligned, and its absolute positions.
    slen = lengths - prefix
    smax = int(slen.max())
    offs = torch.arange(smax, device=device)
    src = (prefix[:, None] + offs[None, :]).clamp(max=context - 1)
    suffix = torch.where(offs[None, :] < slen[:, None], tokens.gather(1, src), pad_id)
    positions = (prefix[:, None] + offs[None, :]).clamp(max=context - 1)

    cast = tower.transformer.get_cast_dtype()
    pos_emb = tower.positional_embedding.to(cast)
    xp = tower.token_embedding(prefix_tokens).to(cast) + pos_emb[:pmax]
    xs = tower.token_embedding(suffix).to(cast) + pos_emb[positions]
    # Suffix queries see their group's real prefix tokens and their own earlier suffix tokens.
    see_prefix = torch.arange(pmax, device=device)[None, :] < prefix[:, None]  # (B, pmax)
    causal = torch.ones(smax, smax, dtype=torch.bool, device=device).tril()
    mask = torch.cat(
        [see_prefix[:, None, :].expand(-1, smax, -1), causal[None].expand(len(prefix), -1, -1)], dim=2
    )[:, None]  # (B, 1, smax, pmax + smax)
    for blk in tower.transformer.resblocks:
        qp, kp, vp = _qkv(blk, xp)
        qs, ks, vs = _qkv(blk, xs)
        xp_next = _finish_block(blk, xp, F.scaled_dot_product_attention(qp, kp, vp, is_causal=True))
        keys = torch.cat([kp[gidx], ks], dim=2)
        values = torch.cat([vp[gidx], vs], dim=2)
        xs = _finish_block(blk, xs, F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask))
        xp = xp_next
    xs = tower.ln_final(xs)
    x = text_global_pool(xs, suffix, pool, eos_token_id=eos)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def length_buckets(lengths: Sequence[int], max_rows: int, min_rows: int = 256) -> list[list[int]]:
    """Row indices in chunks of similar length, so each chunk is cut to little padding.

    Rows are taken shortest first; a chunk closes at ``max_rows``, or when the next row is longer
    and the chunk already holds ``min_rows`` (small chunks run the matrix units poorly).
    """
    order = sorted(range(len(lengths)), key=lambda j: lengths[j])
    chunks: list[list[int]] = []
    chunk: list[int] = []
    for j in order:
        if chunk and (
            len(chunk) >= max_rows
            or (lengths[j] > lengths[chunk[0]] and len(chunk) >= min(min_rows, max_rows))
        ):
            chunks.append(chunk)
            chunk = []
        chunk.append(j)
    if chunk:
        chunks.append(chunk)
    return chunks


def _pad_id(tokenizer: Any) -> int:
    inner = getattr(tokenizer, "tokenizer", None)  # HFTokenizer wraps a transformers tokenizer
    pad = getattr(inner, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def model_fingerprint(model: Any, identity: str) -> str:
    """A content hash of the model identity and every weight tensor."""
    import torch

    h = hashlib.sha256(identity.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ClipModel:
    """A loaded open_clip model with its preprocessing and tokenizer."""

    def __init__(self, settings: ScorerSettings) -> None:
        import open_clip
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.name = settings.model
        self.pretrained = settings.pretrained or ""
        self.device = torch.device(settings.device)
        self.precision = settings.precision
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.model,
            pretrained=settings.pretrained or None,
            device=self.device,
            precision=settings.precision,
        )
        model.eval()
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(settings.model)
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or model.context_length)
        self.pad_id = _pad_id(self.tokenizer)
        self.truncation_exact = truncation_is_exact(model)
        self.truncate = self.truncation_exact and settings.text_truncation == "auto"
        self.share_prefix = (
            self.truncate and settings.prefix_sharing == "on" and prefix_sharing_is_exact(model)
        )
        self.id = f"{settings.model}|{self.pretrained}|{settings.precision}"
        self.fingerprint = model_fingerprint(model, f"{self.id}|{preprocess}")
        # One tiny forward gives the embedding width for any tower type (CLIP, custom text, HF).
        with torch.inference_mode():
            probe = model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.embed_dim = int(probe.shape[-1])
        # CLIP's learned temperature; models without one (custom towers) get CLIP's initial 1/0.07.
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 1 / 0.07

    def tokenize(self, texts: Sequence[str]) -> tuple[Any, list[bool]]:
        """Tokens at full context, and per text whether it was longer than the context."""
        # One extra position reveals truncation: a non-pad token there means the text did not fit.
        tokens = self.tokenizer(list(texts), context_length=self.context_length + 1)
        too_long = (tokens[:, self.context_length] != self.pad_id).tolist()
        return tokens[:, : self.context_length], too_long

    def encode_images(self, images: Any) -> Any:
        """Image features (not normalised) of a preprocessed batch."""
        import torch

        with torch.inference_mode():
            return self.model.encode_image(images.to(self.device))

    def encode_text(self, tokens: Any) -> Any:
        """L2-normalised float32 text features of full-context tokens, cut to the batch's length."""
        import torch
        import torch.nn.functional as F
        from open_clip.transformer import text_global_pool

        with torch.inference_mode():
            tokens = tokens.to(self.device)
            if not self.truncate:
                return F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            tower = _text_tower(self.model)
            assert tower is not None
            t, pool, eos = tower
            nonpad = (tokens != self.pad_id).int()
            # Last real token + 1 over the batch (the end-of-text token is the last real one).
            length = int((nonpad * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).max())
            length = max(length, 1)
            cut = tokens[:, :length]
            cast = t.transformer.get_cast_dtype()
            x = t.token_embedding(cut).to(cast) + t.positional_embedding[:length].to(cast)
            x = t.transformer(x, attn_mask=t.attn_mask[:length, :length])
            x = t.ln_final(x)
            x = text_global_pool(x, cut, pool, eos_token_id=eos)
            proj = t.text_projection
            if proj is not None:
                x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
            return F.normalize(x.float(), dim=-1)

    def real_lengths(self, tokens: Any) -> Any:
        """Per row, the index after its last real (non-pad) token."""
        import torch

        nonpad = (tokens != self.pad_id).long()
        return (nonpad * torch.arange(1, tokens.shape[1] + 1)).max(dim=1).values

    def encode_text_shared(self, tokens: Any, prefix: Any, groups: Sequence[int]) -> Any:
        """L2-normalised float32 features, each group's common token prefix computed once."""
        import torch
        import torch.nn.functional as F

        tower = _text_tower(self.model)
        assert tower is not None and self.share_prefix
        t, pool, eos = tower
        with torch.inference_mode():
            x = encode_shared_prefix(
                t, pool, eos, tokens.to(self.device), prefix.to(self.device), groups, self.pad_id
            )
            return F.normalize(x.float(), dim=-1)

    def info(self) -> ModelInfo:
        """A description for GetModelInfo."""
        return ModelInfo(
            self.name,
            self.pretrained,
            str(self.device),
            self.precision,
            self.context_length,
            self.embed_dim,
            self.truncation_exact,
        )


class TextEmbeddingCache:
    """LRU of normalised text embeddings keyed by (model id, text), bounded in entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any | None:
        """The embedding, marking it recently used; None on a miss."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Any) -> None:
        """Store, evicting the least recently used entries beyond the bound."""
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        """Forget every embedding."""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


# ---- the engine -------------------------------------------------------------------------------
@dataclass
class _Job:
    dataset: FewShotSet
    split: str
    templates: list[str]
    filled: list[FilledTemplate | str]  # a string is the rejection reason
    per_class: bool
    ensemble: bool
    future: asyncio.Future[Evaluation]
    enqueued: float = field(default_factory=time.monotonic)

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
        self.cache = TextEmbeddingCache(settings.text_cache_size)
        self._pending: deque[_Job] = deque()
        self._pending_templates = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._seconds_per_template = 0.01  # running estimate for RetryInfo
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
        """Register a dataset and compute (or load cached) features of every split."""
        if self.model is None:
            raise NotReady("the model is still loading")
        known = self._specs.get(spec.id)
        if known is not None:
            if known == spec:
                return self.datasets[spec.id]
            raise DatasetConflict(f"dataset {spec.id!r} is already registered from another source")
        if len(self._specs) >= self.settings.max_datasets:
            raise TooManyDatasets(f"{len(self._specs)} datasets are registered, the limit (max_datasets)")
        dataset = spec.load()
        cache_dir = Path(self.settings.cache_dir) if self.settings.cache_dir else None
        import torch

        feats: dict[str, tuple[Any, Any]] = {}
        for name, split in dataset.splits.items():
            f, _ = load_or_compute(
                cache_dir,
                self.model.fingerprint,
                dataset.id,
                split,
                self.model.encode_images,
                self.model.preprocess,
                self.settings.image_batch_size,
            )
            labels = torch.tensor(split.labels, dtype=torch.long, device=self.model.device)
            feats[name] = (f.to(self.model.device), labels)
        for name, value in feats.items():
            self._features[(dataset.id, name)] = value
        dataset.ready = True
        self.datasets[dataset.id] = dataset
        self._specs[spec.id] = spec
        return dataset

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

        dataset.splits[split] = Split(split, labels_t.tolist(), lambda i: None, fingerprint)
        self._features[(dataset_id, split)] = (feats.to(self.model.device), labels_t.to(self.model.device))
        return dataset

    def model_info(self) -> ModelInfo:
        """The loaded model, or NotReady."""
        if self.model is None:
            raise NotReady("the model is still loading")
        return self.model.info()

    # -- requests (async) --
    async def evaluate(
        self, dataset: str, split: str, templates: Sequence[str], per_class: bool = False
    ) -> Evaluation:
        """Score each template on ``dataset``/``split``; invalid templates get their own error."""
        return await self._submit(dataset, split, templates, per_class, ensemble=False)

    async def evaluate_ensemble(
        self, dataset: str, split: str, templates: Sequence[str], per_class: bool = False
    ) -> Evaluation:
        """Score the ensemble of ``templates``; any invalid template rejects the request."""
        return await self._submit(dataset, split, templates, per_class, ensemble=True)

    async def _submit(
        self, dataset_id: str, split: str, templates: Sequence[str], per_class: bool, ensemble: bool
    ) -> Evaluation:
        if not self.ready:
            raise NotReady("the scorer is still loading its model and image features")
        dataset = self.datasets.get(dataset_id)
        if dataset is None:
            raise UnknownDataset(dataset_id)
        if split not in dataset.splits:
            raise UnknownSplit(dataset_id, split, sorted(dataset.splits))
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
        if self._pending_templates + len(filled) > self.settings.max_queue_templates:
            metrics.REJECTED.labels("queue_full").inc()
            retry = max(0.05, self._pending_templates * self._seconds_per_template)
            raise QueueFull(self._pending_templates, self.settings.max_queue_templates, retry)
        self._ensure_worker()
        job = _Job(
            dataset,
            split,
            list(templates),
            filled,
            per_class,
            ensemble,
            asyncio.get_running_loop().create_future(),
        )
        self._pending.append(job)
        self._pending_templates += job.size
        metrics.QUEUE_DEPTH.set(self._pending_templates)
        assert self._arrived is not None
        self._arrived.set()
        result = await job.future
        if ensemble and result.scores[0].error:
            raise BadRequest(f"ensemble templates are invalid: {result.scores[0].error}", "templates")
        return result

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="scorer-batcher")

    async def close(self) -> None:
        """Stop the batching worker; waiting requests fail with NotReady."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._pending:
            job = self._pending.popleft()
            if not job.future.done():
                job.future.set_exception(NotReady("the scorer is shutting down"))
        self._pending_templates = 0

    async def _run(self) -> None:
        """The single batching worker: coalesce queued jobs, run the torch work in a thread."""
        assert self._arrived is not None
        wait = self.settings.batch_wait_ms / 1000
        cap = self.settings.max_batch_templates
        last_batch_jobs = 0
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # Wait for company only when there is company: a lone request after a lone batch (a
            # single client, an idle server) runs at once instead of paying the wait every call.
            alone = len(self._pending) == 1 and last_batch_jobs <= 1 and not self.settings.batch_wait_alone
            deadline = self._pending[0].enqueued + (0.0 if alone else wait)
            while self._pending_templates < cap and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch: list[_Job] = []
            size = 0
            while self._pending and (not batch or size + self._pending[0].size <= cap):
                job = self._pending.popleft()
                batch.append(job)
                size += job.size
            self._pending_templates -= size
            metrics.QUEUE_DEPTH.set(self._pending_templates)
            now = time.monotonic()
            for job in batch:
                metrics.QUEUE_WAIT.observe(now - job.enqueued)
            metrics.BATCH_SIZE.observe(size)
            last_batch_jobs = len(batch)
            try:
                results = await asyncio.to_thread(self._compute, batch)
            except Exception as exc:  # a torch failure fails this batch's requests, not the worker
                log.exception("scoring batch failed")
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():  # the caller may have gone (cancelled RPC)
                    job.future.set_result(result)

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

    def _compute(self, batch: list[_Job]) -> list[Evaluation]:
        import torch

        start = time.perf_counter()
        assert self.model is not None
        scale = self.model.logit_scale
        groups = [f.texts for job in batch for f in job.filled if not isinstance(f, str)]
        embs, too_long = self._embed(groups)
        out = []
        for job in batch:
            feats, labels = self._features[(job.dataset.id, job.split)]
            num_classes = len(job.dataset.class_names)
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
            # (T, C, D) x (N, D) -> predictions (T, N); chunked to bound the logits' memory.
            n = feats.shape[0]
            chunk = max(1, int(2**26 // max(1, n * num_classes)))
            for s in range(0, len(weights), chunk):
                w = torch.stack(weights[s : s + chunk])
                logits = torch.einsum("nd,tcd->tnc", feats, w)
                hit = logits.argmax(dim=-1) == labels
                correct = hit.sum(dim=1).tolist()
                log_probs = torch.log_softmax(logits.mul_(scale), dim=-1)
                losses = (-log_probs.gather(-1, labels.expand(len(w), -1)[..., None])).mean(dim=(1, 2))
                per_class = None
                if job.per_class:
                    totals = torch.bincount(labels, minlength=num_classes).clamp(min=1)
                    per_class = [
                        (torch.bincount(labels[h], minlength=num_classes) / totals).tolist() for h in hit
                    ]
                for k, ci in enumerate(scored[s : s + chunk]):
                    r = results[ci]
                    r.correct, r.total = int(correct[k]), n
                    r.loss = float(losses[k])
                    if per_class is not None:
                        r.per_class_accuracy = [float(x) for x in per_class[k]]
            out.append(Evaluation(results, list(job.dataset.class_names), 0.0))
        seconds = time.perf_counter() - start
        size = sum(job.size for job in batch)
        metrics.COMPUTE.observe(seconds)
        metrics.TEMPLATES.inc(size)
        self.batches += 1
        # Smooth the per-template estimate used for RetryInfo on a full queue.
        self._seconds_per_template = 0.8 * self._seconds_per_template + 0.2 * seconds / max(1, size)
        for e in out:
            e.compute_seconds = seconds
        return out


__all__ = [
    "BadRequest",
    "ClipModel",
    "DatasetConflict",
    "DatasetError",
    "Evaluation",
    "ModelInfo",
    "NotReady",
    "QueueFull",
    "ScorerError",
    "ScoringEngine",
    "TemplateResult",
    "TextEmbeddingCache",
    "UnknownDataset",
    "UnknownSplit",
    "common_prefix_lengths",
    "encode_shared_prefix",
    "length_buckets",
    "prefix_sharing_is_exact",
    "truncation_is_exact",
]
