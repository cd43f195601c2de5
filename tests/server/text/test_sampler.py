from __future__ import annotations

import numpy as np
import pytest

from attnserve_server.text.params import SamplingParams
from attnserve_server.text.sampler import (
    Sampler,
    apply_repetition_penalty,
    log_softmax,
    top_k_indices,
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
    assert top_k_indices(LOGITS.astype(np.float64), 3).tolist() == [1, 5, 2]  # most likely first


def test_top_k_zero_or_larger_than_vocab_keeps_all() -> None:
    logits = LOGITS.astype(np.float64)
    assert top_k_indices(logits, 0).tolist() == list(range(VOCAB))
    assert top_k_indices(logits, 100).tolist() == list(range(VOCAB))


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


@pytest.mark.parametrize("top_k", [0, 3000])
def test_top_p_over_a_large_vocabulary_matches_the_full_sort(top_k: int) -> None:
    rng = np.random.default_rng(0)
    vocab = 5000
    peaked = rng.standard_normal(vocab)
    peaked[:5] = [9.0, 8.5, 8.0, 7.5, 7.0]  # the nucleus is among the best few
    flat = rng.standard_normal(vocab) * 0.01  # the nucleus spans most of the vocabulary
    for logits, p in ((peaked, 0.6), (flat, 0.9)):
        filtered = top_k_indices(logits, top_k) if top_k else np.arange(vocab)
        restricted = np.full(vocab, -np.inf)
        restricted[filtered] = logits[filtered]
        nucleus = set(np.flatnonzero(np.isfinite(top_p_filter(restricted, p))).tolist())
        sampler = Sampler(SamplingParams(temperature=1.0, top_k=top_k, top_p=p), seed=0, vocab_size=vocab)
        drawn = {sampler.sample(logits)[0] for _ in range(300)}
        assert drawn <= nucleus
        if len(nucleus) < 10:
            assert drawn == nucleus
