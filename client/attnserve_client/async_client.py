"""The asyncio client, on ``grpc.aio``. Same methods and semantics as :class:`Client`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.aio

from attnserve_client import convert, methods
from attnserve_client.client import (
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    HEALTH_FALSE_CODES,
)
from attnserve_client.errors import InvalidArgumentError, from_rpc_error
from attnserve_client.health import HEALTH_CHECK_METHOD, ServingStatus, decode_response, encode_request
from attnserve_client.images import ImageInput
from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2
from attnserve_client.request import ClassificationRequest, GenerationRequest
from attnserve_client.retry import Deadline, RetryPolicy, channel_options, check_timeout, log_retry
from attnserve_client.types import Generation, GenerationChunk, ModelInfo, Prediction

__all__ = ["AsyncClient"]

_Response = TypeVar("_Response")


class AsyncClient:
    """An asyncio client of an attnserve server.

    Example::

        async with AsyncClient("127.0.0.1:50051") as client:
            generation = await client.generate("ROMEO:", model="shakespeare-gpt")
            async for chunk in client.generate_stream("ROMEO:", model="shakespeare-gpt"):
                print(chunk.text, end="", flush=True)

    Takes the same arguments as :class:`~attnserve_client.Client`; create it inside the
    event loop that uses it.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_overloaded: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._timeout = check_timeout(timeout)
        self._retry = RetryPolicy(retries=retries, retry_overloaded=retry_overloaded)
        self._target = target
        options = channel_options(self._retry)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._generate: grpc.aio.UnaryUnaryMultiCallable[
            text_generation_pb2.GenerateRequest, text_generation_pb2.GenerateResponse
        ] = self._channel.unary_unary(
            methods.GENERATE,
            request_serializer=text_generation_pb2.GenerateRequest.SerializeToString,
            response_deserializer=text_generation_pb2.GenerateResponse.FromString,
        )
        self._generate_stream: grpc.aio.UnaryStreamMultiCallable[
            text_generation_pb2.GenerateRequest, text_generation_pb2.GenerateStreamResponse
        ] = self._channel.unary_stream(
            methods.GENERATE_STREAM,
            request_serializer=text_generation_pb2.GenerateRequest.SerializeToString,
            response_deserializer=text_generation_pb2.GenerateStreamResponse.FromString,
        )
        self._list_models: grpc.aio.UnaryUnaryMultiCallable[
            models_pb2.ListModelsRequest, models_pb2.ListModelsResponse
        ] = self._channel.unary_unary(
            methods.LIST_MODELS,
            request_serializer=models_pb2.ListModelsRequest.SerializeToString,
            response_deserializer=models_pb2.ListModelsResponse.FromString,
        )
        self._get_model: grpc.aio.UnaryUnaryMultiCallable[models_pb2.GetModelRequest, models_pb2.ModelInfo] = (
            self._channel.unary_unary(
                methods.GET_MODEL,
                request_serializer=models_pb2.GetModelRequest.SerializeToString,
                response_deserializer=models_pb2.ModelInfo.FromString,
            )
        )
        self._classify: grpc.aio.UnaryUnaryMultiCallable[
            image_classification_pb2.ClassifyRequest, image_classification_pb2.ClassifyResponse
        ] = self._channel.unary_unary(
            methods.CLASSIFY,
            request_serializer=image_classification_pb2.ClassifyRequest.SerializeToString,
            response_deserializer=image_classification_pb2.ClassifyResponse.FromString,
        )
        self._health_check: grpc.aio.UnaryUnaryMultiCallable[str, ServingStatus] = self._channel.unary_unary(
            HEALTH_CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_response
        )

    @property
    def target(self) -> str:
        return self._target

    @property
    def timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._timeout

    async def close(self) -> None:
        """Closes the channel; cancels the calls in flight."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Generates a completion of ``prompt`` and returns it whole. See :meth:`Client.generate`."""
        request = GenerationRequest.create(
            prompt,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=stop,
            seed=seed,
            logprobs=logprobs,
            model_version=model_version,
        )
        deadline = self._deadline(timeout)
        message = request.to_proto(request.model or await self._only_model(deadline))
        response = await self._call(self._generate, message, deadline, methods.GENERATE)
        return convert.to_generation(response, logprobs=request.logprobs)

    def generate_stream(
        self,
        prompt: str,
        *,
        model: str | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[GenerationChunk, None]:
        """Streams the completion of ``prompt``; use with ``async for``. See :meth:`Client.generate_stream`.

        Not a coroutine: the arguments are validated at once, and nothing is sent until the
        iteration starts. Leaving the iteration early cancels the call. ``break`` lets the
        event loop close the generator soon after; to cancel at a precise point, call
        ``await stream.aclose()`` or iterate inside ``contextlib.aclosing(stream)``.
        """
        request = GenerationRequest.create(
            prompt,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=stop,
            seed=seed,
            logprobs=logprobs,
            model_version=model_version,
        )
        # The deadline starts with the iteration, when the call is sent.
        return self._stream(request, self._timeout if timeout is None else check_timeout(timeout))

    async def classify(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        top_k: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """Classifies one image; returns its predictions, best first. See :meth:`Client.classify`."""
        results = await self.classify_batch(
            [image], model=model, top_k=top_k, model_version=model_version, timeout=timeout
        )
        return results[0]

    async def classify_batch(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        top_k: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> list[list[Prediction]]:
        """Classifies several images in one request. See :meth:`Client.classify_batch`."""
        request = ClassificationRequest.create(images, model=model, top_k=top_k, model_version=model_version)
        deadline = self._deadline(timeout)
        name = request.model or await self._only_model(deadline, task=convert.IMAGE_CLASSIFICATION)
        response = await self._call(self._classify, request.to_proto(name), deadline, methods.CLASSIFY)
        return convert.to_predictions(response, images=len(request.images))

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models, with their versions, settings and live counters."""
        response = await self._call(
            self._list_models, models_pb2.ListModelsRequest(), self._deadline(timeout), methods.LIST_MODELS
        )
        return [convert.to_model_info(info) for info in response.models]

    async def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """The model called ``name``; raises ModelNotFoundError if the server has none."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a non-empty string")
        request = models_pb2.GetModelRequest(name=name)
        info = await self._call(self._get_model, request, self._deadline(timeout), methods.GET_MODEL)
        return convert.to_model_info(info)

    async def health(self, model: str = "", *, timeout: float | None = None) -> bool:
        """Whether the server (or, with ``model``, that model) is SERVING. See :meth:`Client.health`."""
        try:
            status = await self._health_check(
                model, timeout=min(self._timeout, DEFAULT_HEALTH_TIMEOUT) if timeout is None else check_timeout(timeout)
            )
        except grpc.RpcError as error:
            if error.code() in HEALTH_FALSE_CODES:
                return False
            raise from_rpc_error(error) from error
        return status == ServingStatus.SERVING

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._timeout if timeout is None else check_timeout(timeout))

    async def _only_model(self, deadline: Deadline, task: str = convert.TEXT_GENERATION) -> str:
        response = await self._call(self._list_models, models_pb2.ListModelsRequest(), deadline, methods.LIST_MODELS)
        return convert.choose_model([convert.to_model_info(info) for info in response.models], task)

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: object,
        deadline: Deadline,
        name: str,
    ) -> _Response:
        """One unary call, retried (as the retry policy says) within ``deadline``."""
        retry = 0
        while True:
            try:
                return await method(request, timeout=deadline.remaining())
            except grpc.RpcError as error:
                wait = self._retry.delay(error.code(), retry, deadline.left())
                if wait is None:
                    raise from_rpc_error(error) from error
                log_retry(name, error, retry, self._retry, wait)
            await asyncio.sleep(wait)
            retry += 1

    async def _stream(self, request: GenerationRequest, timeout: float) -> AsyncGenerator[GenerationChunk, None]:
        deadline = Deadline(timeout)
        message = request.to_proto(request.model or await self._only_model(deadline))
        retry = 0
        while True:
            call = self._generate_stream(message, timeout=deadline.remaining())
            received = False
            try:
                async for response in call:
                    yield convert.to_chunk(response, logprobs=request.logprobs, first=not received)
                    received = True
                return
            except grpc.RpcError as error:
                # Once a chunk has been yielded, sending the request again would repeat text.
                wait = None if received else self._retry.delay(error.code(), retry, deadline.left())
                if wait is None:
                    raise from_rpc_error(error) from error
                log_retry(methods.GENERATE_STREAM, error, retry, self._retry, wait)
            finally:
                # A no-op when the stream has ended; when the consumer stopped early
                # (GeneratorExit) or the task was cancelled, this tells the server to stop.
                call.cancel()
            await asyncio.sleep(wait)
            retry += 1
