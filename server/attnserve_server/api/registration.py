"""Registers servicers so that a request gRPC cannot parse still reaches our error mapping.

The generated ``add_*_to_server`` functions parse requests with ``FromString``; a message with
invalid UTF-8 in a string field or a corrupt wire format then fails inside gRPC and the client
gets UNKNOWN. Here the parser hands the servicer a :class:`MalformedRequest` instead, and
:func:`attnserve_server.api.status.grpc_errors` answers it with INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import message, message_factory
from google.protobuf.descriptor import ServiceDescriptor

from attnserve_server.api.status import MalformedRequest

logger = logging.getLogger(__name__)


def _tolerant(message_class: type[message.Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except message.DecodeError as exc:
            return MalformedRequest(message_class.DESCRIPTOR.full_name, str(exc))

    return parse


def _implemented(servicer: object, name: str) -> bool:
    """Whether the servicer itself defines ``name`` (the generated base class only answers UNIMPLEMENTED)."""
    for cls in type(servicer).__mro__:
        if name in vars(cls):
            return not cls.__module__.endswith("_pb2_grpc")
    return False


def _unimplemented(full_name: str) -> Callable[..., Any]:
    """A method the server does not offer: UNIMPLEMENTED and one INFO line, where gRPC would log a traceback."""

    async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        logger.info("%s is not implemented by this server", full_name)
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{full_name} is not implemented by attnserve")

    return answer  # for a client-streaming method the request iterator is simply never read


def add_servicer(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Register every method of ``service``, with tolerant parsing; those that ``servicer`` does not
    implement answer UNIMPLEMENTED."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        kinds = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }
        make = kinds[(method.client_streaming, method.server_streaming)]
        if _implemented(servicer, method.name):
            behavior = getattr(servicer, method.name)
        else:
            behavior = _unimplemented(f"{service.full_name}/{method.name}")
            if method.server_streaming:
                behavior = _as_stream(behavior)
        handlers[method.name] = make(
            behavior,
            request_deserializer=_tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def _as_stream(unary: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    """The same answer as a server-streaming behaviour (an async generator that yields nothing)."""

    async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await unary(request, context)
        return
        yield  # an async generator, for gRPC's streaming handler

    return stream
