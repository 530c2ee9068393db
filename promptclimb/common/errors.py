"""Rich gRPC errors (google.rpc.Status with details) through grpcio-status.

Domain code raises :class:`ServiceError`; the servicer adapters turn it into a status with
:func:`abort`. Nothing here knows about any particular service.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# Status message and details travel in HTTP/2 trailers, which clients cap at 8-16 KiB; an error
# that echoes a huge hostile input would otherwise reach the caller as a transport failure
# ("metadata size exceeds limit") instead of its real code. Budgets are UTF-8 bytes.
MAX_MESSAGE_BYTES = 512
MAX_DETAIL_BYTES = 256
MAX_VIOLATIONS = 8


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (on a character boundary), marked with "…"."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode("utf-8", "ignore") + "…"


class ServiceError(Exception):
    """An error with the gRPC status code it should be reported with.

    Message, field violations and resource name are clipped to fixed byte budgets so that the
    status always fits in the trailers whatever input it quotes.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_after_seconds: float | None = None,
        resource: tuple[str, str] | None = None,
    ) -> None:
        message = clip(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_violations = [
            (clip(f, MAX_DETAIL_BYTES // 2), clip(d, MAX_DETAIL_BYTES)) for f, d in field_violations
        ][:MAX_VIOLATIONS]
        self.retry_after_seconds = retry_after_seconds
        self.resource = (resource[0], clip(resource[1], MAX_DETAIL_BYTES)) if resource is not None else None

    def to_status(self) -> grpc.Status:
        """Build the rich status (BadRequest, RetryInfo, ResourceInfo details as set)."""
        details = []
        if self.field_violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.field_violations
                ]
            )
            details.append(bad)
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.resource is not None:
            details.append(
                error_details_pb2.ResourceInfo(resource_type=self.resource[0], resource_name=self.resource[1])
            )
        packed = []
        for d in details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=packed
        )
        return rpc_status.to_status(status)


def invalid_argument(message: str, field: str | None = None) -> ServiceError:
    """INVALID_ARGUMENT, with a BadRequest field violation when ``field`` is given."""
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, message, field_violations=[(field, message)] if field else ()
    )


def not_found(resource_type: str, name: str) -> ServiceError:
    """NOT_FOUND for a named resource, with ResourceInfo."""
    return ServiceError(
        grpc.StatusCode.NOT_FOUND, f"{resource_type} {name!r} not found", resource=(resource_type, name)
    )


async def abort(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """End the RPC with ``error`` as a rich status."""
    await context.abort_with_status(error.to_status())


def retry_delay_of(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay a server attached to ``error``, in seconds, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def resource_of(error: grpc.aio.AioRpcError) -> tuple[str, str] | None:
    """The (type, name) of the ResourceInfo a server attached to ``error``, if any."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            return info.resource_type, info.resource_name
    return None


def code_name(code: grpc.StatusCode) -> str:
    """The canonical upper-case name of a status code, e.g. ``INVALID_ARGUMENT``."""
    return code.name


__all__ = [
    "ServiceError",
    "abort",
    "code_name",
    "invalid_argument",
    "not_found",
    "resource_of",
    "retry_delay_of",
]
