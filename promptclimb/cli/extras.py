"""Which optional dependency groups (pip extras) are installed, and what to say when one is not."""

from __future__ import annotations

import importlib.util

# The modules each extra brings; the first one missing names the extra to install.
EXTRAS = {
    "scorer": ("torch", "torchvision", "open_clip"),
    "llm": ("llama_cpp",),
}


def missing_extra(extra: str) -> str | None:
    """None when ``extra``'s packages import; else a one-line message saying what to install."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return f"needs {', '.join(missing)}: install the {extra} extra, pip install 'promptclimb[{extra}]'"
