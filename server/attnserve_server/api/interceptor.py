"""The server interceptor: a request id for every RPC, and metrics and a log line for every API call.

Every RPC (health and reflection included) gets a request id: the client's ``x-request-id``
metadata if it sent a usable one, else a fresh one. It goes back in the trailing metadata, on
success and on error, and tags every log record of the RPC (see :mod:`attnserve_server.logs`).
The trailing metadata is set before the method runs, so an ``abort`` (which is how
:func:`attnserve_server.api.status.grpc_errors` answers errors) sends it too.

Calls of the ``attnserve.v1`` services and the v2 API's inference calls are also counted and
timed in :class:`ServerMetrics`, and logged once at INFO when they end (method, status code,
duration: never the request's content, which is logged only at DEBUG).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message, text_format
from google.protobuf.descriptor import FieldDescriptor

from attnserve_server import logs
from attnserve_server.api.status import MalformedRequest
from attnserve_server.metrics import NO_KEY, RequestLabels, ServerMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
# Longer ids, or ones with control characters, are replaced rather than logged.
MAX_REQUEST_ID_CHARS = 128
# The inference calls of both APIs; the rest of the v2 API (liveness, metadata, repository) is
# control-plane traffic that would only crowd the request metrics.
INSTRUMENTED = (
    "/attnserve.v1.",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelStreamInfer",
)

# More wrapped handlers than any server has methods (twice over): beyond it the cache starts again.
MAX_WRAPPED = 1024

# Services whose servicers take a MalformedRequest themselves (see api.registration).
OWN_SERVICES = ("/attnserve.v1.", "/inference.")

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpc-stubs make it generic; the runtime class is not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
Track = Callable[[Any, Context], contextlib.AbstractContextManager[None]]


def request_id_from(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The client's ``x-request-id`` if it is 1-128 printable characters, else a new random id."""
    for key, value in metadata or ():
        usable = isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID_CHARS and value.isprintable()
        if key == REQUEST_ID_KEY and usable:
            return str(value)
    return uuid.uuid4().hex


def requested_model(request: Any) -> str:
    """The model a request names (``model``, ``name`` for GetModel, ``model_name`` in the v2 API); ``""`` if none."""
    if not isinstance(request, message.Message):
        return ""  # a request that could not be parsed, or a request stream
    for field in ("model", "name", "model_name"):
        if field in request.DESCRIPTOR.fields_by_name:
            return str(getattr(request, field))
    return ""


def describe(request: Any) -> str:
    """A one-line rendering of a request for DEBUG logs, with bytes fields (images) shown as sizes."""
    if not isinstance(request, message.Message):
        return repr(request)
    parts = []
    for field, value in request.ListFields():
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_BYTES:
            sizes = [len(v) for v in value] if repeated else [len(value)]
            shown = "[" + ", ".join(f"<{n} bytes>" for n in sizes) + "]"
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not repeated:
            shown = "{" + text_format.MessageToString(value, as_one_line=True) + "}"
        else:
            shown = repr(list(value) if repeated else value)
        parts.append(f"{field.name}={shown}")
    return " ".join(parts)


def _code_name(code: Any, default: str) -> str:
    return code.name if isinstance(code, grpc.StatusCode) else default


class RequestInterceptor(_ServerInterceptor):
    """Request ids for every RPC; metrics and access logs for the ``attnserve.v1`` services."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        # Wrapped once per handler, not per call: building handlers costs more than the RPC's own bookkeeping.
        # Keyed by the handler's identity too (the cached tuple keeps it alive): with API keys a method has
        # two handlers, its own and the auth interceptor's refusal, and calls alternate between them.
        self._wrapped: dict[tuple[str, int], tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]]
        self._wrapped = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return handler
        full_method = handler_call_details.method
        cached = self._wrapped.get((full_method, id(handler)))
        if cached is not None and cached[0] is handler:
            return cached[1]
        track: Track
        if full_method.startswith(INSTRUMENTED):
            method = full_method.rsplit("/", 1)[-1]

            def track(request: Any, context: Context) -> contextlib.AbstractContextManager[None]:
                return self._track(method, request, context)

        else:
            track = _tag
        wrapped = _wrap_handler(handler, track, full_method)
        if len(self._wrapped) >= MAX_WRAPPED:  # handlers that come and go (none do today) cannot pile up
            self._wrapped.clear()
        self._wrapped[(full_method, id(handler))] = (handler, wrapped)
        return wrapped

    @contextlib.contextmanager
    def _track(self, method: str, request: Any, context: Context) -> Iterator[None]:
        started = time.perf_counter()
        model = self._metrics.model_label(requested_model(request))
        with _tag(request, context):
            logs.request_model.set(model or None)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s request: %s", method, describe(request))
            # The auth interceptor, which runs before this handler in the same task, named the key.
            labels = RequestLabels(model, method, logs.request_key.get() or NO_KEY)
            self._metrics.rpc_started(labels)
            code = "OK"
            try:
                yield
                code = _code_name(context.code(), "OK")
            except grpc.aio.AbortError:
                code = _code_name(context.code(), "UNKNOWN")
                raise
            except (asyncio.CancelledError, GeneratorExit):  # the client left, or its deadline passed
                code = "CANCELLED"
                raise
            except BaseException:  # gRPC answers an escaped exception with UNKNOWN
                code = "UNKNOWN"
                raise
            finally:
                seconds = time.perf_counter() - started
                self._metrics.rpc_finished(labels, code, seconds)
                ms = round(seconds * 1000, 3)
                extra = {"method": method, "code": code, "duration_ms": ms}
                logger.info("%s %s in %.1f ms", method, code, ms, extra=extra)


@contextlib.contextmanager
def _tag(request: Any, context: Context) -> Iterator[None]:
    """Give the RPC its request id: in its trailing metadata and on its log records."""
    rid = request_id_from(context.invocation_metadata())
    # Each RPC runs in its own task, with its own copy of the context: setting the variables
    # (never resetting them) scopes them to this RPC.
    logs.request_id.set(rid)
    context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    yield


def _tolerant(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    """A deserializer that hands a :class:`MalformedRequest` to the behaviour instead of raising, where
    gRPC would answer UNKNOWN and log a traceback (health and reflection parse their own requests)."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or whatever a library's parser raises
            return MalformedRequest(method, str(exc)[:200] or type(exc).__name__)

    return parse


async def _refuse(context: Context, request: MalformedRequest) -> None:
    logger.warning("malformed request refused: %s", request.error())
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.error()))


async def _checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request)
        yield request


def _wrap_behavior(
    behavior: Callable[..., Any], track: Track, *, request_streaming: bool, check_stream: bool
) -> Callable[..., Any] | None:
    """The same kind of callable (coroutine or async generator function), run inside ``track``.

    A request that could not be parsed is refused with INVALID_ARGUMENT before the behaviour runs;
    with ``check_stream``, so is each bad message of a request stream.
    """

    def guarded(request: Any, context: Context) -> Any:
        if request_streaming and check_stream:
            return _checked(request, context)
        return request

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            with track(request, context):
                if isinstance(request, MalformedRequest):
                    await _refuse(context, request)
                async for item in behavior(guarded(request, context), context):
                    yield item

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def unary(request: Any, context: Context) -> Any:
            with track(request, context):
                if isinstance(request, MalformedRequest):
                    await _refuse(context, request)
                return await behavior(guarded(request, context), context)

        return unary
    return None  # a synchronous handler: none of ours


_MAKERS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def _wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any], track: Track, method: str
) -> grpc.RpcMethodHandler[Any, Any]:
    attribute, make = _MAKERS[(handler.request_streaming, handler.response_streaming)]
    # Our own streaming servicers answer a malformed message inside the stream (v2 ModelStreamInfer
    # sends an error_message and goes on); the libraries' ones (reflection) are refused here.
    own = method.startswith(OWN_SERVICES)
    wrapped = _wrap_behavior(
        getattr(handler, attribute), track, request_streaming=handler.request_streaming, check_stream=not own
    )
    if wrapped is None:
        return handler
    return make(
        wrapped,
        request_deserializer=_tolerant(handler.request_deserializer, method),
        response_serializer=handler.response_serializer,
    )
