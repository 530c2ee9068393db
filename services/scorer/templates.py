"""Prompt templates: the class-name slot rules.

A template is untrusted text (it may come from an LLM or a client). The slot ``{}`` is replaced
literally with ``str.replace``; ``str.format`` is never used, because a format string such as
``{0.__class__}`` walks object attributes. Every other brace is plain text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

SLOT = "{}"


class TemplateRejected(ValueError):
    """A template that cannot be scored; the message says why (INVALID_ARGUMENT semantics)."""


def fill(template: str, class_name: str) -> str:
    """The template with every ``{}`` replaced by ``class_name`` — literally, never formatted."""
    return template.replace(SLOT, class_name)


def check_template(template: str) -> None:
    """Reject a template that is empty, has no ``{}`` slot or holds control characters.

    Length against the tokenizer context is checked later, on the filled texts, by the engine.
    """
    if not template.strip():
        raise TemplateRejected("template is empty")
    if SLOT not in template:
        raise TemplateRejected('template has no "{}" class-name slot')
    # NUL and other control characters are never part of a prompt; tokenizers treat them oddly.
    for ch in template:
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n":
            raise TemplateRejected(f"template holds the control character U+{ord(ch):04X}")


@dataclass(frozen=True)
class FilledTemplate:
    """A template with its texts, one per class, in the dataset's class order."""

    template: str
    texts: tuple[str, ...]


def fill_all(template: str, class_names: Sequence[str]) -> FilledTemplate:
    """Check ``template`` and fill it with every class name."""
    check_template(template)
    return FilledTemplate(template, tuple(fill(template, c) for c in class_names))
