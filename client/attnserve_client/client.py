"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import TypeVar, cast

import grpc
import grpc.experimental

from attnserve_client import methods
from attnserve_client.core import (
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_RETRIES,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    HEALTH_FALSE_CODES,
    ClientCore,
    GenerationStream,
    Plan,
)
from attnserve_client.embeddings import Embeddings
from attnserve_client.explain import Explanation
from attnserve_client.images import ImageInput
from attnserve_client.security import PemSource
from attnserve_client.types import Generation, GenerationChunk, ModelInfo, Prediction

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "HEALTH_FALSE_CODES",
    "Client",
]

SINGLE_THREADED_UNARY_STREAM = grpc.experimental.ChannelOptions.SingleThreadedUnaryStream

_T = TypeVar("_T")


class Client(ClientCore):
    """A blocking client of an attnserve server.

    Example::

        with Client("127.0.0.1:50051") as client:
            print(client.generate("ROMEO:", model="shakespeare-gpt", max_new_tokens=50).text)
            for chunk in client.generate_stream("ROMEO:", model="shakespeare-gpt"):
                print(chunk.text, end="", flush=True)

    Args:
        target: the server's ``host:port``.
        timeout: the default deadline of every call, in seconds (retries included). A stream
            must finish within it too; pass ``timeout=`` to a call to change it for that call.
        retries: how many times a call that failed with UNAVAILABLE is sent again, with
            exponential backoff and jitter (a stream only before its first chunk). 0 disables.
        retry_overloaded: also retry calls the server refused because it is overloaded
            (RESOURCE_EXHAUSTED), with the same backoff. Off by default: without it such a call
            raises :class:`~attnserve_client.OverloadedError` at once, and the caller decides.
        tls: connect with TLS, verifying the server with the system's root certificates (or ``ca``).
        ca: the CA certificate(s) that signed the server's certificate: a PEM file's path, or PEM bytes.
            Implies ``tls``.
        cert, key: a client certificate and its private key (paths or PEM bytes), for a server that
            demands one (mTLS). Imply ``tls``.
        api_key: sent as ``authorization: Bearer <key>`` with every call.
        credentials: ready-made channel credentials (``grpc.ssl_channel_credentials(...)``), instead of
            ``tls``/``ca``/``cert``/``key``.

    A certificate file that is missing, unreadable or not PEM, a ``cert`` without its ``key``, or an
    ``api_key`` that cannot be sent raises :class:`~attnserve_client.InvalidArgumentError` here, before
    anything is sent.

    Every method raises a subclass of :class:`~attnserve_client.AttnserveError` on failure.
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
        # A sync server-streaming call normally hands every message over from gRPC's channel
        # spin thread, which costs about 2 ms before the first chunk; consuming the stream on
        # the calling thread brings that to the cost of a unary call.
        options = [*self._channel_options(), (SINGLE_THREADED_UNARY_STREAM, 1)]
        if self._credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, self._credentials, options=options)
        self._stubs = methods.bind(self._channel)

    def close(self) -> None:
        """Closes the channel; cancels the calls in flight."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def generate(
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
        """Generates a completion of ``prompt`` and returns it whole.

        Parameters left at None are not sent: the model's defaults apply (see
        ``get_model(name).text_generation.defaults``).

        Args:
            prompt: the text to continue; must not be empty.
            model: the model's name. None picks the only text-generation model the server
                serves (one extra ListModels call); it is an error if there are several.
            max_new_tokens: how many tokens to generate, >= 1 (and at most the model's cap).
            temperature: softmax temperature, >= 0; 0 decodes greedily.
            top_k: keep the k most likely tokens, >= 0; 0 disables the filter.
            top_p: nucleus sampling threshold in (0, 1]; 1 disables the filter.
            repetition_penalty: > 0; 1 disables it.
            stop: up to 4 non-empty strings; generation ends before the first one produced.
            seed: random seed; the same seed, prompt, parameters and version give the same text.
            logprobs: also return the log-probability of each generated token.
            model_version: a version directory name; None for the model's default version.
            timeout: this call's deadline in seconds, instead of the client's default.

        Raises:
            InvalidArgumentError: a parameter is invalid (checked locally before sending, or by
                the server, e.g. a prompt longer than the context window).
            ModelNotFoundError: no such model or version.
            OverloadedError, DeadlineExceededError, UnavailableError, ServerError: see their docs.
        """
        return self._run(self._generate_plan(locals()))

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
    ) -> Generator[GenerationChunk, None, None]:
        """Streams the completion of ``prompt`` as it is decoded.

        Takes the same arguments as :meth:`generate`, which are validated at once (this raises
        InvalidArgumentError before returning). Nothing is sent until the iteration starts.
        The last chunk carries ``finish_reason`` and ``usage``. Leaving the iteration early
        (``break``, or ``close()`` on the generator) cancels the call, so the server stops
        decoding. ``timeout`` bounds the whole stream.
        """
        return self._stream(GenerationStream(self, locals()))

    def classify(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        top_k: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> list[Prediction]:
        """Classifies one image and returns its predictions, best first.

        Args:
            image: a path (the file is sent as it is), encoded bytes (PNG, JPEG, WebP or BMP),
                a PIL image, or a numpy uint8 array of shape H×W or H×W×3. PIL images and arrays
                are encoded as PNG, which needs the extra ``attnserve-client[images]``.
            model: the model's name. None picks the only image-classification model the server
                serves (one extra ListModels call); it is an error if there are several.
            top_k: how many predictions to return, in [1, number of classes]; None: 5, or the
                number of classes if smaller.
            model_version: a version directory name; None for the model's default version.
            timeout: this call's deadline in seconds, instead of the client's default.

        Raises:
            InvalidArgumentError: a bad argument (checked locally) or an image the server cannot
                use (not an image, truncated, unsupported format, too many pixels).
            ModelNotFoundError: no such model or version.
            ImportError: a PIL image or numpy array was passed and Pillow is not installed.
        """
        results = self.classify_batch([image], model=model, top_k=top_k, model_version=model_version, timeout=timeout)
        return results[0]

    def classify_batch(
        self,
        images: Sequence[ImageInput],
        *,
        model: str | None = None,
        top_k: int | None = None,
        model_version: str | None = None,
        timeout: float | None = None,
    ) -> list[list[Prediction]]:
        """Classifies several images in one request (one batched model call on the server).

        Takes the arguments of :meth:`classify`, with a sequence of images; returns one list of
        predictions (best first) per image, in order. The server caps how many images one request
        may carry (``get_model(name).image_classification.max_images_per_request``).
        """
        return self._run(self._classify_plan(images, model, top_k, model_version, timeout))

    def embed(
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
        """Embeds texts or images: one vector per input (and, with ``pooling="none"``, one per token).

        Args:
            inputs: texts (``str``) or images (a ``pathlib.Path``, encoded bytes, a PIL image or a
                numpy uint8 array), one kind per call. A plain ``str`` is always a text.
            model: the model's name. None picks the only served model of the inputs' kind.
            pooling: ``"mean"``, ``"last"``, ``"cls"`` or ``"none"`` (token-wise); None: the model's
                default (GPT ``last``, ViT ``cls``, Swin ``mean``).
            layer: which hidden state, 0 (the input embedding) to the last; negative counts from the
                end; None: the last.
            normalize: scale every vector to unit length.
            model_version: a version directory name; None for the model's default version.
            timeout: this call's deadline in seconds, instead of the client's default.

        Returns:
            :class:`~attnserve_client.Embeddings`: numpy arrays with numpy installed (the
            ``[images]`` extra), lists of floats otherwise.

        Raises:
            InvalidArgumentError: a bad argument, a pooling the model does not take (the message
                lists those it does), or a request over the model's caps.
            ServerError: FAILED_PRECONDITION: the model version has no embeddings graph.
        """
        return self._run(self._embed_plan(inputs, model, pooling, layer, normalize, model_version, timeout))

    def explain(
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
        """The attention maps of one text or one image: what attends to what.

        Args:
            text: a prompt (GPT) or a source text (encoder-decoder). Pass this or ``image``.
            image: for an image model: a path, encoded bytes, a PIL image or a numpy uint8 array.
            model: the model's name. None picks the only served model of the input's kind.
            layers: which layers (Swin: which blocks of the stage), 0 .. L-1, negative counting from
                the end; one int or a list; None: every layer.
            heads: which heads of each layer, 0 .. heads-1; None: every head.
            stage: Swin only: the stage, 0 .. stages-1; None: 0, the finest.
            query: Swin only: the query patch as (row, col) on the stage's token grid; None: the centre.
            max_new_tokens: encoder-decoder only: how many tokens to generate (greedily) for the
                cross-attention maps; None: the model's ``explain.max_new_tokens``.
            model_version: a version directory name; None for the model's default version.
            timeout: this call's deadline in seconds, instead of the client's default.

        Returns:
            The result of the model's kind: :class:`~attnserve_client.TextAttention`,
            :class:`~attnserve_client.Text2TextAttention`, :class:`~attnserve_client.VitAttention` or
            :class:`~attnserve_client.SwinAttention`, with numpy arrays when numpy is installed.

        Raises:
            InvalidArgumentError: a bad argument (checked locally), a layer, head, stage or query out
                of range, or a request over the model's caps (on tokens, on layers x heads); the
                message says what to reduce.
            ServerError: FAILED_PRECONDITION: the model version has no explain graph.
        """
        return self._run(self._explain_plan(locals()))

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models, with their versions, settings and live counters."""
        return self._run(self._models_plan(timeout))

    def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """The model called ``name``; raises ModelNotFoundError if the server has none."""
        return self._run(self._get_model_plan(name, timeout))

    def health(self, model: str = "", *, timeout: float | None = None) -> bool:
        """Whether the server (or, with ``model``, that model) is SERVING.

        One ``grpc.health.v1.Health/Check`` call, never retried: a probe reports the state now.
        Its deadline is ``timeout``, else the client's default capped at DEFAULT_HEALTH_TIMEOUT (3 s).
        Returns True iff the answer is SERVING. Returns False if the answer is NOT_SERVING or
        UNKNOWN, if the server does not know ``model`` (NOT_FOUND), or if the server cannot
        be reached before the deadline (UNAVAILABLE, DEADLINE_EXCEEDED). Other failures,
        such as a server without the health service (UNIMPLEMENTED), raise.
        """
        return self._run(self._health_plan(model, timeout))

    def _run(self, plan: Plan[_T]) -> _T:
        """Carries ``plan`` out with blocking calls: sleeps each attempt's wait, then sends it."""
        outcome: object = None
        while True:
            try:
                attempt = plan.send(outcome)
            except StopIteration as done:
                return cast(_T, done.value)
            if attempt.wait:
                time.sleep(attempt.wait)
            try:
                outcome = self._stubs[attempt.method](
                    attempt.message, timeout=attempt.deadline.remaining(), metadata=self._metadata
                )
            except grpc.RpcError as error:
                outcome = error

    def _stream(self, stream: GenerationStream) -> Generator[GenerationChunk, None, None]:
        message = self._run(stream.start())
        while True:
            call = self._stubs[methods.GENERATE_STREAM](message, timeout=stream.remaining(), metadata=self._metadata)
            try:
                for response in call:
                    yield stream.chunk(response)
                return
            except grpc.RpcError as error:
                wait = stream.retry_wait(error)  # raises when the stream is not to be sent again
            finally:
                # A no-op when the stream has ended; when the consumer stopped early
                # (GeneratorExit), this tells the server to stop decoding.
                call.cancel()
            time.sleep(wait)
