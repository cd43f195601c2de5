"""Domain errors and the ONE place where they become gRPC status codes.

Handlers raise subclasses of :class:`AttnserveError`, which know nothing of gRPC; :data:`STATUS_CODES`
maps them to ``grpc.StatusCode`` and :func:`grpc_errors` wraps every RPC method to apply it.
Anything else is a bug: it is logged with its traceback and reaches the client as INTERNAL with a
generic message.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc

logger = logging.getLogger(__name__)


class AttnserveError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidArgumentError(AttnserveError):
    """The request is malformed or out of range; the message says what to fix."""


class ModelNotFoundError(AttnserveError):
    """No loaded model (or model version) has that name."""


class ResourceExhaustedError(AttnserveError):
    """The server is at capacity; retry later."""


class DeadlineExceededError(AttnserveError):
    """The request's deadline passed before it finished."""


class UnavailableError(AttnserveError):
    """The server cannot serve right now (starting up or shutting down)."""


class FailedPreconditionError(AttnserveError):
    """The request is valid but does not fit the model (e.g. wrong task)."""


class ModelLoadError(AttnserveError):
    """A model in the repository could not be loaded. Raised at startup, never from an RPC."""

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r}: {reason}")
        self.model = model
        self.reason = reason


class RepositoryError(AttnserveError):
    """The model repository itself is unusable (missing directory, bad model directory name)."""


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request message that could not be parsed (see ``api.registration``)."""

    message_type: str
    reason: str


# The one mapping from domain errors to gRPC. Subclasses inherit their parent's code.
STATUS_CODES: Mapping[type[AttnserveError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelLoadError: grpc.StatusCode.UNAVAILABLE,
    RepositoryError: grpc.StatusCode.UNAVAILABLE,
}

_GENERIC_INTERNAL = "internal server error (see the server log)"


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its (nearest mapped) class's code, INTERNAL for anything else."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


F = TypeVar("F", bound=Callable[..., Any])


def _check_parsed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise InvalidArgumentError(f"request is not a valid {request.message_type}: {request.reason}")


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code = status_code(exc)
    if code is not grpc.StatusCode.INTERNAL:
        await context.abort(code, str(exc))
    logger.error("unexpected error in RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, _GENERIC_INTERNAL)


def grpc_errors(method: F) -> F:
    """Map domain errors raised by a servicer method to gRPC statuses.

    Works for unary (``async def``) and server-streaming (``async def`` with ``yield``) methods.
    The wrapped method must take ``(self, request, context)``.
    """
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                _check_parsed(request)
                async for item in method(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await _abort(context, exc)

        return cast(F, stream_wrapper)

    unary = cast(Callable[..., Awaitable[Any]], method)

    @functools.wraps(method)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            _check_parsed(request)
            return await unary(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)

    return cast(F, unary_wrapper)
