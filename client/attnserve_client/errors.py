"""Typed exceptions, and the one place that maps a gRPC status to them.

Every error the client raises is an :class:`AttnserveError`. Catch a subclass to handle one
cause (``except ModelNotFoundError``), or the base class to handle them all.
"""

from __future__ import annotations

from typing import Any

import grpc

REQUEST_ID_KEY = "x-request-id"
"""The metadata key of the id the server gives every call (returned in its trailing metadata)."""

__all__ = [
    "REQUEST_ID_KEY",
    "AttnserveError",
    "AuthenticationError",
    "DeadlineExceededError",
    "InvalidArgumentError",
    "ModelNotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RequestCancelledError",
    "ServerError",
    "UnavailableError",
    "from_rpc_error",
]


class AttnserveError(Exception):
    """Base class of every error that the client raises.

    Attributes:
        code: the gRPC status code. Errors that the client raises itself, before anything is
            sent, carry the code that the server would have answered with.
        details: the human-readable message (the server's status details, or the client's).
        request_id: the id the server logged the call under (from its ``x-request-id`` trailing
            metadata); None for errors raised before anything reached the server.
    """

    default_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    """The code of an error of this class that the client raises itself."""

    def __init__(self, details: str, code: grpc.StatusCode | None = None, *, request_id: str | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.code = code if code is not None else self.default_code
        self.request_id = request_id

    def __repr__(self) -> str:
        rid = f", request_id={self.request_id!r}" if self.request_id else ""
        return f"{type(self).__name__}({self.details!r}, code={self.code.name}{rid})"


class InvalidArgumentError(AttnserveError, ValueError):
    """The request is invalid: a bad parameter, an empty prompt, a prompt too long (INVALID_ARGUMENT).

    Raised locally, before sending, for the rules that don't need the model, and by the server
    for the ones that do (for example a prompt longer than the context window).
    """

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFoundError(AttnserveError):
    """No model (or model version) has that name (NOT_FOUND)."""

    default_code = grpc.StatusCode.NOT_FOUND


class OverloadedError(AttnserveError):
    """The server is at capacity and refused the request; try again later (RESOURCE_EXHAUSTED)."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(AttnserveError):
    """The call did not finish before its deadline (DEADLINE_EXCEEDED)."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(AttnserveError):
    """The server could not be reached, or is shutting down (UNAVAILABLE), after all retries."""

    default_code = grpc.StatusCode.UNAVAILABLE


class RequestCancelledError(AttnserveError):
    """The call was cancelled (CANCELLED), for example by the server while it shuts down.

    Named so that it does not shadow :class:`asyncio.CancelledError`, which the async client
    never converts: cancelling a task still raises ``asyncio.CancelledError`` as usual.
    """

    default_code = grpc.StatusCode.CANCELLED


class AuthenticationError(AttnserveError):
    """The server wants an API key, and got none or one it does not know (UNAUTHENTICATED)."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(AttnserveError):
    """The API key lacks the scope that the call needs; the message names it (PERMISSION_DENIED)."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ServerError(AttnserveError):
    """The server failed (INTERNAL, UNKNOWN, UNIMPLEMENTED and any other code)."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[AttnserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
}


def from_rpc_error(error: grpc.RpcError) -> AttnserveError:
    """Converts a failed gRPC call (sync or ``grpc.aio``) to the matching typed exception."""
    try:
        code = error.code()
        details = error.details() or code.name
    except AttributeError:  # a bare RpcError that is not a call: it has no status
        code, details = grpc.StatusCode.UNKNOWN, str(error) or "unknown gRPC error"
    return _BY_CODE.get(code, ServerError)(details, code, request_id=_request_id(error))


def _request_id(error: grpc.RpcError) -> str | None:
    try:
        metadata: Any = error.trailing_metadata() or ()
    except AttributeError:
        return None
    for key, value in metadata:  # (key, value) pairs, from sync and aio calls alike
        if key == REQUEST_ID_KEY:
            return value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return None
