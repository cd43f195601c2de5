"""``embed``: the request (validated before it is sent) and the typed result of EmbeddingService.Embed.

Strings are texts; an image is anything :func:`~attnserve_client.images.encode_image` takes except
a plain ``str`` (pass an image file as a ``pathlib.Path``). Vectors come back as numpy arrays when
numpy is installed (the ``attnserve-client[images]`` extra), and as lists of floats otherwise.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from attnserve_client.errors import InvalidArgumentError, ServerError
from attnserve_client.images import encode_image
from attnserve_client.limits import INT32_MAX
from attnserve_client.pb import embeddings_pb2

__all__ = ["POOLINGS", "EmbeddingRequest", "Embeddings", "to_embeddings"]

POOLINGS = ("mean", "last", "cls", "none")
_POOLING_TO_PROTO = {
    None: embeddings_pb2.POOLING_UNSPECIFIED,
    "mean": embeddings_pb2.POOLING_MEAN,
    "last": embeddings_pb2.POOLING_LAST,
    "cls": embeddings_pb2.POOLING_CLS,
    "none": embeddings_pb2.POOLING_NONE,
}
_POOLING_FROM_PROTO = {number: name for name, number in _POOLING_TO_PROTO.items() if name is not None}


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """The arguments of ``embed``, validated, with every image encoded."""

    texts: tuple[str, ...] = ()
    images: tuple[bytes, ...] = ()
    model: str | None = None
    pooling: str | None = None
    layer: int | None = None
    normalize: bool = False
    model_version: str | None = None

    @classmethod
    def create(
        cls,
        inputs: Sequence[object],
        *,
        model: str | None,
        pooling: str | None,
        layer: int | None,
        normalize: bool,
        model_version: str | None,
    ) -> EmbeddingRequest:
        if isinstance(inputs, (str, bytes, bytearray, memoryview, os.PathLike)) or not isinstance(inputs, Sequence):
            raise InvalidArgumentError("inputs must be a list of texts or of images; for one input pass [input]")
        if not inputs:
            raise InvalidArgumentError("inputs must hold at least one text or image")
        if model is not None and (not isinstance(model, str) or not model):
            raise InvalidArgumentError("model must be a non-empty string, or None to use the only served model")
        if model_version is not None and not isinstance(model_version, str):
            raise InvalidArgumentError("model_version must be a string (a version directory name) or None")
        if pooling is not None and pooling not in POOLINGS:
            raise InvalidArgumentError(f"pooling must be one of {', '.join(POOLINGS)} or None, got {pooling!r}")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or abs(layer) > INT32_MAX):
            raise InvalidArgumentError(
                f"layer must be an integer (negative counts from the end) or None, got {layer!r}"
            )
        if not isinstance(normalize, bool):
            raise InvalidArgumentError(f"normalize must be True or False, got {normalize!r}")
        texts = [item for item in inputs if isinstance(item, str)]
        common = {"model": model, "pooling": pooling, "layer": layer, "normalize": normalize}
        if len(texts) == len(inputs):
            return cls(texts=tuple(texts), model_version=model_version, **common)  # type: ignore[arg-type]
        if texts:
            raise InvalidArgumentError("inputs mix texts (str) and images; send one kind per request")
        images = tuple(encode_image(image, index) for index, image in enumerate(inputs))
        return cls(images=images, model_version=model_version, **common)  # type: ignore[arg-type]

    @property
    def is_text(self) -> bool:
        return bool(self.texts)

    def to_proto(self, model: str) -> embeddings_pb2.EmbedRequest:
        message = embeddings_pb2.EmbedRequest(
            model=model,
            texts=self.texts,
            images=self.images,
            pooling=_POOLING_TO_PROTO[self.pooling],
            normalize=self.normalize,
            model_version=self.model_version or "",
        )
        if self.layer is not None:
            message.layer = self.layer
        return message


@dataclass(frozen=True, slots=True)
class Embeddings:
    """What ``embed`` returns.

    Attributes:
        vectors: one input-wise vector per input: a numpy ``(inputs, dim)`` float32 array, or a list
            of lists of floats without numpy.
        tokens: with ``pooling="none"``, one ``(tokens, dim)`` array (or list of lists) per input;
            else None. A ViT's class token comes first.
        token_texts: with ``pooling="none"`` on a text model, each token's text, per input; else None.
        pooling: the pooling of ``vectors`` (the model's default when ``"none"`` was asked for).
        layer: the layer the vectors come from, counted from 0 (the input embedding).
        dim: the vectors' length.
        model_version: the version that answered.
    """

    vectors: Any
    tokens: list[Any] | None
    token_texts: list[list[str]] | None
    pooling: str
    layer: int
    dim: int
    model_version: str


def _numpy() -> Any:
    try:
        return importlib.import_module("numpy")
    except ImportError:
        return None


def to_embeddings(
    response: embeddings_pb2.EmbedResponse, *, inputs: int, texts: bool, numpy: Any = "auto"
) -> Embeddings:
    """The typed result of a response to a request of ``inputs`` inputs (numpy arrays if numpy imports;
    ``numpy=None`` forces lists)."""
    np = _numpy() if numpy == "auto" else numpy
    if len(response.embeddings) != inputs:
        raise ServerError(f"the server returned {len(response.embeddings)} embeddings for {inputs} inputs")
    rows = [list(e.vector) for e in response.embeddings]
    tokens: list[Any] | None = None
    token_texts: list[list[str]] | None = None
    if response.token_wise:
        tokens = [[list(t.vector) for t in e.tokens] for e in response.embeddings]
        if np is not None:
            tokens = [np.asarray(t, dtype=np.float32).reshape(len(t), response.dim) for t in tokens]
        if texts:
            token_texts = [[t.text for t in e.tokens] for e in response.embeddings]
    vectors: Any = np.asarray(rows, dtype=np.float32).reshape(inputs, response.dim) if np is not None else rows
    return Embeddings(
        vectors=vectors,
        tokens=tokens,
        token_texts=token_texts,
        pooling=_POOLING_FROM_PROTO.get(response.pooling, "unknown"),
        layer=response.layer,
        dim=response.dim,
        model_version=response.model_version,
    )
