"""Turning an LLM reply into candidate templates: the reply is adversarial input.

A chat model may answer chatty, numbered, quoted, as JSON (bare or in a code fence), in markdown,
or not at all. :func:`parse_reply` extracts every candidate line or JSON string, normalises the
class-name slot to ``{}`` and keeps a candidate only when it

- has exactly one slot (``multiple_slots``: a class name written twice pulls the text embedding
  towards the name and away from the context the search is trying to tune, and the paper's
  templates all have one slot, so such candidates are dropped rather than guessed at),
- is at most ``max_chars`` characters long after normalisation (``too_long``),
- is new: not in the request's history and not earlier in the same reply (``duplicate``),
- holds no leftover markup or code around its slot (``markup``): braces, square brackets or a
  JSON ``"key":`` pair outside ``{}``, a call like ``.json(``, an ``=`` or an HTML tag mean the
  text is debris of broken JSON, code or markup, not a sentence (a weak model's half-written
  ``{"templates": ["{}" ,"…`` or ``{}.json(new JSON)`` otherwise scores like any template, and
  on a 1-shot split can win).

Everything else comes back as a :class:`RejectedCandidate` with its reason, so a weak model's
failure mode is visible on the dashboards instead of silently shrinking the proposals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SLOT = "{}"

# Reasons, as documented in optimizer.proto's RejectedCandidate.
EMPTY = "empty"
NO_SLOT = "no_slot"
MULTIPLE_SLOTS = "multiple_slots"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
MARKUP = "markup"

DEFAULT_MAX_CHARS = 200

# Words a model uses for the class-name placeholder, in any case: {class}, <classname>, [CLASS]...
_SLOT_WORDS = r"(?:class[ _-]?name|class|label|category|cls|object[ _-]?name|name|0)"
_SLOT_PATTERN = re.compile(
    r"\{\{\s*" + _SLOT_WORDS + r"?\s*\}\}"  # {{class}} / {{}}: brace-escaping models
    r"|\{\s*" + _SLOT_WORDS + r"?\s*\}"  # {} {class} {classname} {class_name} {label} {0}
    r"|<\s*" + _SLOT_WORDS + r"\s*>"  # <class> <classname>
    r"|\[\s*" + _SLOT_WORDS + r"\s*\]",  # [CLASS] [class] [label]
    re.IGNORECASE,
)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
# "1.", "1)", "(1)", "#1:", "-", "*", "•", "Template 3:", "Option A:", "- [ ]"...
_LIST_MARKER = re.compile(
    r"^\s*(?:"
    r"[-*+•·▪–—]\s+(?:\[[ xX]\]\s+)?"
    r"|\(?\d{1,3}[.):\]]\s*"
    r"|#\s*\d{1,3}[.):]?\s*"
    r"|(?:new\s+)?(?:template|prompt|option|candidate)\s*#?\s*\w{0,3}\s*(?::|\.|\)|\s[-–—])\s*"
    r")",
    re.IGNORECASE,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`", "„": "“"}
_MARKDOWN_EMPHASIS = re.compile(r"(\*\*|__|\*|_)(.+?)\1")
# A quoted template followed by commentary: '"a photo of a {}." - adds context'.
_LEADING_QUOTED = re.compile(r'^(["“`])(.+?)(["”`])(?=\s*(?:[-–—:(,;]|$))')
# Lines of broken JSON: '"template": "a photo of a {}.",' -> the value.
_KEY_VALUE_LINE = re.compile(r'^"?[A-Za-z_][\w -]{0,30}"?\s*:\s*"(.*)"\s*,?$')
# Pure JSON punctuation, possibly after a key: '{', '],', '"templates": ['.
_JSON_LAYOUT_LINE = re.compile(r'^\s*(?:"?[\w -]{1,30}"?\s*:\s*)?[\[\]{}(),]*\s*$')
_SEPARATOR_LINE = re.compile(r"^\s*(?:[-=*_#`~]{3,}|#+)\s*$")
_WHITESPACE = re.compile(r"\s+")
_MARKUP = re.compile(r'[{}\[\]=]|"\s*:|"\s*,\s*"|^\s*\.\w|\w\(|</?[A-Za-z][\w-]*\s*/?>')
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class RejectedCandidate:
    """A candidate the LLM wrote that was not accepted, and why."""

    text: str
    reason: str


@dataclass
class ParsedReply:
    """The templates accepted from one reply and the candidates rejected from it."""

    templates: list[str] = field(default_factory=list)
    rejected: list[RejectedCandidate] = field(default_factory=list)


def dedupe_key(template: str) -> str:
    """The form two templates are compared in: CLIP's tokenizer lowercases and collapses spaces."""
    return _WHITESPACE.sub(" ", template).strip().casefold()


def normalise_slots(text: str) -> tuple[str, int]:
    """Replace every slot spelling with ``{}``; return the text and the number of slots."""
    normalised, count = _SLOT_PATTERN.subn(SLOT, text)
    return normalised, count


def strip_wrapping(line: str) -> str:
    """Remove list markers, markdown emphasis and matching outer quotes, repeatedly."""
    previous = None
    while previous != line:
        previous = line
        line = line.strip()
        line = _LIST_MARKER.sub("", line, count=1)
        if line.startswith(">"):  # markdown block quote
            line = line[1:]
        line = line.strip().rstrip(",")  # JSON-ish lists copied as lines
        key_value = _KEY_VALUE_LINE.match(line)
        if key_value:
            line = key_value.group(1)
        emphasis = _MARKDOWN_EMPHASIS.fullmatch(line)
        if emphasis:
            line = emphasis.group(2)
        line = line.replace("**", "").replace("`", "")  # inline markdown means nothing to CLIP
        quoted = _LEADING_QUOTED.match(line)
        if quoted and _SLOT_PATTERN.search(quoted.group(2)):
            line = quoted.group(2)
        if len(line) >= 2 and _QUOTE_PAIRS.get(line[0]) == line[-1]:
            line = line[1:-1]
    return line


def _strings_in_json(value: Any) -> list[str] | None:
    """Candidate strings in a parsed JSON value, or None when it holds no list of templates."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                inner = _strings_in_json(item)
                out.extend(inner or [])
        return out
    if isinstance(value, dict):
        for key in ("templates", "template", "prompts", "prompt", "text", "candidates"):
            if key in value:
                return _strings_in_json(value[key])
        # Any other object: take the first list of strings it holds (e.g. {"new_templates": [...]}).
        for inner in value.values():
            if isinstance(inner, list):
                return _strings_in_json(inner)
    return None


def decode_json_at(text: str, start: int) -> tuple[Any, int] | None:
    """The JSON value that begins at ``text[start]`` and the index after it, else None.

    Decoded in place (a slice per bracket makes a long reply quadratic); a value nested deeper than
    Python's stack raises RecursionError, not ValueError, and is no JSON output either.
    """
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return None


def _json_candidates(text: str) -> list[str] | None:
    """Candidates when the text is (or embeds) a JSON object or array, else None."""
    stripped = text.strip()
    starts = [i for i in (stripped.find("{"), stripped.find("[")) if i >= 0]
    if not starts:
        return None
    # From the first opening bracket: chatty preamble + JSON is common. A bare JSON string is a
    # quoted line, not JSON output, so only objects and arrays count.
    for start in sorted(starts):
        if (decoded := decode_json_at(stripped, start)) is None:
            continue
        value, end = decoded
        # JSON output fills whole lines; "- [ ] a {} on fire" holds a "[ ]" that is not JSON.
        line_start = start == 0 or stripped[:start].rstrip(" \t").endswith(("\n", ":"))
        rest = stripped[end:].lstrip(" \t")
        if not isinstance(value, (dict, list)) or not line_start or rest[:1] not in ("", "\n", "\r"):
            continue
        try:
            found = _strings_in_json(value)
        except RecursionError:  # lists nested hundreds deep hold no template worth the stack
            continue
        if found is not None:
            return found
    return None


def extract_candidates(reply: str) -> list[str]:
    """Raw candidate strings from a reply: JSON strings if it holds JSON, else its lines."""
    fenced = _FENCE.findall(reply)
    bodies = fenced if fenced else [reply]
    candidates: list[str] = []
    for body in bodies:
        from_json = _json_candidates(body)
        if from_json is not None:
            candidates.extend(from_json)
            continue
        candidates.extend(
            line
            for line in body.splitlines()
            if not _SEPARATOR_LINE.match(line) and not _JSON_LAYOUT_LINE.match(line)
        )
    return candidates


def parse_reply(
    reply: str | None,
    history: Iterable[str] = (),
    *,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> ParsedReply:
    """Accepted templates (slot ``{}``) and rejected candidates from one LLM reply.

    ``history`` holds templates already scored: proposing one again is a ``duplicate``.
    An empty reply yields a single ``empty`` rejection so the caller can see the model said nothing.
    """
    result = ParsedReply()
    if reply is None or not reply.strip():
        result.rejected.append(RejectedCandidate(text="", reason=EMPTY))
        return result
    seen = {dedupe_key(t) for t in history}
    for raw in extract_candidates(reply):
        text = _WHITESPACE.sub(" ", _CONTROL.sub(" ", strip_wrapping(raw))).strip()
        if not text:
            continue  # blank lines between list items are layout, not candidates
        template, slots = normalise_slots(text)
        # Keep the rejected text short: it travels in responses and logs.
        shown = text if len(text) <= max_chars else text[:max_chars] + "…"
        if slots == 0:
            result.rejected.append(RejectedCandidate(shown, NO_SLOT))
        elif slots > 1:
            result.rejected.append(RejectedCandidate(shown, MULTIPLE_SLOTS))
        elif len(template) > max_chars:
            result.rejected.append(RejectedCandidate(shown, TOO_LONG))
        elif _MARKUP.search(template.replace(SLOT, " ")):
            result.rejected.append(RejectedCandidate(shown, MARKUP))
        elif dedupe_key(template) in seen:
            result.rejected.append(RejectedCandidate(template, DUPLICATE))
        else:
            seen.add(dedupe_key(template))
            result.templates.append(template)
    if not result.templates and not result.rejected:
        result.rejected.append(RejectedCandidate(text="", reason=EMPTY))
    return result
