"""Next-token sampling in numpy: greedy, temperature, top-k, top-p and a CTRL-style repetition penalty.

Each request owns a seeded ``numpy.random.Generator``, so the same seed, prompt, parameters and
model give the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from attnserve_server.text.params import SamplingParams

FloatArray = npt.NDArray[np.float64]


def log_softmax(logits: npt.NDArray[np.floating]) -> FloatArray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    result: FloatArray = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return result


def apply_repetition_penalty(logits: FloatArray, seen: npt.NDArray[np.bool_], penalty: float) -> FloatArray:
    """CTRL (Keskar et al., 2019): divide positive logits of seen tokens by ``penalty``, multiply negative ones.

    Dividing a negative logit would *raise* its probability, hence the two cases.
    """
    if penalty == 1.0 or not seen.any():
        return logits
    out: FloatArray = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out


def top_k_filter(logits: FloatArray, k: int) -> FloatArray:
    """Keep the ``k`` largest logits (ties at the boundary are kept); ``k == 0`` keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: FloatArray, p: float) -> FloatArray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, kind="stable")
    probs = np.exp(log_softmax(logits[order]))
    cumulative = np.cumsum(probs)
    # A token is kept while the mass *before* it is still below p, so the token that crosses p stays.
    keep_sorted = (cumulative - probs) < p
    keep_sorted[0] = True
    out = np.full_like(logits, -np.inf)
    kept = order[keep_sorted]
    out[kept] = logits[kept]
    return out


class Sampler:
    """Picks tokens for one sequence. Not thread-safe; one per request."""

    def __init__(self, params: SamplingParams, *, seed: int, vocab_size: int, prompt_ids: Iterable[int] = ()) -> None:
        self.params = params
        self._rng = np.random.default_rng(seed)
        self._seen = np.zeros(vocab_size, dtype=np.bool_)
        ids = np.fromiter(prompt_ids, dtype=np.int64)
        self._seen[ids[(ids >= 0) & (ids < vocab_size)]] = True

    def sample(self, logits: npt.NDArray[np.floating]) -> tuple[int, float]:
        """Choose the next token from a ``(vocab,)`` logits row.

        Returns the token and its log-probability under the model's raw distribution (before the
        penalty, temperature and filters), which is what clients compare across settings.
        """
        raw = np.asarray(logits, dtype=np.float64)
        p = self.params
        scores = apply_repetition_penalty(raw, self._seen, p.repetition_penalty)
        if p.temperature == 0.0:
            token = int(np.argmax(scores))
        else:
            scores = top_k_filter(scores / p.temperature, p.top_k)
            scores = top_p_filter(scores, p.top_p)
            probs = np.exp(log_softmax(scores))
            cumulative = np.cumsum(probs)
            # Inverse-CDF draw: one uniform number per token keeps the stream reproducible.
            token = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
            token = min(token, raw.shape[-1] - 1)
        self._seen[token] = True
        return token, float(log_softmax(raw)[token])
