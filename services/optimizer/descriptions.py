"""The ``describe`` and ``refine`` strategies: class-specific descriptions written by the LLM (CuPL style).

``describe``: the LLM writes k short visual descriptions for each class, several classes per call:
as many as fit the endpoint's context window, the completion cap and ``max_classes_per_call``.
``refine``: the weakest classes (lowest accuracy, then most confused) are shown with their
current descriptions and the classes they are confused with; only those are rewritten.

Replies are adversarial input (:func:`parse_descriptions`): a class name must match one asked
for in that call (case, spaces and underscores aside), descriptions are cleaned, capped in length,
stripped of markup debris, deduplicated and cut to k. A class a reply left out (or described
with nothing usable) is asked again in a later call, up to ``max_llm_calls``; what is still
missing then is reported, never invented. Each description carries ``{}`` where the class name
goes (the name the LLM wrote becomes the slot; one without it gets ``"{}, "`` in front), as the
scorer's EvaluateDescriptions fills it. :meth:`DescriptionWriter.plan` walks the same calls
without the LLM, for a dry run's count of calls and tokens. No gRPC here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptclimb.common.vocabulary import (
    DEFAULT_DESCRIPTIONS_PER_CLASS,
    DEFAULT_WEAKEST_K,
    MAX_DESCRIPTION_CLASSES,
    MAX_DESCRIPTIONS_PER_CLASS,
    DescriptionStrategy,
)
from services.optimizer import metrics
from services.optimizer.context import ContextWindow, TokenCounter, estimate_tokens
from services.optimizer.core import CompletionBackend
from services.optimizer.domain import ChatMessage, ContextTooLong, InvalidRequest, Usage
from services.optimizer.parsing import (
    _CONTROL,
    _FENCE,
    _MARKUP,
    _WHITESPACE,
    DUPLICATE,
    EMPTY,
    MARKUP,
    SLOT,
    TOO_LONG,
    RejectedCandidate,
    decode_json_at,
    dedupe_key,
    normalise_slots,
    strip_wrapping,
)
from services.optimizer.strategies import percent

log = logging.getLogger(__name__)

DEFAULT_MAX_CLASSES_PER_CALL = 8
MAX_LLM_CALLS = 500
# Longest description kept (after the class name became "{}"): "short" means a dozen words.
MAX_DESCRIPTION_CHARS = 150
# Confusions shown per refined class.
MAX_CONFUSIONS_SHOWN = 3

# Reasons beyond parsing.py's, as documented in optimizer.proto's ProposeDescriptionsResponse.
UNKNOWN_CLASS = "unknown_class"
SURPLUS = "surplus"

# Completion room one class takes in a reply: k descriptions of ~12 words (JSON quotes and commas
# included) plus its entry's name and keys; used to fit classes under the completion cap.
TOKENS_PER_DESCRIPTION = 24
TOKENS_PER_CLASS_ENTRY = 16
TOKENS_REPLY_OVERHEAD = 16

SYSTEM_PROMPT = (
    "You describe what things look like, for CLIP, a vision-language model that classifies an image "
    "by comparing it with short texts about each class. Good descriptions name visible features: "
    "shape, colour, texture, parts, typical surroundings. Answer only with JSON."
)

# A description as the json_object dialect's grammar can enforce it: short plain text, no braces.
DESCRIPTION_PATTERN = r"^[a-zA-Z0-9 ,.'!?;:()-]{1,80}$"


@dataclass(frozen=True)
class ScoredClass:
    """A class with its current descriptions and its accuracy with them."""

    name: str
    descriptions: tuple[str, ...]
    accuracy: float


@dataclass
class DescriptionRequest:
    """Everything one description proposal needs; nothing is kept between requests."""

    strategy: DescriptionStrategy
    class_names: list[str] = field(default_factory=list)  # describe: the classes to write for
    descriptions_per_class: int = DEFAULT_DESCRIPTIONS_PER_CLASS
    task_description: str = ""
    scored: list[ScoredClass] = field(default_factory=list)  # refine: every class, scored
    confusions: list[tuple[str, str, int]] = field(default_factory=list)  # (true, predicted, count)
    weakest_k: int = DEFAULT_WEAKEST_K
    max_classes_per_call: int = DEFAULT_MAX_CLASSES_PER_CALL
    max_llm_calls: int | None = None
    temperature: float | None = None
    seed: int | None = None


@dataclass
class DescriptionProposal:
    """Descriptions per class (in the order asked), the classes still missing, and the cost."""

    descriptions: dict[str, list[str]]
    missing: list[str]
    rejected: list[RejectedCandidate]
    usage: Usage
    model: str
    latency_seconds: float
    structured: bool


def validate(request: DescriptionRequest) -> None:
    """Raise :class:`InvalidRequest` for a request no call can answer."""
    k = request.descriptions_per_class
    if not 1 <= k <= MAX_DESCRIPTIONS_PER_CLASS:
        raise InvalidRequest(
            "descriptions_per_class",
            f"descriptions_per_class must be between 1 and {MAX_DESCRIPTIONS_PER_CLASS}, got {k}",
        )
    if not 1 <= request.max_classes_per_call <= MAX_DESCRIPTION_CLASSES:
        raise InvalidRequest(
            "max_classes_per_call", f"max_classes_per_call must be between 1 and {MAX_DESCRIPTION_CLASSES}"
        )
    if request.max_llm_calls is not None and not 1 <= request.max_llm_calls <= MAX_LLM_CALLS:
        raise InvalidRequest("max_llm_calls", f"max_llm_calls must be between 1 and {MAX_LLM_CALLS}")
    if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
        raise InvalidRequest("temperature", f"temperature must be in [0, 2], got {request.temperature}")
    names = (
        request.class_names
        if request.strategy is DescriptionStrategy.DESCRIBE
        else [s.name for s in request.scored]
    )
    what = "class_names" if request.strategy is DescriptionStrategy.DESCRIBE else "scored"
    if not names:
        raise InvalidRequest(what, f"{what} must not be empty")
    if len(names) > MAX_DESCRIPTION_CLASSES:
        raise InvalidRequest(what, f"{what} holds {len(names)} classes, at most {MAX_DESCRIPTION_CLASSES}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name.strip() or _CONTROL.search(name) or len(name) > MAX_DESCRIPTION_CHARS:
            raise InvalidRequest(
                f"{what}[{i}]",
                "a class name must be non-blank printable text of at most "
                f"{MAX_DESCRIPTION_CHARS} characters",
            )
        if class_key(name) in seen:
            raise InvalidRequest(f"{what}[{i}]", f"class {name[:60]!r} is listed more than once")
        seen.add(class_key(name))
    if request.strategy is DescriptionStrategy.REFINE:
        if not 1 <= request.weakest_k <= MAX_DESCRIPTION_CLASSES:
            raise InvalidRequest("weakest_k", f"weakest_k must be between 1 and {MAX_DESCRIPTION_CLASSES}")
        for i, scored in enumerate(request.scored):
            if not 0.0 <= scored.accuracy <= 1.0:  # `not <=` also catches NaN
                raise InvalidRequest(
                    f"scored[{i}].accuracy", f"accuracy must be in [0, 1], got {scored.accuracy}"
                )
        known = {class_key(s.name) for s in request.scored}
        for i, (true, predicted, count) in enumerate(request.confusions):
            if class_key(true) not in known or class_key(predicted) not in known or count < 0:
                raise InvalidRequest(
                    f"confusions[{i}]", "a confusion must name two scored classes and a count >= 0"
                )


# --- parsing -------------------------------------------------------------------------------------

_LABEL_KEYS = ("class", "class_name", "classname", "name", "label", "category")
_TEXT_KEYS = ("descriptions", "description", "texts", "text", "features")
_WRAPPER_KEYS = ("classes", "descriptions", "items", "results", "answer", "data")
# "Class: marigold", "Class 3 - marigold"
_CLASS_PREFIX = re.compile(r"^(?:class|category|label)\s*\d{0,3}\s*[:.\-–—]\s*", re.IGNORECASE)
_HEADING = re.compile(r"^\s*(?:#{1,6}\s*)?(.+?)\s*:?\s*$")
_SEPARATOR = re.compile(r"^\s*(?:[-=*_#`~]{3,}|#+)\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•·▪–—]|\(?\d{1,3}[.):\]])\s+")


def class_key(name: str) -> str:
    """How class names are matched: case, outer quotes and markdown, spaces and underscores aside."""
    text = strip_wrapping(name).strip().rstrip(":").strip()
    text = _CLASS_PREFIX.sub("", text)
    text = strip_wrapping(text).strip().strip("\"'“”‘’`*_").strip()
    return _WHITESPACE.sub(" ", text.replace("_", " ")).casefold()


@dataclass
class ParsedDescriptions:
    """The descriptions accepted from one reply, per class asked, and the candidates rejected."""

    descriptions: dict[str, list[str]] = field(default_factory=dict)
    rejected: list[RejectedCandidate] = field(default_factory=list)


def _texts(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _pairs_from_json(value: Any) -> list[tuple[str, list[str]]] | None:
    """(class label, texts) pairs in a parsed JSON value, or None when it holds none."""
    if isinstance(value, list):
        pairs: list[tuple[str, list[str]]] = []
        for item in value:
            if isinstance(item, dict):
                label = next((item[k] for k in _LABEL_KEYS if isinstance(item.get(k), str)), None)
                texts = next((t for k in _TEXT_KEYS if (t := _texts(item.get(k))) is not None), None)
                if label is not None and texts is not None:
                    pairs.append((label, texts))
                elif label is None and len(item) == 1:  # [{"marigold": [...]}]
                    pairs += _pairs_from_json(item) or []
        return pairs
    if isinstance(value, dict):
        for key in _WRAPPER_KEYS:
            inner = value.get(key)
            if isinstance(inner, (list, dict)) and _texts(inner) is None:
                found = _pairs_from_json(inner)
                if found is not None:
                    return found
        mapped = [(k, t) for k, v in value.items() if (t := _texts(v)) is not None]
        return mapped or None
    return None


def _json_pairs(body: str) -> list[tuple[str, list[str]]] | None:
    """Pairs from the first JSON object or array in ``body`` that holds any, else None."""
    for start in (i for i, ch in enumerate(body) if ch in "{["):
        if (decoded := decode_json_at(body, start)) is None:
            continue
        try:
            found = _pairs_from_json(decoded[0])
        except RecursionError:  # wrappers nested hundreds deep hold no class worth the stack
            continue
        if found:
            return found
    return None


def _text_pairs(body: str, asked: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """Pairs from plain text: "name: d1; d2" lines, or a heading line per class with items under it."""
    pairs: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    for line in body.splitlines():
        if not line.strip() or _SEPARATOR.match(line):
            continue
        heading = _HEADING.match(line)
        if heading and not _LIST_ITEM.match(line) and class_key(heading.group(1)) in asked:
            current = []
            pairs.append((heading.group(1), current))
            continue
        label, sep, rest = line.partition(":")
        if sep and class_key(label) in asked and rest.strip():
            pairs.append((label, [t for t in re.split(r"\s*;\s*", rest) if t.strip()]))
            current = None
            continue
        if current is not None:
            current.append(line)
    return pairs


def _slotted(text: str, class_name: str) -> str:
    """``text`` with the class name (or a slot spelling) as ``{}``; ``"{}, "`` in front when it has none."""
    text, slots = normalise_slots(text)
    variants = {class_name, class_name.replace("_", " ")}
    for variant in sorted(variants, key=len, reverse=True):
        pattern = re.compile(r"(?<!\w)" + re.escape(variant) + r"(?!\w)", re.IGNORECASE)
        text, found = pattern.subn(SLOT, text)
        slots += found
    return text if slots else f"{SLOT}, {text}"


def parse_descriptions(
    reply: str | None,
    asked: Sequence[str],
    k: int,
    *,
    known: Mapping[str, Sequence[str]] | None = None,
    shown: str = "",
    max_chars: int = MAX_DESCRIPTION_CHARS,
) -> ParsedDescriptions:
    """Descriptions per class of ``asked`` from one LLM reply; at most ``k`` per class.

    ``known``: descriptions a class has already (a rewrite repeating one is a ``duplicate``).
    ``shown``: the prompt; a text copied from it (an accuracy line echoed back) is a ``duplicate``.
    A class the reply does not describe validly is simply absent from the result.
    """
    result = ParsedDescriptions()
    if reply is None or not reply.strip():
        result.rejected.append(RejectedCandidate("", EMPTY))
        return result
    by_key = {class_key(name): name for name in asked}
    fenced = _FENCE.findall(reply)
    pairs: list[tuple[str, list[str]]] = []
    for body in fenced or [reply]:
        found = _json_pairs(body)
        pairs += found if found is not None else _text_pairs(body, by_key)
    echo = _WHITESPACE.sub(" ", shown).casefold()
    seen: dict[str, set[str]] = {name: {dedupe_key(d) for d in (known or {}).get(name, ())} for name in asked}
    for label, texts in pairs:
        name = by_key.get(class_key(label))
        if name is None:
            result.rejected.append(RejectedCandidate(_short(label, max_chars), UNKNOWN_CLASS))
            continue
        accepted = result.descriptions.setdefault(name, [])
        for raw in texts:
            text = _WHITESPACE.sub(" ", _CONTROL.sub(" ", strip_wrapping(raw))).strip()
            text = text.lstrip(" .,;:-–—…")  # a weak model's leading debris ("... -.a red bloom")
            if not text:
                continue
            description = _slotted(text, name)
            rest = description.replace(SLOT, " ").strip(" ,.;:!?-")
            if not re.search(r"\w", rest):
                result.rejected.append(RejectedCandidate(_short(text, max_chars), EMPTY))
            elif len(description) > max_chars:
                result.rejected.append(RejectedCandidate(_short(text, max_chars), TOO_LONG))
            elif _MARKUP.search(description.replace(SLOT, " ")):
                result.rejected.append(RejectedCandidate(_short(text, max_chars), MARKUP))
            elif dedupe_key(description) in seen[name] or (len(text) > 12 and text.casefold() in echo):
                result.rejected.append(RejectedCandidate(description, DUPLICATE))
            elif len(accepted) >= k:
                result.rejected.append(RejectedCandidate(description, SURPLUS))
            else:
                seen[name].add(dedupe_key(description))
                accepted.append(description)
    result.descriptions = {n: result.descriptions[n] for n in asked if result.descriptions.get(n)}
    if not pairs:
        result.rejected.append(RejectedCandidate(_short(reply.strip(), max_chars), EMPTY))
    return result


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


# --- wording -------------------------------------------------------------------------------------


def weakest(request: DescriptionRequest) -> list[ScoredClass]:
    """The ``weakest_k`` classes to rewrite: lowest accuracy, then the most confused, then in order.

    A class every image of which was right is never rewritten.
    """
    confused: dict[str, int] = {}
    for true, _predicted, count in request.confusions:
        confused[class_key(true)] = confused.get(class_key(true), 0) + count
    order = sorted(
        ((i, s) for i, s in enumerate(request.scored) if s.accuracy < 1.0),
        key=lambda e: (e[1].accuracy, -confused.get(class_key(e[1].name), 0), e[0]),
    )
    return [s for _, s in order[: request.weakest_k]]


def _task_line(request: DescriptionRequest) -> list[str]:
    task = request.task_description.strip()
    return [f"Task: classify {task}.", ""] if task else []


def _answer_format(k: int) -> str:
    return (
        'Answer with a JSON object only, of the form {"classes": [{"class": "<the class name exactly as '
        f'listed>", "descriptions": ["...", ...]}}]}}, one entry per listed class, each with {k} '
        "descriptions."
    )


def _noun(k: int) -> str:
    return "description" if k == 1 else f"{k} descriptions"


def describe_messages(
    request: DescriptionRequest, classes: Sequence[str], asked_before: Iterable[str] = ()
) -> list[ChatMessage]:
    """System message and one user turn asking for k descriptions of each of ``classes``."""
    k = request.descriptions_per_class
    lines = _task_line(request)
    lines += [
        f"For each class below, write {_noun(k)} of what a photo of it shows, each at most 12 words, "
        "each naming the class.",
        "",
        "Classes:",
        *(f"- {name}" for name in classes),
    ]
    again = [c for c in classes if c in set(asked_before)]
    if again:
        lines += ["", f"Earlier answers left out {', '.join(again)}: describe every listed class."]
    lines += ["", _answer_format(k)]
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


def refine_messages(
    request: DescriptionRequest, classes: Sequence[str], asked_before: Iterable[str] = ()
) -> list[ChatMessage]:
    """System message and one user turn: each weak class, its accuracy, confusions and descriptions."""
    k = request.descriptions_per_class
    scored = {s.name: s for s in request.scored}
    names = {class_key(s.name): s.name for s in request.scored}
    lines = _task_line(request)
    lines += [
        "CLIP often mistakes the classes below for others with their current descriptions. For each, "
        f"write {_noun(k)} that tell it apart from the classes it is mistaken for, each at most 12 "
        "words, each naming the class.",
        "",
    ]
    for name in classes:
        s = scored[name]
        confusions = sorted(
            (
                (names[class_key(p)], n)
                for t, p, n in request.confusions
                if class_key(t) == class_key(name) and n
            ),
            key=lambda c: -c[1],
        )[:MAX_CONFUSIONS_SHOWN]
        mistaken = ", ".join(f"{p} ({n} {'image' if n == 1 else 'images'})" for p, n in confusions)
        lines.append(
            f"{name}: {percent(s.accuracy)} right" + (f", mistaken for {mistaken}" if mistaken else "")
        )
        lines += [f'  current: "{d.replace(SLOT, name)}"' for d in s.descriptions]
    again = [c for c in classes if c in set(asked_before)]
    if again:
        lines += ["", f"Earlier answers left out {', '.join(again)}: rewrite every listed class."]
    lines += ["", _answer_format(k)]
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


def response_formats(classes: Sequence[str], k: int) -> dict[str, dict[str, Any]]:
    """The structured-output dialects (as :data:`~.backend.RESPONSE_FORMATS`) for one call's reply."""
    entry: dict[str, Any] = {
        "type": "object",
        "properties": {
            "class": {"type": "string", "enum": list(classes)},
            "descriptions": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["class", "descriptions"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"classes": {"type": "array", "items": entry}},
        "required": ["classes"],
        "additionalProperties": False,
    }
    # The grammar dialect also bounds the counts and the text, which keeps a small model on format.
    bounded_entry = {
        **entry,
        "properties": {
            "class": entry["properties"]["class"],
            "descriptions": {
                "type": "array",
                "minItems": 1,
                "maxItems": k,
                "items": {"type": "string", "pattern": DESCRIPTION_PATTERN},
            },
        },
    }
    bounded = {
        **schema,
        "properties": {
            "classes": {"type": "array", "minItems": 1, "maxItems": len(classes), "items": bounded_entry}
        },
    }
    return {
        "json_schema": {
            "type": "json_schema",
            "json_schema": {"name": "descriptions", "strict": True, "schema": schema},
        },
        "json_object": {"type": "json_object", "schema": bounded},
    }


# --- the writer ----------------------------------------------------------------------------------


def completion_tokens_per_class(name: str, k: int) -> int:
    """Reply room one class takes (see :data:`TOKENS_PER_DESCRIPTION`)."""
    return k * TOKENS_PER_DESCRIPTION + TOKENS_PER_CLASS_ENTRY + math.ceil(len(name) / 2.5)


def reply_room(classes: Sequence[str], k: int) -> int:
    """Completion tokens one call's reply is given room for: its classes and the JSON around them."""
    return TOKENS_REPLY_OVERHEAD + sum(completion_tokens_per_class(c, k) for c in classes)


@dataclass(frozen=True)
class DescriptionPlan:
    """What a request would take, no LLM asked: the calls, their tokens and the model.

    ``llm_calls`` and the tokens are for replies that describe every class they are asked;
    ``max_llm_calls`` is what the request may spend asking left-out classes again. When the calls
    run out first, ``sum(classes_per_call)`` is below the classes the request asks for.
    """

    llm_calls: int
    max_llm_calls: int
    prompt_tokens: int
    completion_tokens: int  # the reply room reserved: at most this many
    model: str
    classes_per_call: tuple[int, ...]


# DescriptionWriter._fitted: (build, request, classes, asked before) -> (classes, messages, count)
_Fit = Callable[
    [Any, "DescriptionRequest", list[str], set[str]], Awaitable[tuple[list[str], list[ChatMessage], int]]
]


@dataclass(frozen=True)
class _Call:
    """One LLM call a request takes: the classes it asks, its messages and their count."""

    classes: list[str]
    messages: list[ChatMessage]
    counted: int  # by the writer's counter, where it fitted the messages to a window; else 0
    seed: int | None


class _Batches:
    """The calls of one request, in order, as the replies come back.

    The one loop both :meth:`DescriptionWriter.propose` and :meth:`DescriptionWriter.plan` run:
    up to ``cap`` of the classes still pending per call, fitted to the prompt budget; a class a
    reply left out comes again, until the calls (the request's max_llm_calls, else twice the calls
    the classes need at first) run out. The default counts the prompt budget too: a call fitted to
    fewer classes than the cap allows adds twice the calls its left-over classes need (once per
    class, at most MAX_LLM_CALLS in all), so complete replies always describe every class.
    """

    def __init__(self, fit: _Fit, request: DescriptionRequest, todo: list[str], cap: int) -> None:
        self.fit = fit
        self.request = request
        self.build = refine_messages if request.strategy is DescriptionStrategy.REFINE else describe_messages
        self.todo = todo
        self.pending = list(todo)
        self.cap = cap
        self.fixed = bool(request.max_llm_calls)  # the caller's bound, never extended
        self.max_llm_calls = request.max_llm_calls or 2 * math.ceil(len(todo) / cap)
        self.calls_left = self.max_llm_calls
        self.asked: set[str] = set()
        self.split_off: set[str] = set()  # classes the prompt budget pushed to a later call (counted once)
        self.calls = 0

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> _Call:
        if not self.pending or self.calls_left <= 0:
            raise StopAsyncIteration
        self.calls_left -= 1
        classes = self.pending[: self.cap]
        batch, messages, counted = await self.fit(self.build, self.request, classes, self.asked)
        # The prompt budget, not the cap, split the call: its left-over classes need calls of their
        # own, counted once per class (a class split off again, its reply still missing, adds none:
        # else replies that never describe it would extend the bound forever).
        left_over = [c for c in classes[len(batch) :] if c not in self.split_off]
        if not self.fixed and left_over:
            self.split_off.update(left_over)
            extra = max(
                0, min(2 * math.ceil(len(left_over) / len(batch)), MAX_LLM_CALLS - self.max_llm_calls)
            )
            self.max_llm_calls += extra
            self.calls_left += extra
        seed = None if self.request.seed is None else self.request.seed + self.calls
        self.calls += 1
        return _Call(batch, messages, counted, seed)

    def refused(self, call: _Call) -> None:
        """The endpoint refused the call's length: fewer classes per call."""
        self.cap = max(1, len(call.classes) // 2)

    def answered(self, call: _Call, described: Collection[str], *, cut: bool) -> None:
        """The call's reply described ``described``; ``cut``: it ended for lack of room."""
        self.asked.update(call.classes)
        if cut and len(described) < len(call.classes):
            self.cap = max(1, len(call.classes) // 2)  # the reply ran out of room: fewer classes per call
        self.pending = [c for c in self.pending if c not in described]


class DescriptionWriter:
    """Runs ``describe`` and ``refine`` requests against one LLM backend; stateless between calls."""

    def __init__(
        self,
        backend: CompletionBackend,
        *,
        default_temperature: float = 1.0,
        window: ContextWindow | None = None,
        counter: TokenCounter | None = None,
        model: str = "",
    ) -> None:
        self.backend = backend
        self.default_temperature = default_temperature
        self.window = window  # None: every call holds max_classes_per_call classes
        self.counter = counter
        self.model = model  # the model the backend is configured to ask, for plans

    async def propose(self, request: DescriptionRequest) -> DescriptionProposal:
        """Descriptions for every class asked (describe) or for the weakest ones (refine).

        Raises :class:`~.domain.InvalidRequest` for a bad request and the backend's
        :class:`~.domain.OptimizerError` subclasses when the LLM cannot answer (the request is
        then answered by nothing: a caller asks again, as for ProposePrompts).
        """
        batches = await self._batches(request)
        if batches is None:  # refine with every class already right: nothing to rewrite, no call
            return DescriptionProposal({}, [], [], Usage(), "", 0.0, False)
        refine = request.strategy is DescriptionStrategy.REFINE
        known = {s.name: s.descriptions for s in request.scored} if refine else {}
        k = request.descriptions_per_class
        temperature = self.default_temperature if request.temperature is None else request.temperature
        out: dict[str, list[str]] = {}
        rejected: list[RejectedCandidate] = []
        usage = Usage()
        model, latency, structured = "", 0.0, True
        async for call in batches:
            try:
                completion = await self.backend.complete(
                    call.messages,
                    temperature=temperature,
                    n_templates=len(call.classes) * k,
                    seed=call.seed,
                    formats=response_formats(call.classes, k),
                )
            except ContextTooLong as refused:
                if self.window is None:
                    raise
                self.window.learn(refused.limit, refused.requested, sent=call.counted)
                metrics.CONTEXT_RETRIES.inc()
                batches.refused(call)
                continue
            usage.llm_calls += completion.llm_calls
            usage.prompt_tokens += completion.prompt_tokens
            usage.completion_tokens += completion.completion_tokens
            model, latency = completion.model or model, latency + completion.latency_seconds
            structured = structured and completion.structured
            parsed = parse_descriptions(
                completion.text, call.classes, k, known=known, shown=call.messages[-1].content
            )
            out.update(parsed.descriptions)
            rejected += parsed.rejected
            batches.answered(call, parsed.descriptions, cut=completion.finish_reason == "length")
        todo, pending = batches.todo, batches.pending
        metrics.record_proposals(sum(len(d) for d in out.values()), [r.reason for r in rejected])
        log.info(
            "described",
            extra={
                "strategy": request.strategy.value,
                "classes": len(todo),
                "described": len(out),
                "missing": len(pending),
                "llm_calls": usage.llm_calls,
            },
        )
        return DescriptionProposal(
            descriptions={c: out[c] for c in todo if c in out},
            missing=pending,
            rejected=rejected,
            usage=usage,
            model=model,
            latency_seconds=latency,
            structured=structured and usage.llm_calls > 0,
        )

    async def plan(self, request: DescriptionRequest) -> DescriptionPlan:
        """What :meth:`propose` would take for ``request`` if every reply were complete; no LLM call.

        The calls are :meth:`propose`'s own batches; each call's prompt is counted as propose counts
        it (the writer's counter, else :func:`~.context.estimate_tokens`, as the context budget
        estimates), its completion as the reply room reserved (:func:`reply_room`).
        Raises :class:`~.domain.InvalidRequest` for a bad request, as :meth:`propose` does.
        """
        batches = await self._batches(request)
        if batches is None:
            return DescriptionPlan(0, 0, 0, 0, self.model, ())
        sizes: list[int] = []
        prompt_tokens = completion_tokens = 0
        async for call in batches:
            sizes.append(len(call.classes))
            fitted = self.window is not None and self.counter is not None
            prompt_tokens += call.counted if fitted else await self._count(call.messages)
            completion_tokens += reply_room(call.classes, request.descriptions_per_class)
            batches.answered(call, call.classes, cut=False)
        return DescriptionPlan(
            llm_calls=len(sizes),
            max_llm_calls=batches.max_llm_calls,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=self.model,
            classes_per_call=tuple(sizes),
        )

    async def _batches(self, request: DescriptionRequest) -> _Batches | None:
        """The calls ``request`` takes (validated; the window known), or None when it asks nothing."""
        validate(request)
        refine = request.strategy is DescriptionStrategy.REFINE
        todo = [s.name for s in weakest(request)] if refine else list(request.class_names)
        if not todo:
            return None
        if self.window is not None:
            await self.window.ensure_known()
        cap = min(request.max_classes_per_call, self._completion_fit(todo, request.descriptions_per_class))
        return _Batches(self._fitted, request, todo, cap)

    async def _count(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of ``messages`` by the writer's counter, else the context budget's estimate."""
        return await self.counter.count(messages) if self.counter is not None else estimate_tokens(messages)

    def _completion_fit(self, classes: Sequence[str], k: int) -> int:
        """Classes whose replies fit the completion cap together (at least one)."""
        if self.window is None or not classes:
            return MAX_DESCRIPTION_CLASSES
        per_class = max(completion_tokens_per_class(c, k) for c in classes)
        return max(1, (self.window.completion_tokens - TOKENS_REPLY_OVERHEAD) // per_class)

    async def _fitted(
        self,
        build: Any,
        request: DescriptionRequest,
        batch: list[str],
        asked: set[str],
    ) -> tuple[list[str], list[ChatMessage], int]:
        """The largest front part of ``batch`` whose messages fit the prompt budget (at least one
        class), its messages and their token count (0 without a window)."""
        messages = build(request, batch, asked)
        if self.window is None or self.counter is None:
            return batch, messages, 0
        budget = self.window.prompt_budget
        counted = await self.counter.count(messages)
        while len(batch) > 1 and counted > budget:
            batch = batch[: max(1, len(batch) // 2)]
            messages = build(request, batch, asked)
            counted = await self.counter.count(messages)
        return batch, messages, counted
