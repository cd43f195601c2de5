"""Python client of the attnserve gRPC model server.

Use :class:`Client` (blocking) or :class:`AsyncClient` (asyncio). Results are typed frozen
dataclasses, failures are subclasses of :class:`AttnserveError`.

The names below are loaded on first use (PEP 562): importing a module of the package that needs
no gRPC, such as :mod:`attnserve_client.limits` (which the server's engines share), does not load
grpc and protobuf. ``from attnserve_client import Client`` works as ever.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnserve_client.async_client import AsyncClient
    from attnserve_client.client import DEFAULT_RETRIES, DEFAULT_TARGET, DEFAULT_TIMEOUT, Client
    from attnserve_client.embeddings import Embeddings
    from attnserve_client.errors import (
        AttnserveError,
        AuthenticationError,
        DeadlineExceededError,
        InvalidArgumentError,
        ModelNotFoundError,
        OverloadedError,
        PermissionDeniedError,
        RequestCancelledError,
        ServerError,
        UnavailableError,
    )
    from attnserve_client.explain import (
        Explanation,
        SwinAttention,
        SwinWindow,
        Text2TextAttention,
        TextAttention,
        VitAttention,
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
        Text2TextGenerationInfo,
        TextGenerationInfo,
        Usage,
    )

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "AttnserveError",
    "AuthenticationError",
    "Client",
    "DeadlineExceededError",
    "Embeddings",
    "Explanation",
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
    "PermissionDeniedError",
    "Prediction",
    "RequestCancelledError",
    "ServerError",
    "SwinAttention",
    "SwinWindow",
    "Text2TextAttention",
    "Text2TextGenerationInfo",
    "TextAttention",
    "TextGenerationInfo",
    "UnavailableError",
    "Usage",
    "VitAttention",
]

# The modules that define the names of __all__.
_PUBLIC_MODULES = ("client", "async_client", "embeddings", "explain", "errors", "types")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for module in _PUBLIC_MODULES:
            namespace = vars(importlib.import_module(f"{__name__}.{module}"))
            globals().update({public: namespace[public] for public in __all__ if public in namespace})
        return globals()[name]
    if not name.startswith("__"):
        # A submodule, as ``attnserve_client.errors`` was when this module imported them all.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
