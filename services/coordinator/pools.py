"""Built-in initial template pools, written for this project.

``basic`` is a handful of plain hand-written prompts; ``clip80`` is a larger, varied set in the
spirit of CLIP's prompt-ensembling list (photos, renderings, sizes, qualities), worded by us.
Every template has exactly one ``{}`` class-name slot.
"""

from __future__ import annotations

from services.coordinator.search import SearchConfig

_BASIC = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a {}.",
)

_QUALITIES = ("", "good ", "bad ", "blurry ", "bright ", "dark ", "clean ", "cropped ")
_SIZES = ("", "small ", "large ")
_MEDIA = (
    "a photo of a {q}{s}{{}}.",
    "a rendering of a {q}{s}{{}}.",
    "a drawing of a {q}{s}{{}}.",
    "a low resolution photo of a {q}{s}{{}}.",
)


def _clip80() -> tuple[str, ...]:
    """80 distinct templates: media x qualities x sizes, in a fixed order."""
    out: list[str] = []
    for medium in _MEDIA:
        for q in _QUALITIES:
            for s in _SIZES:
                t = medium.format(q=q, s=s)  # our own constants, never user or LLM text
                if t not in out:
                    out.append(t)
    extra = ("art of the {}.", "a sculpture of a {}.", "a toy {}.", "a tattoo of a {}.", "itap of a {}.")
    return tuple((out + [e for e in extra if e not in out])[:80])


NAMED_POOLS: dict[str, tuple[str, ...]] = {"basic": _BASIC, "clip80": _clip80()}
DEFAULT_POOL = "basic"


def initial_templates(config: SearchConfig) -> list[str]:
    """The templates a search starts from when it does not ask the LLM for starters."""
    if config.user_templates:
        return list(config.user_templates)
    return list(NAMED_POOLS[config.named_pool or DEFAULT_POOL])
