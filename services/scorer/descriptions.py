"""Class-specific descriptions: prompt sets in which every class has texts of its own (CuPL style).

A :class:`DescriptionSet` gives every class of the dataset one or more texts ("{}, a flower with
bright orange ruffled petals"), optionally wrapped in a template ("a photo of a {}."). Its head is,
per class, the mean of the texts' normalised embeddings, renormalised: CLIP's prompt ensembling,
with each class's own prompts. Texts go through the engine's batched, cached text pass like
template texts (:mod:`services.scorer.engine`).

A set that cannot be scored is rejected alone (INVALID_ARGUMENT semantics), the others of the
request are still scored: a class missing, not in the dataset or listed twice, a class with no
texts or more than :data:`MAX_TEXTS_PER_CLASS`, a blank text, a control character, a text over
:data:`MAX_TEXT_CHARS` characters or (after filling) over the tokenizer's context, a template
without a slot. Slots are filled literally (:func:`services.scorer.templates.fill`), never formatted.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.scorer.datasets import FewShotSet
from services.scorer.heads import score_heads
from services.scorer.results import Evaluation, TemplateResult
from services.scorer.templates import TemplateRejected, check_template, fill

# Texts one class may have in one set: CuPL uses up to 50 per class; more adds text work, not signal.
MAX_TEXTS_PER_CLASS = 64
# Characters of one text before tokenizing (the token limit is checked after filling the slots).
MAX_TEXT_CHARS = 1000
# Most confusions one set's score may list.
MAX_TOP_CONFUSIONS = 1000
# Class names quoted in a "missing classes" error; the count says how many there are.
_MISSING_SHOWN = 5


class SetRejected(ValueError):
    """A description set that cannot be scored; the message says why (INVALID_ARGUMENT semantics)."""


@dataclass(frozen=True)
class DescriptionSet:
    """A prompt set as a client sends it: per class its texts ("{}" = the class name), a template."""

    name: str
    classes: tuple[tuple[str, tuple[str, ...]], ...]
    template: str = ""

    @classmethod
    def of(cls, name: str, texts: Mapping[str, Sequence[str]], template: str = "") -> DescriptionSet:
        """A set from a ``{class name: texts}`` mapping."""
        return cls(name, tuple((c, tuple(t)) for c, t in texts.items()), template)

    @property
    def num_raw_texts(self) -> int:
        """Texts as sent, before checks and deduplication."""
        return sum(len(texts) for _, texts in self.classes)


@dataclass(frozen=True)
class PreparedSet:
    """A checked set: per class, in the dataset's order, the distinct texts to encode."""

    name: str
    texts: tuple[tuple[str, ...], ...]
    # Per class, the text as sent behind each filled text (for what drop_overlong reports), and
    # the bare name filled into the template (what a class whose every text is dropped gets).
    sources: tuple[dict[str, str], ...] = ()
    bare: tuple[str, ...] = ()

    @property
    def num_texts(self) -> int:
        """Distinct texts over all classes."""
        return len({t for texts in self.texts for t in texts})


def check_text(text: str) -> None:
    """Reject a blank text, one with control characters or one over :data:`MAX_TEXT_CHARS`."""
    if not text.strip():
        raise SetRejected("text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise SetRejected(f"text is longer than {MAX_TEXT_CHARS} characters")
    for ch in text:
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n":
            raise SetRejected(f"text holds the control character U+{ord(ch):04X}")


def prepare(description_set: DescriptionSet, class_names: Sequence[str]) -> PreparedSet:
    """Check ``description_set`` against the dataset's classes and fill its slots.

    Each text's own ``{}`` gets the class name, then the result goes into the template's slot
    (both literal replacements, so a class name or text holding ``{}`` is never re-filled).
    """
    template = description_set.template
    if template:
        try:
            check_template(template)
        except TemplateRejected as exc:
            raise SetRejected(f"template: {exc}") from None
    index = {name: i for i, name in enumerate(class_names)}
    by_class: dict[int, tuple[str, ...]] = {}
    raw: dict[int, dict[str, str]] = {}
    for name, texts in description_set.classes:
        i = index.get(name)
        if i is None:
            raise SetRejected(f"class {_quote(name)} is not a class of the dataset")
        if i in by_class:
            raise SetRejected(f"class {_quote(name)} is listed more than once")
        if not texts:
            raise SetRejected(f"class {_quote(name)} has no texts")
        if len(texts) > MAX_TEXTS_PER_CLASS:
            raise SetRejected(
                f"class {_quote(name)} has {len(texts)} texts, more than the {MAX_TEXTS_PER_CLASS} allowed"
            )
        filled: list[str] = []
        sources: dict[str, str] = {}
        for j, text in enumerate(texts):
            try:
                check_text(text)
            except SetRejected as exc:
                raise SetRejected(f"class {_quote(name)}, text {j}: {exc}") from None
            own = fill(text, name)
            filled.append(fill(template, own) if template else own)
            sources.setdefault(filled[-1], text)
        by_class[i] = tuple(dict.fromkeys(filled))  # a repeated text would weigh twice in the mean
        raw[i] = sources
    missing = [c for i, c in enumerate(class_names) if i not in by_class]
    if missing:
        shown = ", ".join(_quote(c) for c in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise SetRejected(f"{len(missing)} of {len(class_names)} classes have no texts: {shown}{more}")
    order = range(len(class_names))
    return PreparedSet(
        description_set.name,
        tuple(by_class[i] for i in order),
        tuple(raw[i] for i in order),
        tuple(fill(template, c) if template else c for c in class_names),
    )


def _quote(text: str, limit: int = 60) -> str:
    """A client's text for an error message, cut so the message stays short."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


@dataclass
class DescriptionJob:
    """One EvaluateDescriptions request as the engine's batcher queues it."""

    dataset: FewShotSet
    split: str
    names: list[str]
    sets: list[PreparedSet | str]  # a string is the rejection reason
    per_class: bool
    top_confusions: int
    drop_overlong: bool = False  # drop over-long texts from their class instead of the set

    @property
    def size(self) -> int:
        """Queue units: templates' worth of texts (one template is one text per class)."""
        texts = sum(len(t) for s in self.sets if isinstance(s, PreparedSet) for t in s.texts)
        return max(1, math.ceil(texts / max(1, len(self.dataset.class_names))))

    def groups(self) -> list[tuple[str, ...]]:
        """The texts to encode, one group per (set, class): texts of a group share their prefix.

        With ``drop_overlong``, also each set's bare class names (a class may fall back to its own).
        """
        groups = [texts for s in self.sets if isinstance(s, PreparedSet) for texts in s.texts]
        if self.drop_overlong:
            groups += [s.bare for s in self.sets if isinstance(s, PreparedSet)]
        return groups


def make_job(
    dataset: FewShotSet,
    split: str,
    sets: Sequence[DescriptionSet],
    per_class: bool,
    top_confusions: int,
    drop_overlong: bool = False,
) -> DescriptionJob:
    """The job of a request: each set prepared, or the reason it was rejected."""
    prepared: list[PreparedSet | str] = []
    for s in sets:
        try:
            prepared.append(prepare(s, dataset.class_names))
        except SetRejected as exc:
            prepared.append(str(exc))
    return DescriptionJob(
        dataset, split, [s.name for s in sets], prepared, per_class, top_confusions, drop_overlong
    )


def class_weights(prepared: PreparedSet, embeddings: Mapping[str, Any]) -> Any:
    """The (C, D) head: per class the mean of its normalised text embeddings, renormalised."""
    import torch

    means = [torch.stack([embeddings[t] for t in texts]).mean(dim=0) for texts in prepared.texts]
    return torch.nn.functional.normalize(torch.stack(means), dim=-1)


def _without_overlong(
    s: PreparedSet, too_long: Mapping[str, str]
) -> tuple[PreparedSet, list[tuple[int, list[str]]]]:
    """``s`` without its over-long texts (a class left with none: its bare name), and per class
    the texts as sent that were dropped."""
    kept: list[tuple[str, ...]] = []
    dropped: list[tuple[int, list[str]]] = []
    for c, texts in enumerate(s.texts):
        fits = tuple(t for t in texts if t not in too_long)
        gone = [s.sources[c][t] for t in texts if t in too_long]
        if gone:
            dropped.append((c, gone))
        kept.append(fits or (s.bare[c],))
    return PreparedSet(s.name, tuple(kept), s.sources, s.bare), dropped


def score_job(
    job: DescriptionJob,
    embeddings: Mapping[str, Any],
    too_long: Mapping[str, str],
    feats: Any,
    labels: Any,
    scale: float,
) -> Evaluation:
    """Every set of ``job`` scored on the split's features, or its own error."""
    class_names = job.dataset.class_names
    results: list[TemplateResult] = []
    heads: list[Any] = []
    scored: list[TemplateResult] = []
    for name, s in zip(job.names, job.sets, strict=True):
        if isinstance(s, str):
            results.append(TemplateResult(name, error=s))
            continue
        dropped: list[tuple[int, list[str]]] = []
        if job.drop_overlong:
            s, dropped = _without_overlong(s, too_long)
        over = next(((c, t) for c, texts in enumerate(s.texts) for t in texts if t in too_long), None)
        if over is not None:
            c, text = over
            results.append(
                TemplateResult(
                    name, error=f"class {_quote(class_names[c])}: text {_quote(text)} is {too_long[text]}"
                )
            )
            continue
        result = TemplateResult(name, num_texts=s.num_texts, dropped=dropped)
        results.append(result)
        heads.append(class_weights(s, embeddings))
        scored.append(result)
    score_heads(
        feats,
        labels,
        heads,
        scored,
        scale,
        per_class=job.per_class,
        top_confusions=job.top_confusions,
    )
    return Evaluation(results, list(class_names), 0.0)
