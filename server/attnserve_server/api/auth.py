"""API keys on the gRPC port: who may call what, and how often.

:class:`AuthInterceptor` runs after :class:`~attnserve_server.api.interceptor.RequestInterceptor`
(which wraps whatever handler it returns), so a refused call still gets its request id, its access
log line and its metrics. For each call it reads ``authorization: Bearer <key>`` from the
metadata, and answers:

- UNAUTHENTICATED without a key, or with one the key file does not hold;
- PERMISSION_DENIED when the key lacks the method's scope (the message names the scope);
- RESOURCE_EXHAUSTED when the key's rate limit (a token bucket) is spent.

Otherwise the call goes on, with the key's NAME in ``logs.request_key`` (log lines and the
metrics' ``key`` label); the key itself is never logged or stored. :data:`METHOD_SCOPES` maps
every method to its scope. Health (``grpc.health.v1``) and the v2 ServerLive/ServerReady stay open,
so that probes need no key: they tell no more than whether the port answers. Any other method
that the table does not name (reflection, say) needs a valid key of any scope.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import grpc

from attnserve_server import logs
from attnserve_server.security.keys import INFER, MODELS_CONTROL, MODELS_READ, KeyStore, bearer_token

logger = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
OPEN: Final = "open"
"""No key needed."""
ANY_SCOPE: Final = "any"
"""A valid key, whatever its scopes."""

_TEXT = "/attnserve.v1.TextGenerationService/"
_IMAGE = "/attnserve.v1.ImageClassificationService/"
_MODELS = "/attnserve.v1.ModelService/"
_EMBEDDINGS = "/attnserve.v1.EmbeddingService/"
_EXPLAIN = "/attnserve.v1.ExplainService/"
_V2 = "/inference.GRPCInferenceService/"
_HEALTH = "/grpc.health.v1.Health/"

METHOD_SCOPES: dict[str, str] = {
    **{_TEXT + m: INFER for m in ("Generate", "GenerateStream")},
    _IMAGE + "Classify": INFER,
    _EMBEDDINGS + "Embed": INFER,
    _EXPLAIN + "Explain": INFER,
    **{_MODELS + m: MODELS_READ for m in ("ListModels", "GetModel")},
    **{_V2 + m: INFER for m in ("ModelInfer", "ModelStreamInfer")},
    **{
        _V2 + m: MODELS_READ
        for m in ("ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig", "ModelStatistics", "RepositoryIndex")
    },
    **{_V2 + m: MODELS_CONTROL for m in ("RepositoryModelLoad", "RepositoryModelUnload")},
    # Not offered by attnserve (UNIMPLEMENTED), but they would read or change the server's state.
    **{_V2 + m: MODELS_READ for m in ("SystemSharedMemoryStatus", "CudaSharedMemoryStatus")},
    **{
        _V2 + m: MODELS_CONTROL
        for m in (
            "SystemSharedMemoryRegister",
            "SystemSharedMemoryUnregister",
            "CudaSharedMemoryRegister",
            "CudaSharedMemoryUnregister",
            "TraceSetting",
            "LogSettings",
        )
    },
    **{_V2 + m: OPEN for m in ("ServerLive", "ServerReady")},
    **{_HEALTH + m: OPEN for m in ("Check", "Watch", "List")},
}

if TYPE_CHECKING:  # grpc-stubs make them generic; the runtime classes are not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler
    Context = grpc.aio.ServicerContext

# Why the current call is refused; read by the refusal handler, which runs in the same task.
_refusal: contextvars.ContextVar[tuple[grpc.StatusCode, str]] = contextvars.ContextVar("attnserve_refusal")


def scope_of(method: str) -> str:
    """The scope a method needs: one of the key scopes, :data:`OPEN` or :data:`ANY_SCOPE`."""
    return METHOD_SCOPES.get(method, ANY_SCOPE)


def presented_key(metadata: Any) -> tuple[str | None, bool]:
    """The bearer key of the call's metadata, and whether an ``authorization`` entry was there at all."""
    for key, value in metadata or ():
        if key == AUTHORIZATION:
            return bearer_token(value), True
    return None, False


class AuthInterceptor(_ServerInterceptor):
    """Refuses calls without a valid API key, without the method's scope, or past the key's rate limit."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        # One refusal handler per method handler, of the same kind (a refused stream is still a stream).
        self._refusals: dict[int, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        scope = scope_of(method)
        if scope == OPEN:
            return await continuation(handler_call_details)
        token, sent = presented_key(handler_call_details.invocation_metadata)
        key = self._keys.identify(token)
        if key is None:
            if not sent:
                why = "this call needs an API key: send the metadata 'authorization: Bearer <key>'"
            elif token is None:
                why = "the 'authorization' metadata must be 'Bearer <key>'"
            else:
                why = "unknown API key"
            return await self._refuse(continuation, handler_call_details, grpc.StatusCode.UNAUTHENTICATED, why)
        logs.request_key.set(key.name)
        if scope != ANY_SCOPE and scope not in key.scopes:
            name = method.rsplit("/", 1)[-1]
            why = f"the API key {key.name!r} lacks the scope {scope!r}, which {name} needs"
            return await self._refuse(continuation, handler_call_details, grpc.StatusCode.PERMISSION_DENIED, why)
        if key.bucket is not None and not key.bucket.take():
            why = f"the API key {key.name!r} is over its rate limit ({key.bucket.rate:g}/s, burst {key.bucket.burst})"
            return await self._refuse(continuation, handler_call_details, grpc.StatusCode.RESOURCE_EXHAUSTED, why)
        return await continuation(handler_call_details)

    async def _refuse(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
        code: grpc.StatusCode,
        why: str,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:  # no such method: UNIMPLEMENTED, as without keys
            return handler
        _refusal.set((code, why))
        cached = self._refusals.get(id(handler))
        if cached is None or cached[0] is not handler:
            cached = (handler, _refusal_handler(handler))
            self._refusals[id(handler)] = cached
        return cached[1]


async def _abort(context: Context) -> None:
    code, why = _refusal.get()
    logger.info("refused with %s: %s", code.name, why)
    await context.abort(code, why)


async def _refuse_unary(request: Any, context: Context) -> Any:
    await _abort(context)


async def _refuse_stream(request: Any, context: Context) -> AsyncIterator[Any]:
    await _abort(context)
    return
    yield  # an async generator, for gRPC's streaming handler


def _refusal_handler(handler: Handler) -> Handler:
    """A handler of the same kind as ``handler`` that aborts with the current refusal; it never parses
    the request (its deserializer is the identity) and never reads a request stream."""
    kinds = {
        (False, False): (grpc.unary_unary_rpc_method_handler, _refuse_unary),
        (False, True): (grpc.unary_stream_rpc_method_handler, _refuse_stream),
        (True, False): (grpc.stream_unary_rpc_method_handler, _refuse_unary),
        (True, True): (grpc.stream_stream_rpc_method_handler, _refuse_stream),
    }
    make, behavior = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(behavior, request_deserializer=None, response_serializer=handler.response_serializer)
