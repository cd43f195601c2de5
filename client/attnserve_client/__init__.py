"""Python client of the attnserve gRPC model server.

Use :class:`Client` (blocking) or :class:`AsyncClient` (asyncio). Results are typed frozen
dataclasses, failures are subclasses of :class:`AttnserveError`.
"""

from attnserve_client.async_client import AsyncClient
from attnserve_client.client import DEFAULT_RETRIES, DEFAULT_TARGET, DEFAULT_TIMEOUT, Client
from attnserve_client.errors import (
    AttnserveError,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelNotFoundError,
    OverloadedError,
    RequestCancelledError,
    ServerError,
    UnavailableError,
)
from attnserve_client.types import (
    FinishReason,
    Generation,
    GenerationChunk,
    GenerationDefaults,
    ImageClassificationInfo,
    ImageInputSpec,
    ModelCounters,
    ModelInfo,
    Prediction,
    TextGenerationInfo,
    Usage,
)

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AttnserveError",
    "Client",
    "DeadlineExceededError",
    "FinishReason",
    "Generation",
    "GenerationChunk",
    "GenerationDefaults",
    "ImageClassificationInfo",
    "ImageInputSpec",
    "InvalidArgumentError",
    "ModelCounters",
    "ModelInfo",
    "ModelNotFoundError",
    "OverloadedError",
    "Prediction",
    "RequestCancelledError",
    "ServerError",
    "TextGenerationInfo",
    "UnavailableError",
    "Usage",
]
