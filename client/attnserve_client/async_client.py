"""The asyncio client, on ``grpc.aio``. Same methods and semantics as :class:`Client`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import TypeVar, cast

import grpc
import grpc.aio

from attnserve_client import methods
from attnserve_client.core import DEFAULT_RETRIES, DEFAULT_TARGET, DEFAULT_TIMEOUT, ClientCore, GenerationStream, Plan
from attnserve_client.embeddings import Embeddings
from attnserve_client.explain import Explanation
from attnserve_client.images import ImageInput
from attnserve_client.security import PemSource
from attnserve_client.types import Generation, GenerationChunk, ModelInfo, Prediction

__all__ = ["AsyncClient"]

_T = TypeVar("_T")


class AsyncClient(ClientCore):
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
        tls: bool = False,
        ca: PemSource | None = None,
        cert: PemSource | None = None,
        key: PemSource | None = None,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(**self.arguments(locals()))
        options = self._channel_options()
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, self._credentials, options=options)
        self._stubs = methods.bind(self._channel)

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
        return await self._run(self._generate_plan(locals()))

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
        return self._stream(GenerationStream(self, locals()))

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
        return await self._run(self._classify_plan(images, model, top_k, model_version, timeout))

    async def embed(
        self,
        inputs: Sequence[object],
        *,
        model: str | None = None,
        pooling: str | None = None,
        layer: int | None = None,
        normalize: bool = False,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> Embeddings:
        """Embeds texts or images. See :meth:`Client.embed`."""
        return await self._run(self._embed_plan(inputs, model, pooling, layer, normalize, model_version, timeout))

    async def explain(
        self,
        text: str | None = None,
        *,
        image: ImageInput | None = None,
        model: str | None = None,
        layers: int | Sequence[int] | None = None,
        heads: int | Sequence[int] | None = None,
        stage: int | None = None,
        query: tuple[int, int] | None = None,
        max_new_tokens: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> Explanation:
        """The attention maps of one text or one image. See :meth:`Client.explain`."""
        return await self._run(self._explain_plan(locals()))

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models, with their versions, settings and live counters."""
        return await self._run(self._models_plan(timeout))

    async def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """The model called ``name``; raises ModelNotFoundError if the server has none."""
        return await self._run(self._get_model_plan(name, timeout))

    async def health(self, model: str = "", *, timeout: float | None = None) -> bool:
        """Whether the server (or, with ``model``, that model) is SERVING. See :meth:`Client.health`."""
        return await self._run(self._health_plan(model, timeout))

    async def _run(self, plan: Plan[_T]) -> _T:
        """Carries ``plan`` out with awaits: sleeps each attempt's wait, then sends it."""
        outcome: object = None
        while True:
            try:
                attempt = plan.send(outcome)
            except StopIteration as done:
                return cast(_T, done.value)
            if attempt.wait:
                await asyncio.sleep(attempt.wait)
            try:
                outcome = await self._stubs[attempt.method](
                    attempt.message, timeout=attempt.deadline.remaining(), metadata=self._metadata
                )
            except grpc.RpcError as error:
                outcome = error

    async def _stream(self, stream: GenerationStream) -> AsyncGenerator[GenerationChunk, None]:
        message = await self._run(stream.start())
        while True:
            call = self._stubs[methods.GENERATE_STREAM](message, timeout=stream.remaining(), metadata=self._metadata)
            try:
                async for response in call:
                    yield stream.chunk(response)
                return
            except grpc.RpcError as error:
                wait = stream.retry_wait(error)  # raises when the stream is not to be sent again
            finally:
                # A no-op when the stream has ended; when the consumer stopped early
                # (GeneratorExit) or the task was cancelled, this tells the server to stop.
                call.cancel()
            await asyncio.sleep(wait)
