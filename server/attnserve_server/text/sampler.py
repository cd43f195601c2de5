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
IntArray = npt.NDArray[np.intp]


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


def top_k_indices(logits: npt.NDArray[np.floating], k: int) -> IntArray:
    """Indices of the ``k`` largest logits, most likely first; every index (in id order) when ``k`` is 0 or >= vocab."""
    if k <= 0 or k >= logits.shape[-1]:
        return np.arange(logits.shape[-1])
    # argpartition is O(vocab); only the k survivors get sorted.
    top = np.argpartition(logits, -k)[-k:]
    ordered: IntArray = top[np.argsort(-logits[top], kind="stable")]
    return ordered


def _logsumexp(x: FloatArray) -> float:
    peak = float(np.max(x))
    return peak + float(np.log(np.sum(np.exp(x - peak))))


def nucleus(logits: FloatArray, ordered: IntArray, p: float, log_total: float) -> IntArray:
    """The prefix of ``ordered`` (indices, most likely first) whose probability first reaches ``p``.

    Probabilities are ``exp(logits - log_total)``: ``log_total`` is the log of the whole
    distribution's mass, which may include tokens not listed in ``ordered``.
    """
    probs = np.exp(logits[ordered] - log_total)
    # A token is kept while the mass *before* it is still below p, so the token that crosses p stays.
    keep = (np.cumsum(probs) - probs) < p
    keep[0] = True
    kept: IntArray = ordered[keep]
    return kept


def top_p_filter(logits: FloatArray, p: float) -> FloatArray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one)."""
    if p >= 1.0:
        return logits
    finite = np.flatnonzero(np.isfinite(logits))
    ordered = finite[np.argsort(-logits[finite], kind="stable")]
    kept = nucleus(logits, ordered, p, _logsumexp(logits[finite]))
    out = np.full_like(logits, -np.inf)
    out[kept] = logits[kept]
    return out


# With more tokens than this in play, top-p first tries the best few instead of sorting them all.
_NUCLEUS_PROBE = 1024


def _candidates(scaled: FloatArray, top_k: int, top_p: float) -> IntArray:
    """Token ids left after top-k then top-p (top-p renormalises over the top-k survivors, as in HF).

    Sorting a 50k vocabulary costs milliseconds per token. The nucleus is a prefix of the sorted
    order, so when the best ``_NUCLEUS_PROBE`` tokens already hold mass ``top_p`` it lies among
    them and the rest need no sorting.
    """
    vocab = scaled.shape[-1]
    top_k = top_k if 0 < top_k < vocab else 0
    if top_p >= 1.0:
        return top_k_indices(scaled, top_k)  # order does not matter to the draw
    if top_k:
        ordered = top_k_indices(scaled, top_k)
        return nucleus(scaled, ordered, top_p, _logsumexp(scaled[ordered]))
    log_total = _logsumexp(scaled)
    if vocab > _NUCLEUS_PROBE:
        probe = top_k_indices(scaled, _NUCLEUS_PROBE)
        if np.exp(_logsumexp(scaled[probe]) - log_total) >= top_p:
            return nucleus(scaled, probe, top_p, log_total)
    return nucleus(scaled, np.argsort(-scaled, kind="stable"), top_p, log_total)


class Sampler:
    """Picks tokens for one sequence. Not thread-safe; one per request."""

    def __init__(
        self,
        params: SamplingParams,
        *,
        seed: int,
        vocab_size: int,
        prompt_ids: Iterable[int] = (),
        logprobs: bool = True,
    ) -> None:
        self.params = params
        # The log-probability needs a pass over the whole vocabulary (milliseconds for 50k tokens,
        # for every token of every sequence in a batch); skip it when the request did not ask for it.
        self.logprobs = logprobs
        self._rng = np.random.default_rng(seed)
        self._seen = np.zeros(vocab_size, dtype=np.bool_)
        ids = np.fromiter(prompt_ids, dtype=np.int64)
        self._seen[ids[(ids >= 0) & (ids < vocab_size)]] = True

    def sample(self, logits: npt.NDArray[np.floating]) -> tuple[int, float]:
        """Choose the next token from a ``(vocab,)`` logits row.

        Returns the token and its log-probability under the model's raw distribution (before the
        penalty, temperature and filters), which is what clients compare across settings; 0.0 when
        the sampler was made with ``logprobs=False``.
        """
        p = self.params
        scores: npt.NDArray[np.floating] = logits
        if p.repetition_penalty != 1.0 and self._seen.any():
            scores = apply_repetition_penalty(np.asarray(logits, dtype=np.float64), self._seen, p.repetition_penalty)
        if p.temperature == 0.0:
            token = int(np.argmax(scores))
        else:
            # Filters shrink the candidate set first, so the draw touches only the survivors. With
            # top-k, the k survivors are found on the unscaled scores (a positive temperature keeps
            # their order) and only they are widened to float64 and scaled: the same numbers as
            # scaling the whole vocabulary first, for a fraction of the work at a 50k vocabulary.
            if 0 < p.top_k < scores.shape[-1]:
                ordered = top_k_indices(scores, p.top_k)
                scaled = np.asarray(scores[ordered], dtype=np.float64) / p.temperature
                if p.top_p < 1.0:
                    kept = nucleus(scaled, np.arange(len(ordered)), p.top_p, _logsumexp(scaled))
                    candidates, scaled = ordered[kept], scaled[kept]
                else:
                    candidates = ordered
            else:
                wide = np.asarray(scores, dtype=np.float64) / p.temperature
                candidates = _candidates(wide, p.top_k, p.top_p)
                scaled = wide[candidates]
            cumulative = np.cumsum(np.exp(scaled - _logsumexp(scaled)))
            # Inverse-CDF draw: one uniform number per token keeps the stream reproducible.
            pick = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
            token = int(candidates[min(pick, len(candidates) - 1)])
        self._seen[token] = True
        return token, _log_prob(np.asarray(logits, dtype=np.float64), token) if self.logprobs else 0.0


def _log_prob(logits: FloatArray, token: int) -> float:
    """``log_softmax(logits)[token]`` without materialising the whole vector."""
    return float(logits[token]) - _logsumexp(logits)
