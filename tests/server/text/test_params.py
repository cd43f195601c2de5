from __future__ import annotations

import math

import pytest

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.text.params import (
    GenerationDefaults,
    RequestedParameters,
    fit_context,
    resolve_parameters,
)

DEFAULTS = GenerationDefaults(max_new_tokens=20, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.1)


def resolve(**kwargs: object) -> object:
    return resolve_parameters(RequestedParameters(**kwargs), DEFAULTS, max_new_tokens_limit=48, seed=123)  # type: ignore[arg-type]


def test_unset_fields_take_the_defaults() -> None:
    params = resolve_parameters(RequestedParameters(), DEFAULTS, max_new_tokens_limit=48, seed=5)
    assert params.max_new_tokens == 20
    assert params.sampling.temperature == 0.8
    assert params.sampling.top_k == 40
    assert params.sampling.top_p == 0.9
    assert params.sampling.repetition_penalty == 1.1
    assert params.seed == 5
    assert not params.max_new_tokens_explicit


def test_request_values_win_and_zero_is_a_real_value() -> None:
    params = resolve_parameters(
        RequestedParameters(max_new_tokens=3, temperature=0.0, top_k=0, seed=0),
        DEFAULTS,
        max_new_tokens_limit=48,
        seed=5,
    )
    assert (params.max_new_tokens, params.sampling.temperature, params.sampling.top_k, params.seed) == (3, 0.0, 0, 0)


def test_default_max_new_tokens_is_capped_by_the_limit() -> None:
    params = resolve_parameters(RequestedParameters(), DEFAULTS, max_new_tokens_limit=7, seed=0)
    assert params.max_new_tokens == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 49}, "at most 48"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": math.inf}, "top_p"),
        ({"repetition_penalty": -math.inf}, "repetition_penalty"),
        ({"stop": ("a", "b", "c", "d", "e")}, "at most 4"),
        ({"stop": ("a", "")}, "empty"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        resolve(**kwargs)


def test_fit_context() -> None:
    explicit = resolve_parameters(RequestedParameters(max_new_tokens=10), DEFAULTS, max_new_tokens_limit=48, seed=0)
    default = resolve_parameters(RequestedParameters(), DEFAULTS, max_new_tokens_limit=48, seed=0)
    assert fit_context(explicit, prompt_tokens=54, context_length=64) == 10
    with pytest.raises(InvalidArgumentError, match="context window"):
        fit_context(explicit, prompt_tokens=55, context_length=64)
    # A default max_new_tokens is shortened to fit rather than refused.
    assert fit_context(default, prompt_tokens=60, context_length=64) == 4
    with pytest.raises(InvalidArgumentError, match="shorten the prompt"):
        fit_context(default, prompt_tokens=64, context_length=64)
    with pytest.raises(InvalidArgumentError, match="empty"):
        fit_context(default, prompt_tokens=0, context_length=64)
