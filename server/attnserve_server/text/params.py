"""Domain types for a text-generation request, and their validation.

Every check here runs before any model work, and each failure says what to change.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

from attnserve_client.limits import MAX_SEED, MAX_STOP_SEQUENCES
from attnserve_server.errors import InvalidArgumentError


class FinishReason(enum.Enum):
    """Why a generation ended."""

    LENGTH = "length"  # max_new_tokens reached, or the context window is full
    STOP = "stop"  # a stop string was produced
    END_OF_TEXT = "end_of_text"  # the model sampled its end-of-text token


@dataclass(frozen=True)
class GenerationDefaults:
    """What unset request fields take (from the model's metadata)."""

    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


@dataclass(frozen=True)
class RequestedParameters:
    """Sampling settings as the client sent them; ``None`` means "use the model's default"."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """Validated settings that shape the next-token distribution."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class GenerationParams:
    """Validated, fully resolved settings of one generation."""

    max_new_tokens: int
    sampling: SamplingParams
    stop: tuple[str, ...]
    seed: int
    logprobs: bool
    # Whether max_new_tokens came from the request (then it must fit the context window) or from
    # the model's default (then it is shortened to fit).
    max_new_tokens_explicit: bool


@dataclass(frozen=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerationChunk:
    """Tokens decoded since the previous chunk and the text they completed."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    @staticmethod
    def join(chunks: Sequence[GenerationChunk]) -> GenerationChunk:
        """Consecutive chunks of one stream as one: their text, tokens and log-probabilities in order,
        and the last one's finish reason and usage (only the last chunk of a stream has them)."""
        if len(chunks) == 1:
            return chunks[0]
        return GenerationChunk(
            text="".join(c.text for c in chunks),
            token_ids=tuple(t for c in chunks for t in c.token_ids),
            logprobs=tuple(p for c in chunks for p in c.logprobs),
            finish_reason=chunks[-1].finish_reason,
            usage=chunks[-1].usage,
        )


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidArgumentError(f"parameters.{name} must be a finite number, got {value}")
    return value


def resolve_parameters(
    requested: RequestedParameters, defaults: GenerationDefaults, *, max_new_tokens_limit: int, seed: int
) -> GenerationParams:
    """Validate the request's parameters and fill unset ones from the model's defaults.

    ``seed`` is used when the request carries none.
    """
    if requested.max_new_tokens is not None:
        max_new_tokens = requested.max_new_tokens
        if max_new_tokens <= 0:
            raise InvalidArgumentError(f"parameters.max_new_tokens must be at least 1, got {max_new_tokens}")
        if max_new_tokens > max_new_tokens_limit:
            raise InvalidArgumentError(
                f"parameters.max_new_tokens must be at most {max_new_tokens_limit} for this model, got {max_new_tokens}"
            )
    else:
        max_new_tokens = min(defaults.max_new_tokens, max_new_tokens_limit)

    temperature = _finite(
        "temperature", defaults.temperature if requested.temperature is None else requested.temperature
    )
    if temperature < 0:
        raise InvalidArgumentError(f"parameters.temperature must be >= 0 (0 is greedy), got {temperature}")
    top_k = defaults.top_k if requested.top_k is None else requested.top_k
    if top_k < 0:
        raise InvalidArgumentError(f"parameters.top_k must be >= 0 (0 disables it), got {top_k}")
    top_p = _finite("top_p", defaults.top_p if requested.top_p is None else requested.top_p)
    if not 0 < top_p <= 1:
        raise InvalidArgumentError(f"parameters.top_p must be in (0, 1] (1 disables it), got {top_p}")
    penalty = _finite(
        "repetition_penalty",
        defaults.repetition_penalty if requested.repetition_penalty is None else requested.repetition_penalty,
    )
    if penalty <= 0:
        raise InvalidArgumentError(f"parameters.repetition_penalty must be > 0 (1 disables it), got {penalty}")

    if len(requested.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(
            f"parameters.stop takes at most {MAX_STOP_SEQUENCES} strings, got {len(requested.stop)}"
        )
    if any(s == "" for s in requested.stop):
        raise InvalidArgumentError("parameters.stop must not contain an empty string")

    # The typed API's seed is a uint64; the v2 API's parameters are int64, so a negative one is possible.
    if requested.seed is not None and not 0 <= requested.seed <= MAX_SEED:
        raise InvalidArgumentError(f"parameters.seed must be in [0, 2**64 - 1], got {requested.seed}")

    return GenerationParams(
        max_new_tokens=max_new_tokens,
        sampling=SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty),
        stop=requested.stop,
        seed=seed if requested.seed is None else requested.seed,
        logprobs=requested.logprobs,
        max_new_tokens_explicit=requested.max_new_tokens is not None,
    )


def fit_context(params: GenerationParams, prompt_tokens: int, context_length: int) -> int:
    """The number of tokens to generate so that prompt plus completion fit the context window."""
    if prompt_tokens == 0:
        raise InvalidArgumentError("prompt must not be empty")
    room = context_length - prompt_tokens
    if room <= 0:
        raise InvalidArgumentError(
            f"prompt is {prompt_tokens} tokens but the model's context window is {context_length}; shorten the prompt"
        )
    if params.max_new_tokens <= room:
        return params.max_new_tokens
    if params.max_new_tokens_explicit:
        raise InvalidArgumentError(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the model's "
            f"context window of {context_length} tokens; lower max_new_tokens to at most {room} or shorten the prompt"
        )
    return room
