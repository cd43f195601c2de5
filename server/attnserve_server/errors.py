"""Domain errors: what the engines, handlers and the registry raise on purpose.

They know nothing of any transport. The gRPC transports map them to status codes in one place,
:mod:`attnserve_server.api.status`; anything else that escapes a handler is a bug.
"""

from __future__ import annotations


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


# Client-supplied names and values are cut to this many characters in error messages, so that a
# huge name neither bloats the reply (gRPC caps trailing metadata at 16 KB) nor floods the logs.
MAX_SHOWN_CHARS = 64
MAX_SHOWN_DIMS = 8


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown_shape(shape: object) -> str:
    """A client's tensor shape for an error message, with at most ``MAX_SHOWN_DIMS`` dimensions."""
    dims = list(shape)  # type: ignore[call-overload]
    if len(dims) <= MAX_SHOWN_DIMS:
        return str(dims)
    return f"[{', '.join(map(str, dims[:MAX_SHOWN_DIMS]))}, ...] ({len(dims)} dimensions)"
