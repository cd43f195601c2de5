"""Typed results: what the client returns instead of protobuf messages."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "FinishReason",
    "Generation",
    "GenerationChunk",
    "GenerationDefaults",
    "ImageClassificationInfo",
    "ImageInputSpec",
    "ModelCounters",
    "ModelInfo",
    "Prediction",
    "Text2TextGenerationInfo",
    "TextGenerationInfo",
    "Usage",
]


class FinishReason(str, enum.Enum):
    """Why a generation ended."""

    LENGTH = "length"
    """``max_new_tokens`` was reached, or the context window is full."""
    STOP = "stop"
    """A stop string was produced (it is not part of the text)."""
    END_OF_TEXT = "end_of_text"
    """The model produced its end-of-text token."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Generation:
    """The result of :meth:`Client.generate`.

    Attributes:
        text: the completion, without the prompt and without any stop string.
        finish_reason: why the generation ended.
        usage: prompt and completion token counts.
        token_ids: ids of the generated tokens (including those of a stop string that was cut).
        logprobs: one natural-log probability per ``token_ids`` entry, or None if the request
            did not ask for them (``logprobs=False``).
        seed: the seed that was used; pass it back to reproduce this text.
        model: the model that served the request.
        model_version: the version that served the request.
    """

    text: str
    finish_reason: FinishReason
    usage: Usage
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    seed: int
    model: str
    model_version: str


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One piece of a streamed generation (:meth:`Client.generate_stream`).

    Attributes:
        text: text decoded since the previous chunk (never a split character, never part of
            a stop string).
        token_ids: ids of the tokens decoded since the previous chunk.
        logprobs: one per ``token_ids`` entry, or None if the request did not ask for them.
        finish_reason: set on the last chunk only, None before it.
        usage: set on the last chunk only, None before it.
        seed: the seed that was used, on the first chunk only (None after it).
        model: the model that serves the request.
        model_version: the version that serves the request.
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    finish_reason: FinishReason | None
    usage: Usage | None
    seed: int | None
    model: str
    model_version: str

    @property
    def is_last(self) -> bool:
        """True on the chunk that ends the stream."""
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class GenerationDefaults:
    """The values that a request's unset sampling parameters take."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


@dataclass(frozen=True, slots=True)
class TextGenerationInfo:
    """What a text-generation model accepts.

    Attributes:
        context_length: maximum number of tokens (prompt plus completion) the model attends to.
        vocab_size: number of tokens in the vocabulary.
        defaults: the values that unset sampling parameters take.
        max_new_tokens_limit: the largest ``max_new_tokens`` a request may ask for.
        eos_token: the tokenizer's end-of-text token, or None if it has none.
    """

    context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    eos_token: str | None


@dataclass(frozen=True, slots=True)
class Prediction:
    """One class of one classified image (:meth:`Client.classify`).

    Attributes:
        label: the class name.
        index: the class's index in the model's output.
        score: its softmax probability, in [0, 1].
    """

    label: str
    index: int
    score: float


@dataclass(frozen=True, slots=True)
class Text2TextGenerationInfo:
    """What an encoder-decoder (task ``text2text-generation``) accepts.

    Attributes:
        source_context_length: maximum number of source (prompt) tokens the encoder reads.
        target_context_length: maximum number of target tokens the decoder attends to, start token included.
        vocab_size: number of tokens in the vocabulary.
        defaults: the values that unset sampling parameters take.
        max_new_tokens_limit: the largest ``max_new_tokens`` a request may ask for.
        target_tags: tags a source must start with to choose the output language (e.g. ``<2en>``); empty if none.
    """

    source_context_length: int
    target_context_length: int
    vocab_size: int
    defaults: GenerationDefaults
    max_new_tokens_limit: int
    target_tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ImageInputSpec:
    """How the server turns an encoded image into the model's input.

    Attributes:
        channels: 1 (the image is converted to grey) or 3 (RGB).
        height: the model's input height in pixels.
        width: the model's input width in pixels.
        resample: the Pillow filter used to resize, e.g. ``"bicubic"``.
        resize_policy: ``"resize"`` (stretch), ``"resize_center_crop"`` (timm's) or
            ``"resize_then_center_crop"`` (transformers' image processors).
        mean: per-channel mean subtracted from pixel values scaled to [0, 1].
        std: per-channel standard deviation they are divided by.
    """

    channels: int
    height: int
    width: int
    resample: str
    resize_policy: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class ImageClassificationInfo:
    """What an image-classification model accepts and returns.

    Attributes:
        labels: the class names, by output index.
        input: how images are preprocessed for the model.
        max_images_per_request: the most images one ``classify_batch`` call may carry.
    """

    labels: tuple[str, ...]
    input: ImageInputSpec
    max_images_per_request: int


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """Live counters since the server started, over all versions of a model.

    ``tokens_generated`` stays 0 for image-classification models. ``batches`` and
    ``batched_items`` count the ONNX Runtime calls of an image model's dynamic batcher and the
    images they classified (``batched_items / batches`` is the mean batch size); 0 for text models.
    """

    requests: int
    tokens_generated: int
    failures: int
    batches: int = 0
    batched_items: int = 0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A served model.

    Attributes:
        name: the name to pass as ``model=``.
        task: ``"text-generation"`` or ``"image-classification"``.
        versions: loaded versions, oldest first.
        default_version: the version served when a request names none.
        description: free-form description from the model's metadata.
        counters: live request and token counters.
        text_generation: details of a text-generation model, None for other tasks.
        image_classification: details of an image-classification model, None for other tasks.
        text2text_generation: details of an encoder-decoder (text2text-generation) model, None for other tasks.
        state: the load state, ``"READY"`` while it serves (empty from servers that do not report it).
        state_reason: why, when there is something to know (e.g. a failed reload while the previous one serves).
    """

    name: str
    task: str
    versions: tuple[str, ...]
    default_version: str
    description: str
    counters: ModelCounters
    text_generation: TextGenerationInfo | None
    image_classification: ImageClassificationInfo | None = None
    state: str = ""
    state_reason: str = ""
    text2text_generation: Text2TextGenerationInfo | None = None
