from __future__ import annotations

import numpy as np
import pytest
from attnserve_server.text.params import SamplingParams
from attnserve_server.text.sampler import (
    Sampler,
    apply_repetition_penalty,
    log_softmax,
    top_k_filter,
    top_p_filter,
)

VOCAB = 8
LOGITS = np.array([1.0, 3.0, 2.0, -1.0, 0.5, 2.5, -2.0, 0.0], dtype=np.float32)


def draw(params: SamplingParams, seed: int, n: int = 200, prompt: tuple[int, ...] = ()) -> list[int]:
    sampler = Sampler(params, seed=seed, vocab_size=VOCAB, prompt_ids=prompt)
    return [sampler.sample(LOGITS)[0] for _ in range(n)]


def test_greedy_picks_argmax_whatever_the_seed() -> None:
    for seed in range(5):
        assert draw(SamplingParams(temperature=0.0), seed, n=3) == [1, 1, 1]


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    params = SamplingParams(temperature=1.0)
    assert draw(params, seed=7) == draw(params, seed=7)
    assert draw(params, seed=7) != draw(params, seed=8)


def test_top_k_keeps_only_k_most_likely() -> None:
    assert set(draw(SamplingParams(temperature=1.0, top_k=2), seed=0)) == {1, 5}
    filtered = top_k_filter(LOGITS.astype(np.float64), 3)
    assert np.isfinite(filtered).sum() == 3


def test_top_k_zero_or_larger_than_vocab_keeps_all() -> None:
    logits = LOGITS.astype(np.float64)
    assert np.array_equal(top_k_filter(logits, 0), logits)
    assert np.array_equal(top_k_filter(logits, 100), logits)


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert np.isfinite(top_p_filter(logits, 0.5)).tolist() == [True, False, False, False]
    assert np.isfinite(top_p_filter(logits, 0.6)).tolist() == [True, True, False, False]
    assert np.isfinite(top_p_filter(logits, 0.9)).tolist() == [True, True, True, False]
    assert np.isfinite(top_p_filter(logits, 1.0)).all()


def test_top_p_always_keeps_the_most_likely_token() -> None:
    assert set(draw(SamplingParams(temperature=1.0, top_p=1e-6), seed=0, n=20)) == {1}


def test_repetition_penalty_ctrl_style() -> None:
    logits = np.array([2.0, -2.0, 1.0])
    seen = np.array([True, True, False])
    out = apply_repetition_penalty(logits, seen, 2.0)
    # Positive logits are divided and negative ones multiplied: both become less likely.
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_repetition_penalty_steers_greedy_away_from_prompt_tokens() -> None:
    # Token 1 is the argmax, but it is in the prompt and heavily penalised.
    assert draw(SamplingParams(temperature=0.0, repetition_penalty=10.0), seed=0, n=1, prompt=(1,)) == [5]


def test_repetition_penalty_applies_to_generated_tokens() -> None:
    tokens = draw(SamplingParams(temperature=0.0, repetition_penalty=100.0), seed=0, n=3)
    assert tokens == [1, 5, 2]


def test_logprobs_are_under_the_raw_distribution() -> None:
    expected = log_softmax(LOGITS)
    for params in (
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.3, top_k=2),
        SamplingParams(temperature=2.0, repetition_penalty=3.0),
    ):
        sampler = Sampler(params, seed=1, vocab_size=VOCAB)
        for _ in range(5):
            token, logprob = sampler.sample(LOGITS)
            assert logprob == pytest.approx(expected[token])
            assert logprob <= 0


def test_log_softmax_is_stable_for_large_logits() -> None:
    out = log_softmax(np.array([1000.0, 1000.0]))
    assert np.allclose(out, np.log(0.5))


def test_low_temperature_approaches_greedy_and_high_temperature_spreads() -> None:
    cold = draw(SamplingParams(temperature=0.01), seed=3)
    hot = draw(SamplingParams(temperature=100.0), seed=3)
    assert set(cold) == {1}
    assert len(set(hot)) >= 6
