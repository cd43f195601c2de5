"""The ONE mapping from domain errors to gRPC status codes, applied to every RPC of both APIs.

Handlers raise subclasses of :class:`~attnserve_server.errors.AttnserveError`, which know nothing
of gRPC; :data:`STATUS_CODES` maps them to ``grpc.StatusCode`` and :func:`grpc_errors` wraps every
servicer method (the attnserve.v1 services and the KServe v2 one) to apply it. Anything else is a
bug: it is logged with its traceback and reaches the client as INTERNAL with a generic message.
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

from attnserve_server.errors import (
    AttnserveError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    ModelLoadError,
    ModelNotFoundError,
    RepositoryError,
    ResourceExhaustedError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Subclasses inherit their parent's code.
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

GENERIC_INTERNAL = "internal server error (see the server log)"


@dataclass(frozen=True)
class MalformedRequest:
    """Stands in for a request message that could not be parsed (see ``api.registration``)."""

    message_type: str
    reason: str

    def error(self) -> InvalidArgumentError:
        return InvalidArgumentError(f"request is not a valid {self.message_type}: {self.reason}")


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status for an exception: its (nearest mapped) class's code, INTERNAL for anything else."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def client_message(exc: BaseException) -> str:
    """What the client may read of an error: a domain error's own message, never a bug's details."""
    return str(exc) if status_code(exc) is not grpc.StatusCode.INTERNAL else GENERIC_INTERNAL


def stream_error_text(exc: BaseException) -> str:
    """The ``CODE: message`` text of an error carried inside a stream's response (v2 ModelStreamInfer)."""
    code = status_code(exc)
    if code is grpc.StatusCode.INTERNAL:
        logger.error("unexpected error in a streamed request", exc_info=exc)
    return f"{code.name}: {client_message(exc)}"


F = TypeVar("F", bound=Callable[..., Any])


def _check_parsed(request: Any) -> None:
    if isinstance(request, MalformedRequest):
        raise request.error()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code = status_code(exc)
    if code is not grpc.StatusCode.INTERNAL:
        await context.abort(code, str(exc))
    logger.error("unexpected error in RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL)


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
