"""Hypothesis strategies for hostile requests, and the check every hostile call must pass."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

T = TypeVar("T")

# Enough cases per RPC for the bar, the same cases on every run (CI stability).
HOSTILE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

BRACES = [
    "{",
    "}",
    "}}",
    "{{",
    "{}",
    "{}{}",
    "{0}",
    "{0.__class__}",
    "{0.__class__.__mro__[1].__subclasses__()}",
    "{!r}",
    "{:>999999999}",
    "{class}",
    "<class>",
    "[CLASS]",
    "%s",
    "%(x)s",
    "${HOME}",
]
CONTROL = ["\x00", "\x01", "\x1b[31m", "\r\n", "\t", "\u202e", "\ufeff", "\u200b", "\x7f", "\U0010ffff"]

# Protobuf strings must be valid UTF-8, so lone surrogates cannot even be sent; all else may.
_chars = st.characters(blacklist_categories=("Cs",))
_piece = st.one_of(
    st.text(_chars, max_size=12),
    st.sampled_from(BRACES),
    st.sampled_from(CONTROL),
)


def hostile_text(*, huge: int = 20_000) -> st.SearchStrategy[str]:
    """Arbitrary unicode, control characters and NULs, braces in every arrangement, empty and huge."""
    joined = st.lists(_piece, max_size=8).map("".join)
    big = st.builds(
        lambda unit, n: (unit * n)[:huge], st.sampled_from(["{}", "x", "\x00", "é{0}", "{"]), st.just(huge)
    )
    return st.sampled_from(["empty", "joined", "joined", "joined", "joined", "big"]).flatmap(
        lambda kind: st.just("") if kind == "empty" else big if kind == "big" else joined
    )


def hostile_list(element: st.SearchStrategy[T], *, huge: int = 2_000) -> st.SearchStrategy[list[T]]:
    """Short lists mostly, and sometimes a huge repeated field."""
    short = st.lists(element, max_size=6)
    return st.one_of(
        short, short, short, st.builds(lambda s, n: [s] * n, element, st.sampled_from([huge // 4, huge]))
    )


INT32 = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 100, 101, 1000]), st.integers(-(2**31), 2**31 - 1)
)
INT64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
DOUBLE = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e-308, 2.0000001]),
    st.floats(allow_nan=True, allow_infinity=True),
)
ENUM = st.one_of(st.integers(0, 6), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))


def mostly(valid: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """Valid three times in four, so hostile text also reaches the core, not only the validation."""
    # one_of(valid, valid, valid, hostile) would not do: hypothesis merges equal branches.
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else hostile)


async def call_code(rpc: Callable[[], Awaitable[object]]) -> grpc.StatusCode:
    """Run one call; OK or the status code it ended with."""
    try:
        await rpc()
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


SEEN: Counter[tuple[str, str]] = Counter()  # (what, code) over the session, to show coverage


def check_code(
    code: grpc.StatusCode, allowed: Collection[grpc.StatusCode], what: str, *, well_formed: bool = False
) -> None:
    """Fail with the code when a call ended outside its documented set (docs/ERRORS.md).

    ``well_formed``: the request is one the service must answer (known names, within limits), so
    only OK will do: a server that refused everything would pass the documented set alone.
    """
    SEEN[(what, code.name)] += 1
    assert code in allowed, f"{what} ended with {code.name}; documented: {sorted(c.name for c in allowed)}"
    if well_formed:
        assert code == grpc.StatusCode.OK, f"{what}: a well-formed request ended with {code.name}"
