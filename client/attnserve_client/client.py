"""The synchronous client."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from types import TracebackType
from typing import TypeVar

import grpc
import grpc.experimental

from attnserve_client import convert, methods
from attnserve_client.errors import InvalidArgumentError, from_rpc_error
from attnserve_client.health import HEALTH_CHECK_METHOD, ServingStatus, decode_response, encode_request
from attnserve_client.images import ImageInput
from attnserve_client.pb import image_classification_pb2, models_pb2, text_generation_pb2
from attnserve_client.request import ClassificationRequest, GenerationRequest
from attnserve_client.retry import Deadline, RetryPolicy, channel_options, check_timeout, log_retry
from attnserve_client.types import Generation, GenerationChunk, ModelInfo, Prediction

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
    "DEFAULT_RETRIES",
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "HEALTH_FALSE_CODES",
    "Client",
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

SINGLE_THREADED_UNARY_STREAM = grpc.experimental.ChannelOptions.SingleThreadedUnaryStream

_Response = TypeVar("_Response")


class Client:
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
        credentials: TLS credentials (``grpc.ssl_channel_credentials()``); None for plaintext.

    Every method raises a subclass of :class:`~attnserve_client.AttnserveError` on failure.
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
        # A sync server-streaming call normally hands every message over from gRPC's channel
        # spin thread, which costs about 2 ms before the first chunk; consuming the stream on
        # the calling thread brings that to the cost of a unary call.
        options = [*channel_options(self._retry), (SINGLE_THREADED_UNARY_STREAM, 1)]
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._generate: grpc.UnaryUnaryMultiCallable[
            text_generation_pb2.GenerateRequest, text_generation_pb2.GenerateResponse
        ] = self._channel.unary_unary(
            methods.GENERATE,
            request_serializer=text_generation_pb2.GenerateRequest.SerializeToString,
            response_deserializer=text_generation_pb2.GenerateResponse.FromString,
        )
        self._generate_stream: grpc.UnaryStreamMultiCallable[
            text_generation_pb2.GenerateRequest, text_generation_pb2.GenerateStreamResponse
        ] = self._channel.unary_stream(
            methods.GENERATE_STREAM,
            request_serializer=text_generation_pb2.GenerateRequest.SerializeToString,
            response_deserializer=text_generation_pb2.GenerateStreamResponse.FromString,
        )
        self._list_models: grpc.UnaryUnaryMultiCallable[models_pb2.ListModelsRequest, models_pb2.ListModelsResponse] = (
            self._channel.unary_unary(
                methods.LIST_MODELS,
                request_serializer=models_pb2.ListModelsRequest.SerializeToString,
                response_deserializer=models_pb2.ListModelsResponse.FromString,
            )
        )
        self._get_model: grpc.UnaryUnaryMultiCallable[models_pb2.GetModelRequest, models_pb2.ModelInfo] = (
            self._channel.unary_unary(
                methods.GET_MODEL,
                request_serializer=models_pb2.GetModelRequest.SerializeToString,
                response_deserializer=models_pb2.ModelInfo.FromString,
            )
        )
        self._classify: grpc.UnaryUnaryMultiCallable[
            image_classification_pb2.ClassifyRequest, image_classification_pb2.ClassifyResponse
        ] = self._channel.unary_unary(
            methods.CLASSIFY,
            request_serializer=image_classification_pb2.ClassifyRequest.SerializeToString,
            response_deserializer=image_classification_pb2.ClassifyResponse.FromString,
        )
        self._health_check: grpc.UnaryUnaryMultiCallable[str, ServingStatus] = self._channel.unary_unary(
            HEALTH_CHECK_METHOD, request_serializer=encode_request, response_deserializer=decode_response
        )

    @property
    def target(self) -> str:
        return self._target

    @property
    def timeout(self) -> float:
        """The default deadline of a call, in seconds."""
        return self._timeout

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
        message = request.to_proto(request.model or self._only_model(deadline))
        response = self._call(self._generate, message, deadline, methods.GENERATE)
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
    ) -> Generator[GenerationChunk, None, None]:
        """Streams the completion of ``prompt`` as it is decoded.

        Takes the same arguments as :meth:`generate`, which are validated at once (this raises
        InvalidArgumentError before returning). Nothing is sent until the iteration starts.
        The last chunk carries ``finish_reason`` and ``usage``. Leaving the iteration early
        (``break``, or ``close()`` on the generator) cancels the call, so the server stops
        decoding. ``timeout`` bounds the whole stream.
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
        request = ClassificationRequest.create(images, model=model, top_k=top_k, model_version=model_version)
        deadline = self._deadline(timeout)
        name = request.model or self._only_model(deadline, task=convert.IMAGE_CLASSIFICATION)
        response = self._call(self._classify, request.to_proto(name), deadline, methods.CLASSIFY)
        return convert.to_predictions(response, images=len(request.images))

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models, with their versions, settings and live counters."""
        response = self._call(
            self._list_models, models_pb2.ListModelsRequest(), self._deadline(timeout), methods.LIST_MODELS
        )
        return [convert.to_model_info(info) for info in response.models]

    def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        """The model called ``name``; raises ModelNotFoundError if the server has none."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name must be a non-empty string")
        request = models_pb2.GetModelRequest(name=name)
        return convert.to_model_info(self._call(self._get_model, request, self._deadline(timeout), methods.GET_MODEL))

    def health(self, model: str = "", *, timeout: float | None = None) -> bool:
        """Whether the server (or, with ``model``, that model) is SERVING.

        One ``grpc.health.v1.Health/Check`` call, never retried: a probe reports the state now.
        Its deadline is ``timeout``, else the client's default capped at DEFAULT_HEALTH_TIMEOUT (3 s).
        Returns True iff the answer is SERVING. Returns False if the answer is NOT_SERVING or
        UNKNOWN, if the server does not know ``model`` (NOT_FOUND), or if the server cannot
        be reached before the deadline (UNAVAILABLE, DEADLINE_EXCEEDED). Other failures,
        such as a server without the health service (UNIMPLEMENTED), raise.
        """
        try:
            status = self._health_check(
                model, timeout=min(self._timeout, DEFAULT_HEALTH_TIMEOUT) if timeout is None else check_timeout(timeout)
            )
        except grpc.RpcError as error:
            if error.code() in HEALTH_FALSE_CODES:
                return False
            raise from_rpc_error(error) from error
        return status == ServingStatus.SERVING

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._timeout if timeout is None else check_timeout(timeout))

    def _only_model(self, deadline: Deadline, task: str = convert.TEXT_GENERATION) -> str:
        response = self._call(self._list_models, models_pb2.ListModelsRequest(), deadline, methods.LIST_MODELS)
        return convert.choose_model([convert.to_model_info(info) for info in response.models], task)

    def _call(
        self,
        method: Callable[..., _Response],
        request: object,
        deadline: Deadline,
        name: str,
    ) -> _Response:
        """One unary call, retried (as the retry policy says) within ``deadline``."""
        retry = 0
        while True:
            try:
                return method(request, timeout=deadline.remaining())
            except grpc.RpcError as error:
                wait = self._retry.delay(error.code(), retry, deadline.left())
                if wait is None:
                    raise from_rpc_error(error) from error
                log_retry(name, error, retry, self._retry, wait)
            time.sleep(wait)
            retry += 1

    def _stream(self, request: GenerationRequest, timeout: float) -> Generator[GenerationChunk, None, None]:
        deadline = Deadline(timeout)
        message = request.to_proto(request.model or self._only_model(deadline))
        retry = 0
        while True:
            call = self._generate_stream(message, timeout=deadline.remaining())
            received = False
            try:
                for response in call:
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
                # (GeneratorExit), this tells the server to stop decoding.
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it unannotated
            time.sleep(wait)
            retry += 1
