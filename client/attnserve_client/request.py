"""Validated generation and classification requests, checked before anything is sent (like TGI's client).

The checks here are the server's rules that don't need the model. The ones that do (a prompt
longer than the context window, ``max_new_tokens`` above the model's cap) are left to the
server, which answers INVALID_ARGUMENT.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attnserve_client.errors import InvalidArgumentError
from attnserve_client.images import encode_image
from attnserve_client.limits import INT32_MAX, MAX_SEED, MAX_STOP_SEQUENCES
from attnserve_client.pb import image_classification_pb2, text_generation_pb2

__all__ = [
    "GENERATE_PARAMETERS",
    "MAX_STOP_SEQUENCES",
    "ClassificationRequest",
    "GenerationRequest",
    "generate_arguments",
]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """The arguments of ``generate`` and ``generate_stream``, validated on construction.

    None means "not set": the field is left out of the protobuf and the model's default applies.

    Raises:
        InvalidArgumentError: an argument breaks one of the rules; the message says which and how.
    """

    prompt: str
    model: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    model_version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt:
            raise InvalidArgumentError("prompt must be a non-empty string")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise InvalidArgumentError("model must be a non-empty string, or None to use the only served model")
        if self.model_version is not None and not isinstance(self.model_version, str):
            raise InvalidArgumentError("model_version must be a string (a version directory name) or None")
        _check_int("max_new_tokens", self.max_new_tokens, low=1, high=INT32_MAX)
        _check_int("top_k", self.top_k, low=0, high=INT32_MAX, hint="0 disables the filter")
        _check_int("seed", self.seed, low=0, high=MAX_SEED)
        _check_float("temperature", self.temperature)
        if self.temperature is not None and self.temperature < 0:
            raise InvalidArgumentError(f"temperature must be >= 0 (0 means greedy decoding), got {self.temperature}")
        _check_float("top_p", self.top_p)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InvalidArgumentError(f"top_p must be in (0, 1] (1 disables the filter), got {self.top_p}")
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise InvalidArgumentError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty}")
        _check_stop(self.stop)
        if not isinstance(self.logprobs, bool):
            raise InvalidArgumentError(f"logprobs must be a bool, got {self.logprobs!r}")

    @classmethod
    def create(
        cls,
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
    ) -> GenerationRequest:
        """Builds and validates a request from the keyword arguments of ``generate``."""
        if isinstance(stop, (str, bytes)):
            # A bare string is a Sequence[str] too: refuse it rather than stop on every character.
            raise InvalidArgumentError(f"stop must be a list of strings, not a single string: use stop=[{stop!r}]")
        return cls(
            prompt=prompt,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=tuple(stop) if stop is not None else (),
            seed=seed,
            logprobs=logprobs,
            model_version=model_version,
        )

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> GenerationRequest:
        """Builds and validates a request from ``generate``'s arguments, given by name.

        ``arguments`` is the ``locals()`` of a ``generate`` method (the clients' methods share
        their signature with :meth:`create`) or the ``vars()`` of the CLI's parsed arguments. Names
        that :meth:`create` does not take (``self``, ``timeout``) are ignored; names that are
        absent keep its defaults.
        """
        return cls.create(**generate_arguments(arguments))

    def to_proto(self, model: str) -> text_generation_pb2.GenerateRequest:
        """The protobuf for ``model``, with only the parameters that were set."""
        parameters = text_generation_pb2.GenerationParameters(stop=self.stop, logprobs=self.logprobs)
        # The scalar fields are proto3 `optional`: assigning one marks it present, so an
        # unset (None) argument stays absent and the server applies the model's default.
        if self.max_new_tokens is not None:
            parameters.max_new_tokens = self.max_new_tokens
        if self.temperature is not None:
            parameters.temperature = self.temperature
        if self.top_k is not None:
            parameters.top_k = self.top_k
        if self.top_p is not None:
            parameters.top_p = self.top_p
        if self.repetition_penalty is not None:
            parameters.repetition_penalty = self.repetition_penalty
        if self.seed is not None:
            parameters.seed = self.seed
        return text_generation_pb2.GenerateRequest(
            model=model,
            prompt=self.prompt,
            parameters=parameters,
            model_version=self.model_version or "",
        )


GENERATE_PARAMETERS: tuple[str, ...] = tuple(inspect.signature(GenerationRequest.create).parameters)
"""The names of ``generate``'s and ``generate_stream``'s arguments, ``timeout`` aside, in order."""


def generate_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``arguments`` that are arguments of ``generate`` (:data:`GENERATE_PARAMETERS`)."""
    return {name: arguments[name] for name in GENERATE_PARAMETERS if name in arguments}


@dataclass(frozen=True, slots=True)
class ClassificationRequest:
    """The arguments of ``classify_batch``, validated and with every image encoded.

    The limits that need the model (``top_k`` up to its number of classes, the number of images
    per request) are the server's to check; it answers INVALID_ARGUMENT.
    """

    images: tuple[bytes, ...]
    model: str | None = None
    top_k: int | None = None
    model_version: str | None = None

    @classmethod
    def create(
        cls, images: Sequence[object], *, model: str | None, top_k: int | None, model_version: str | None
    ) -> ClassificationRequest:
        """Validates the arguments and encodes each image (see :func:`attnserve_client.images.encode_image`)."""
        if isinstance(images, (str, bytes, bytearray, memoryview)) or not isinstance(images, Sequence):
            raise InvalidArgumentError(
                "images must be a list of images; to classify a single image use classify(image)"
            )
        if not images:
            raise InvalidArgumentError("images must hold at least one image")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidArgumentError("model must be a non-empty string, or None to use the only served model")
        if model_version is not None and not isinstance(model_version, str):
            raise InvalidArgumentError("model_version must be a string (a version directory name) or None")
        _check_int("top_k", top_k, low=1, high=INT32_MAX, hint="the number of predictions per image")
        encoded = tuple(encode_image(image, index) for index, image in enumerate(images))
        return cls(images=encoded, model=model, top_k=top_k, model_version=model_version)

    def to_proto(self, model: str) -> image_classification_pb2.ClassifyRequest:
        """The protobuf for ``model``; an unset top_k stays absent (the server's default applies)."""
        message = image_classification_pb2.ClassifyRequest(
            model=model, images=self.images, model_version=self.model_version or ""
        )
        if self.top_k is not None:
            message.top_k = self.top_k
        return message


def _check_int(name: str, value: int | None, *, low: int, high: int, hint: str = "") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if value < low:
        note = f" ({hint})" if hint else ""
        raise InvalidArgumentError(f"{name} must be >= {low}{note}, got {value}")
    if value > high:
        raise InvalidArgumentError(f"{name} must be <= {high}, got {value}")


def _check_float(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value}")


def _check_stop(stop: tuple[str, ...]) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(f"stop takes at most {MAX_STOP_SEQUENCES} strings, got {len(stop)}")
    for item in stop:
        if not isinstance(item, str) or not item:
            raise InvalidArgumentError(f"every stop string must be a non-empty string, got {item!r}")
