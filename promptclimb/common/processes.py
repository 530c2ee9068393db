"""Child processes that never outlive the command that started them."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        pass


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` (Linux only; elsewhere ``None``)."""
    return _die_with_parent if sys.platform == "linux" else None
