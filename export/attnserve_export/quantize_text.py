"""What int8 costs a text generator, measured through the server's own KV-cache path.

Both graphs are loaded as the server loads them (its tokenizer wrapper, its ONNX Runtime
session options, its :mod:`~attnserve_server.text.kv_cache` classes), so the figures hold for
either KV cache layout and are the figures of what is served:

- bits per character of the test split: each scoring window's history is prefilled in one call,
  then every later token is fed by batched decode steps, as generation feeds them;
- greedy agreement: ``prompts`` test prompts decoded greedily by both graphs, batched;
- speed cases: decode steps at batch 1 and 16 and a prefill, fed straight to the graph (in place
  for ``shared_buffer``, through the concat inputs otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from attnserve_export.text_data import Document
from attnserve_export.train import scoring_windows
from attnserve_server.runtime import OrtSession, RuntimeOptions
from attnserve_server.text.generator import TextGenerator
from attnserve_server.text.kv_cache import KVCache
from attnserve_server.text.loader import model_spec
from attnserve_server.text.metadata import TextGenerationMetadata
from attnserve_server.text.tokenizer import TextTokenizer

SCORING_SLOTS = 16  # windows scored side by side: one batched decode call feeds them all
AGREEMENT_PROMPTS = 100
AGREEMENT_PROMPT_TOKENS = 32
AGREEMENT_NEW_TOKENS = 32

Feed = dict[str, npt.NDArray[np.generic]]


def load_generator(
    version_dir: Path, model_file: Path, meta: TextGenerationMetadata, *, threads: int, executor: Executor
) -> TextGenerator:
    """The graph at ``model_file`` with the tokenizer of ``version_dir``, loaded as the server loads it."""
    tokenizer = TextTokenizer.from_file(version_dir / meta.tokenizer_file)
    spec = model_spec(version_dir.parent.name, meta, tokenizer)
    session = OrtSession(model_file, RuntimeOptions(intra_op_threads=threads))
    return TextGenerator(spec, session, tokenizer, executor)


def _log_prob(logits: npt.NDArray[np.floating], target: int) -> float:
    wide = logits.astype(np.float64)
    top = float(wide.max())
    return float(wide[target] - top - math.log(float(np.exp(wide - top).sum())))


def kv_cache_bpc(generator: TextGenerator, docs: Sequence[Document], *, slots: int = SCORING_SLOTS) -> float:
    """Bits per character of ``docs`` (nats over every scored token / ln 2 / characters).

    The windows are training's (``train.scoring_windows``, full context sliding by half), each
    document after an end-of-text token. A window's history ``ids[start:first]`` is prefilled in
    one call; its scored tokens are then fed one decode step at a time, ``slots`` windows per call.
    """
    spec = generator.spec
    if spec.eos_token_id is None:
        raise ValueError("scoring needs the model's end-of-text token (eos_token in metadata.json)")
    jobs: list[tuple[list[int], int, int, int]] = []
    chars = 0
    for doc in docs:
        ids = [spec.eos_token_id, *generator.tokenizer.encode(doc.text)]
        chars += len(doc.text)
        stride = max(1, spec.context_length // 2)
        jobs += [(ids, *window) for window in scoring_windows(len(ids), spec.context_length, stride)]
    nats = 0.0
    for group_start in range(0, len(jobs), slots):
        group = jobs[group_start : group_start + slots]
        cache = generator.new_kv_cache(len(group))
        position: dict[int, int] = {}
        for slot, (ids, start, _end, first) in enumerate(group):
            nats -= _log_prob(cache.prefill(slot, ids[start:first]), ids[first])  # predicts ids[first]
            position[slot] = first
        while True:
            live = [slot for slot, (_ids, _start, end, _first) in enumerate(group) if position[slot] < end - 1]
            if not live:
                break
            logits = cache.decode(live, [group[slot][0][position[slot]] for slot in live])
            for row, slot in enumerate(live):
                position[slot] += 1
                nats -= _log_prob(logits[row], group[slot][0][position[slot]])
    return nats / math.log(2) / max(1, chars)


def agreement_prompts(
    generator: TextGenerator,
    docs: Sequence[Document],
    *,
    count: int = AGREEMENT_PROMPTS,
    length: int = AGREEMENT_PROMPT_TOKENS,
) -> list[list[int]]:
    """``count`` prompts of ``length`` tokens, evenly spaced over the test split's token stream."""
    stream: list[int] = []
    for doc in docs:
        stream += generator.tokenizer.encode(doc.text)
    if len(stream) < length:
        raise ValueError(f"the test split has {len(stream)} tokens, fewer than one {length}-token prompt")
    starts = np.linspace(0, len(stream) - length, num=count).astype(int)
    return [stream[s : s + length] for s in starts]


def greedy_tokens(
    generator: TextGenerator, prompts: Sequence[Sequence[int]], new_tokens: int, *, slots: int = SCORING_SLOTS
) -> list[list[int]]:
    """Greedy continuations of every prompt, ``slots`` at a time, through the KV cache (batched
    prefill, then one batched decode call per token), as the server's batcher runs them."""
    out: list[list[int]] = []
    for group_start in range(0, len(prompts), slots):
        group = prompts[group_start : group_start + slots]
        cache: KVCache = generator.new_kv_cache(len(group))
        first = cache.prefill_many([(slot, list(prompt)) for slot, prompt in enumerate(group)])
        tokens = [[int(token)] for token in first.argmax(-1)]
        seq_ids = list(range(len(group)))
        for _ in range(new_tokens - 1):
            logits = cache.decode(seq_ids, [t[-1] for t in tokens])
            for row, generated in enumerate(tokens):
                generated.append(int(np.argmax(logits[row])))
        out += tokens
    return out


def greedy_agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict[str, Any]:
    """How far two sets of greedy continuations of the same prompts agree."""
    same = sum(a == b for a, b in zip(reference, candidate, strict=True))
    prefixes = []
    for a, b in zip(reference, candidate, strict=True):
        diverged = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
        prefixes.append(diverged)
    return {
        "prompts": len(reference),
        "new_tokens": len(reference[0]) if reference else 0,
        "identical_sequences": same,
        "mean_tokens_before_divergence": round(float(np.mean(prefixes)), 2) if prefixes else 0.0,
        "first_token_agreement": sum(a[0] == b[0] for a, b in zip(reference, candidate, strict=True)),
    }


# --- speed cases ----------------------------------------------------------------------------


class InPlaceRunner:
    """``run(None, feed)`` for a ``shared_buffer`` graph: the caches in the feed are bound in place."""

    def __init__(self, generator: TextGenerator) -> None:
        self._session = generator.session
        spec = generator.spec
        self._logits = spec.logits_name
        self._in_place = dict(zip(spec.past_key_names, spec.present_key_names, strict=True))
        self._in_place |= dict(zip(spec.past_value_names, spec.present_value_names, strict=True))

    def run(self, _outputs: object, feed: Feed) -> list[npt.NDArray[np.float32]]:
        return self._session.run_in_place([self._logits], feed, self._in_place)


class ConcatRunner:
    """``run(None, feed)`` for a ``concat`` graph, through the server's session."""

    def __init__(self, generator: TextGenerator) -> None:
        self._session = generator.session
        self._outputs = generator.spec.output_names

    def run(self, _outputs: object, feed: Feed) -> list[npt.NDArray[np.float32]]:
        return self._session.run(self._outputs, feed)


def runner(generator: TextGenerator) -> InPlaceRunner | ConcatRunner:
    return InPlaceRunner(generator) if generator.spec.kv_cache_layout == "shared_buffer" else ConcatRunner(generator)


def speed_feed(generator: TextGenerator, batch: int, past_len: int, new: int) -> Feed:
    """Feeds for ``new`` random tokens per row after ``past_len`` cached positions (zeros: speed only)."""
    spec = generator.spec
    ids = np.random.default_rng(0).integers(0, spec.vocab_size, size=(batch, new), dtype=np.int64)
    positions = np.broadcast_to(np.arange(past_len, past_len + new, dtype=np.int64), (batch, new)).copy()
    feed: Feed = {spec.input_ids_name: ids, spec.position_ids_name: positions}
    if spec.kv_cache_layout == "shared_buffer":
        capacity = spec.context_length  # the server's per-slot buffer
        feed[spec.seqlens_k_name] = np.full((batch,), past_len + new - 1, dtype=np.int32)
        feed[spec.total_sequence_length_name] = np.asarray(past_len + new, dtype=np.int32)
    else:
        capacity = past_len
        feed[spec.attention_mask_name] = np.ones((batch, past_len + new), dtype=np.int64)
    for name in (*spec.past_key_names, *spec.past_value_names):
        feed[name] = np.zeros((batch, spec.num_heads, capacity, spec.head_dim), dtype=np.float32)
    return feed


def speed_cases(generator: TextGenerator) -> dict[str, Feed]:
    """Decode steps at batch 1 and 16 after up to 128 tokens, and a prefill of up to 128 tokens."""
    context = generator.spec.context_length
    past_len = min(128, context - 1)
    prefill = min(128, context)
    return {
        f"decode step at position {past_len}, batch 1": speed_feed(generator, 1, past_len, 1),
        f"decode step at position {past_len}, batch 16": speed_feed(generator, 16, past_len, 1),
        f"prefill of {prefill} tokens": speed_feed(generator, 1, 0, prefill),
    }
