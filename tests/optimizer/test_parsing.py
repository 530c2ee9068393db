"""Messy LLM replies parsed into templates and rejections."""

from __future__ import annotations

import pytest

from services.optimizer.parsing import RejectedCandidate, normalise_slots, parse_reply

R = RejectedCandidate

# (reply, templates accepted, rejected) -- history holds "a photo of a {}.".
CASES = [
    pytest.param("a sketch of a {}.", ["a sketch of a {}."], [], id="plain-line"),
    pytest.param(
        "1. a photo of the {class}.\n2) a cropped photo of a {classname}\n(3) an origami {class_name}.",
        ["a photo of the {}.", "a cropped photo of a {}", "an origami {}."],
        [],
        id="numbered-with-slot-spellings",
    ),
    pytest.param(
        "Sure! Here are some new templates:\n\n- a photo of a <class> on a table\n"
        "* a rendering of a [CLASS]\n• a {label} in the wild\n\nHope these help!",
        ["a photo of a {} on a table", "a rendering of a {}", "a {} in the wild"],
        [R("Sure! Here are some new templates:", "no_slot"), R("Hope these help!", "no_slot")],
        id="chatty-bullets",
    ),
    pytest.param(
        '{"templates": ["a low resolution photo of a {}.", "a photo of a {}."]}',
        ["a low resolution photo of a {}."],
        [R("a photo of a {}.", "duplicate")],
        id="json-object-with-history-duplicate",
    ),
    pytest.param(
        '["a tattoo of a {CLASS}.", "a {} and another {}"]',
        ["a tattoo of a {}."],
        [R("a {} and another {}", "multiple_slots")],
        id="json-array-multiple-slots",
    ),
    pytest.param(
        'Here you go:\n```json\n{"templates": ["a plastic {}.", "a plastic {}."]}\n```\nLet me know.',
        ["a plastic {}."],
        [R("a plastic {}.", "duplicate")],
        id="code-fence-with-chatter-and-inner-duplicate",
    ),
    pytest.param(
        "\"a bright photo of a {}.\"\n'a dark photo of a {}.'\n“a photo of my {}.”",
        ["a bright photo of a {}.", "a dark photo of a {}.", "a photo of my {}."],
        [],
        id="quoted-straight-and-curly",
    ),
    pytest.param(
        "**a black and white photo of a {}.**\n`a pixelated photo of the {}.`\n> a jpeg of a {}",
        ["a black and white photo of a {}.", "a pixelated photo of the {}.", "a jpeg of a {}"],
        [],
        id="markdown-bold-code-quote",
    ),
    pytest.param("", [], [R("", "empty")], id="empty"),
    pytest.param("   \n\n  ", [], [R("", "empty")], id="whitespace-only"),
    pytest.param(
        "I cannot help with that.",
        [],
        [R("I cannot help with that.", "no_slot")],
        id="refusal-no-slot",
    ),
    pytest.param(
        "a photo of a " + "very " * 50 + "nice {}.",
        [],
        [R(("a photo of a " + "very " * 50 + "nice {}.")[:200] + "…", "too_long")],
        id="too-long",
    ),
    pytest.param(
        "Template 1: a photo of a small {}.\nTemplate 2: A PHOTO OF A {}.\nOption C: a toy {}.",
        ["a photo of a small {}.", "a toy {}."],
        [R("A PHOTO OF A {}.", "duplicate")],
        id="labelled-and-case-insensitive-duplicate",
    ),
    pytest.param(
        "\"a studio photo of a {}.\" - this adds lighting context\n'a photo of a {{class}}.'",
        ["a studio photo of a {}."],
        [R("a photo of a {}.", "duplicate")],
        id="quote-with-commentary-and-double-braces",
    ),
    pytest.param(
        '```json\n{\n  "templates": [\n    {\n      "template": "a sculpture of a {}.",\n'
        '      "accuracy": 52.9%\n    }\n  ]\n}\n```',
        ["a sculpture of a {}."],
        [R('"accuracy": 52.9%', "no_slot")],
        id="broken-json-in-fence",
    ),
    pytest.param(
        '{"new_templates": [{"text": "a {} seen from above"}, {"text": "a   {}\\tin   the rain"}]}',
        ["a {} seen from above", "a {} in the rain"],
        [],
        id="json-other-key-objects-and-whitespace",
    ),
    pytest.param(
        "1. a photo of a {}.\n---\n2. a photo of a {0} with a {0}",
        [],
        [R("a photo of a {}.", "duplicate"), R("a photo of a {0} with a {0}", "multiple_slots")],
        id="separator-and-numbered-format-slots",
    ),
    pytest.param(
        "- [ ] a {} on fire\n- a photo of {0.__class__}",
        ["a {} on fire"],
        [R("a photo of {0.__class__}", "no_slot")],
        id="checkbox-and-format-attack-is-no-slot",
    ),
    pytest.param(
        # What SmolLM2 wrote when its JSON broke: debris around a slot must not be scored.
        '{ "templates": ["{}" ,"template_id:5132} }\na photo of a {}, seen in [the shop]\na clean {} photo.\n'
        "{}.json(new JSON)\nprompt = a {}\na {} (in a shop), dim.\n<code>{}</code>\na {} <3 for sale",
        ["a clean {} photo.", "a {} (in a shop), dim.", "a {} <3 for sale"],
        [
            R('{ "templates": ["{}" ,"template_id:5132} }', "markup"),
            R("a photo of a {}, seen in [the shop]", "markup"),
            R("{}.json(new JSON)", "markup"),
            R("prompt = a {}", "markup"),
            R("<code>{}</code>", "markup"),
        ],
        id="broken-json-debris-is-markup",
    ),
]


@pytest.mark.parametrize(("reply", "templates", "rejected"), CASES)
def test_messy_replies_parse_into_templates_and_rejections(
    reply: str, templates: list[str], rejected: list[RejectedCandidate]
) -> None:
    parsed = parse_reply(reply, ["a photo of a {}."])
    assert parsed.templates == templates
    assert parsed.rejected == rejected


def test_at_least_fifteen_messy_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(
    "spelling",
    [
        "{}",
        "{class}",
        "{CLASS}",
        "{classname}",
        "{class_name}",
        "{class name}",
        "{label}",
        "<class>",
        "<classname>",
        "[CLASS]",
        "[class]",
        "{{}}",
        "{ class }",
        "[label]",
        "{category}",
    ],
)
def test_slot_spellings_normalise_to_braces(spelling: str) -> None:
    assert normalise_slots(f"a photo of a {spelling}.") == ("a photo of a {}.", 1)


def test_length_cap_is_configurable() -> None:
    parsed = parse_reply("a photo of a big {}.", max_chars=10)
    assert parsed.templates == []
    assert [r.reason for r in parsed.rejected] == ["too_long"]


@pytest.mark.parametrize(
    "reply", ["[" * 5_000, "[" * 900 + "]" * 900, '{"templates": ' + "[" * 900 + "]" * 900 + "}"]
)
def test_deeply_nested_json_is_no_template_and_no_crash(reply: str) -> None:
    parsed = parse_reply(reply)
    assert all("{}" in t for t in parsed.templates)
