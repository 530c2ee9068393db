"""Slot rules: literal replacement, never str.format; per-template rejections."""

from __future__ import annotations

import pytest

from services.scorer.templates import TemplateRejected, check_template, fill, fill_all


def test_slot_is_replaced_literally_and_format_fields_stay_text() -> None:
    assert fill("a photo of a {}.", "dog") == "a photo of a dog."
    assert fill("{0.__class__} {}", "dog") == "{0.__class__} dog"
    assert fill("{}{}{", "cat") == "catcat{"
    assert fill("{name} {} {{}}", "cat") == "{name} cat {cat}"


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a photo of a dog", "no"),
        ("{0.__class__}", "no"),
        ("{class}", "no"),
        ("a \x00 photo of a {}", "U+0000"),
        ("a photo\x1b of a {}", "U+001B"),
    ],
)
def test_bad_templates_are_rejected_with_a_reason(template: str, reason: str) -> None:
    with pytest.raises(TemplateRejected, match=reason.replace("+", r"\+")):
        check_template(template)


def test_fill_all_keeps_class_order() -> None:
    filled = fill_all("a {} here", ["b", "a"])
    assert filled.texts == ("a b here", "a a here")
