"""The one mapping between splitinfer's errors and gRPC status codes, both ways."""

from __future__ import annotations

import grpc

from runtime.errors import (
    CodecError,
    DeadlineError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    RemoteError,
    ShuttingDownError,
    SplitInferError,
    UnauthenticatedError,
    UnavailableError,
)

STATUS_OF: dict[type[SplitInferError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    CodecError: grpc.StatusCode.INVALID_ARGUMENT,
    OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
}

_ERROR_OF: dict[grpc.StatusCode, type[SplitInferError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def status_of(error: SplitInferError) -> grpc.StatusCode:
    """The status a server answers ``error`` with; INTERNAL for any other error."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def error_for(code: grpc.StatusCode | None, message: str) -> SplitInferError:
    """The error a client raises for a failed call's status."""
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(message, code.name)
    cls = _ERROR_OF.get(code) if code is not None else None
    if cls is not None:
        return cls(message)
    return RemoteError(message, code.name if code is not None else "UNKNOWN")


def error_from_rpc(exc: grpc.RpcError) -> SplitInferError:
    """A client-side grpc.RpcError as a splitinfer error (raise it ``from exc``)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for(code, f"{code.name if code else 'UNKNOWN'}: {details}")
