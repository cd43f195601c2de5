"""The client core: what :class:`~attnserve_client.Client` and :class:`~attnserve_client.AsyncClient` share.

Both clients derive from :class:`ClientCore`, which holds their settings and writes every
method once, without I/O, as a *plan*: a generator that validates the arguments, builds the
request, yields an :class:`Attempt` for each gRPC call to send (after how long a wait), is sent
back the response or the ``grpc.RpcError`` it failed with, and returns the method's typed
result. The retry policy, the model lookup when no model is named, and the conversion of
responses live in the plans. Each client adds only its calling convention: ``Client._run``
carries a plan out with blocking calls and ``time.sleep``, ``AsyncClient._run`` with awaits and
``asyncio.sleep``; and each iterates a :class:`GenerationStream` in its own way (an iterator, an
async iterator).

The clients' ``generate`` and ``generate_stream`` hand their ``locals()`` to the core, which
reads the arguments by name (:meth:`GenerationRequest.from_arguments`): the eleven keywords
are spelled out in the public signatures and in :meth:`GenerationRequest.create` only, never
passed on one by one (tests/client/test_core.py checks that the signatures agree).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc

from attnserve_client import convert
from attnserve_client.embeddings import EmbeddingRequest, Embeddings, to_embeddings
from attnserve_client.errors import InvalidArgumentError, from_rpc_error
from attnserve_client.explain import ExplainRequest, Explanation, to_explanation
from attnserve_client.health import ServingStatus
from attnserve_client.methods import (
    CLASSIFY_RPC,
    EMBED_RPC,
    EXPLAIN_RPC,
    GENERATE_RPC,
    GENERATE_STREAM,
    GET_MODEL_RPC,
    HEALTH_CHECK_RPC,
    LIST_MODELS_RPC,
    Rpc,
)
from attnserve_client.pb import models_pb2, text_generation_pb2
from attnserve_client.request import ClassificationRequest, GenerationRequest
from attnserve_client.retry import Deadline, RetryPolicy, channel_options, check_timeout, retry_wait
from attnserve_client.security import channel_security
from attnserve_client.types import Generation, GenerationChunk, ModelInfo, Prediction

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "EXPLAIN_PARAMETERS",
    "HEALTH_FALSE_CODES",
    "Attempt",
    "ClientCore",
    "GenerationStream",
    "Plan",
]

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 2
# A probe must answer quickly whatever the client's default deadline (it runs as a container
# HEALTHCHECK): a server that cannot say SERVING within this is not healthy.
DEFAULT_HEALTH_TIMEOUT = 3.0
# Health answers False (rather than raising) for these: the server is down, too slow to
# answer, or does not know the model.
HEALTH_FALSE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND}
)

# explain's keyword arguments, ``timeout`` aside, as ExplainRequest.create takes them.
EXPLAIN_PARAMETERS = (
    "text",
    "image",
    "model",
    "layers",
    "heads",
    "stage",
    "query",
    "max_new_tokens",
    "model_version",
)

_T = TypeVar("_T")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One unary call that a plan asks its client to send.

    Attributes:
        method: the method's path, the key of the client's stub table (:func:`methods.bind`).
        message: the request.
        deadline: the call's deadline; the client sends ``timeout=deadline.remaining()``, which
            raises DeadlineExceededError when no time is left.
        wait: seconds to sleep before sending (the backoff before a retry).
    """

    method: str
    message: object
    deadline: Deadline
    wait: float = 0.0


Plan = Generator[Attempt, object, _T]
"""A method without I/O: it yields attempts, is sent each one's response (or its grpc.RpcError), returns the result."""


class ClientCore:
    """The settings of a client and the plan of each of its methods (see the module's docstring)."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float,
        retries: int,
        retry_overloaded: bool,
        **connection: Any,
    ) -> None:
        """``connection``: the TLS and API key arguments of the clients (``tls``, ``ca``, ``cert``, ``key``,
        ``api_key``, ``credentials``), as :func:`~attnserve_client.security.channel_security` takes them."""
        self._timeout = check_timeout(timeout)
        self._retry = RetryPolicy(retries=retries, retry_overloaded=retry_overloaded)
        self._target = target
        security = channel_security(**connection)
        # None: a plaintext channel. Each client opens its own kind of channel (sync or asyncio) with them.
        self._credentials = security.credentials
        # Sent with every call (the API key); never shown by repr() or in an error.
        self._metadata = security.metadata

    @staticmethod
    def arguments(constructor_locals: Mapping[str, Any]) -> dict[str, Any]:
        """A client constructor's arguments, from its ``locals()``, for ``ClientCore.__init__``."""
        return {name: value for name, value in constructor_locals.items() if name not in ("self", "__class__")}

    @property
    def target(self) -> str:
        return self._target

    @property
    def timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._timeout

    def _channel_options(self) -> list[tuple[str, int]]:
        return channel_options(self._retry)

    def _call_timeout(self, timeout: float | None) -> float:
        """A call's timeout: its own, checked, or the client's default."""
        return self._timeout if timeout is None else check_timeout(timeout)

    def _generate_plan(self, arguments: Mapping[str, Any]) -> Plan[Generation]:
        """``generate``, from its arguments by name (its ``locals()``)."""
        request = GenerationRequest.from_arguments(arguments)
        deadline = Deadline(self._call_timeout(arguments["timeout"]))
        message = request.to_proto(request.model or (yield from self._only_model(deadline)))
        response = yield from self._unary(GENERATE_RPC, message, deadline)
        return convert.to_generation(response, logprobs=request.logprobs)

    def _classify_plan(
        self,
        images: Sequence[object],
        model: str | None,
        top_k: int | None,
        model_version: str | None,
        timeout: float | None,
    ) -> Plan[list[list[Prediction]]]:
        """``classify_batch``."""
        request = ClassificationRequest.create(images, model=model, top_k=top_k, model_version=model_version)
        deadline = Deadline(self._call_timeout(timeout))
        name = request.model or (yield from self._only_model(deadline, convert.IMAGE_CLASSIFICATION))
        response = yield from self._unary(CLASSIFY_RPC, request.to_proto(name), deadline)
        return convert.to_predictions(response, images=len(request.images))

    def _embed_plan(  # noqa: PLR0917 (embed's arguments, passed on as they are)
        self,
        inputs: Sequence[object],
        model: str | None,
        pooling: str | None,
        layer: int | None,
        normalize: bool,
        model_version: str | None,
        timeout: float | None,
    ) -> Plan[Embeddings]:
        """``embed``."""
        request = EmbeddingRequest.create(
            inputs, model=model, pooling=pooling, layer=layer, normalize=normalize, model_version=model_version
        )
        deadline = Deadline(self._call_timeout(timeout))
        task = convert.TEXT_GENERATION if request.is_text else convert.IMAGE_CLASSIFICATION
        name = request.model or (yield from self._only_model(deadline, task))
        response = yield from self._unary(EMBED_RPC, request.to_proto(name), deadline)
        return to_embeddings(response, inputs=len(inputs), texts=request.is_text)

    def _explain_plan(self, arguments: Mapping[str, Any]) -> Plan[Explanation]:
        """``explain``, from its arguments by name (its ``locals()``)."""
        request = ExplainRequest.create(**{name: arguments[name] for name in EXPLAIN_PARAMETERS})
        deadline = Deadline(self._call_timeout(arguments["timeout"]))
        # A text goes to a GPT or an encoder-decoder alike: the only one of either is the model.
        text_tasks = (convert.TEXT_GENERATION, convert.TEXT2TEXT_GENERATION)
        name = request.model or (
            yield from self._only_model(deadline, text_tasks if request.is_text else convert.IMAGE_CLASSIFICATION)
        )
        response = yield from self._unary(EXPLAIN_RPC, request.to_proto(name), deadline)
        return to_explanation(response)

    def _models_plan(self, timeout: float | None) -> Plan[list[ModelInfo]]:
        """``models``."""
        return (yield from self._list_models(Deadline(self._call_timeout(timeout))))

    def _get_model_plan(self, name: str, timeout: float | None) -> Plan[ModelInfo]:
        """``get_model``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a non-empty string")
        request = models_pb2.GetModelRequest(name=name)
        info = yield from self._unary(GET_MODEL_RPC, request, Deadline(self._call_timeout(timeout)))
        return convert.to_model_info(info)

    def _health_plan(self, model: str, timeout: float | None) -> Plan[bool]:
        """``health``: one attempt, never retried (a probe reports the state now)."""
        deadline = Deadline(min(self._timeout, DEFAULT_HEALTH_TIMEOUT) if timeout is None else check_timeout(timeout))
        outcome = yield Attempt(HEALTH_CHECK_RPC.path, model, deadline)
        if isinstance(outcome, grpc.RpcError):
            if outcome.code() in HEALTH_FALSE_CODES:
                return False
            raise from_rpc_error(outcome) from outcome
        return outcome == ServingStatus.SERVING

    def _list_models(self, deadline: Deadline) -> Plan[list[ModelInfo]]:
        response = yield from self._unary(LIST_MODELS_RPC, models_pb2.ListModelsRequest(), deadline)
        return [convert.to_model_info(info) for info in response.models]

    def _only_model(self, deadline: Deadline, task: str | tuple[str, ...] = convert.TEXT_GENERATION) -> Plan[str]:
        """The name of the only model of ``task`` (or of any of them) served (one ListModels call), for a request
        that names none."""
        return convert.choose_model((yield from self._list_models(deadline)), task)

    def _unary(self, rpc: Rpc[_Request, _Response], message: _Request, deadline: Deadline) -> Plan[_Response]:
        """One unary call, retried (as the retry policy says) within ``deadline``."""
        retry, wait = 0, 0.0
        while True:
            outcome = yield Attempt(rpc.path, message, deadline, wait)
            if not isinstance(outcome, grpc.RpcError):
                return cast(_Response, outcome)
            wait = retry_wait(self._retry, rpc.path, outcome, retry, deadline)  # raises when it gives up
            retry += 1


class GenerationStream:
    """One ``generate_stream`` call: its request, its deadline, its retries, its chunks.

    Created (and so validated) when ``generate_stream`` is called. Each client iterates it in its
    own way: ``start()`` (a plan) when the iteration starts, then for each attempt a call with
    ``timeout=remaining()``, ``chunk()`` for each response, and ``retry_wait()`` if it fails.
    """

    def __init__(self, core: ClientCore, arguments: Mapping[str, Any]) -> None:
        """Validates ``generate_stream``'s arguments, given by name (its ``locals()``)."""
        self.request = GenerationRequest.from_arguments(arguments)
        self._timeout = core._call_timeout(arguments["timeout"])
        self._core = core
        self._deadline: Deadline | None = None
        self._retry = 0
        self._received = False

    def start(self) -> Plan[text_generation_pb2.GenerateRequest]:
        """Starts the deadline (it bounds the whole stream, from the iteration's start) and builds the request."""
        deadline = self._deadline = Deadline(self._timeout)
        return self.request.to_proto(self.request.model or (yield from self._core._only_model(deadline)))

    def remaining(self) -> float:
        """The timeout of the next attempt; raises DeadlineExceededError when no time is left."""
        assert self._deadline is not None, "start() the stream first"
        return self._deadline.remaining()

    def chunk(self, response: text_generation_pb2.GenerateStreamResponse) -> GenerationChunk:
        chunk = convert.to_chunk(response, logprobs=self.request.logprobs, first=not self._received)
        self._received = True
        return chunk

    def retry_wait(self, error: grpc.RpcError) -> float:
        """The wait before sending the request again after ``error``; raises its typed error if it is not to be."""
        assert self._deadline is not None, "start() the stream first"
        if self._received:
            # Once a chunk has been yielded, sending the request again would repeat text.
            raise from_rpc_error(error) from error
        wait = retry_wait(self._core._retry, GENERATE_STREAM, error, self._retry, self._deadline)
        self._retry += 1
        return wait
