"""A loaded text model: what its ONNX graph looks like, and single calls of it.

The generation loop (every active sequence of a model, one batched decode call per step) is in
:mod:`attnserve_server.text.continuous`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.runtime import OrtSession
from attnserve_server.text.kv_cache import ConcatKVCache, KVCache, SharedBufferKVCache
from attnserve_server.text.metadata import KVCacheLayout
from attnserve_server.text.params import GenerationParams, fit_context
from attnserve_server.text.tokenizer import TextTokenizer

Int64Array = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


# Prompts up to this many characters are tokenized on the event loop (tens of microseconds).
INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class TextModelSpec:
    """What the loop needs to know about a model's ONNX graph (from its metadata)."""

    context_length: int
    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    input_ids_name: str
    attention_mask_name: str
    position_ids_name: str
    logits_name: str
    past_key_names: tuple[str, ...]
    past_value_names: tuple[str, ...]
    present_key_names: tuple[str, ...]
    present_value_names: tuple[str, ...]
    eos_token_id: int | None
    pad_token_id: int
    # "concat": past in, past + new out (attention_mask over both). "shared_buffer": preallocated
    # per-sequence buffers updated in place; per-sequence lengths in seqlens_k (docs/model-repository.md).
    kv_cache_layout: KVCacheLayout = "concat"
    seqlens_k_name: str = "seqlens_k"
    total_sequence_length_name: str = "total_sequence_length"

    @property
    def output_names(self) -> tuple[str, ...]:
        """Logits, then the present key and value of each layer in order."""
        names = [self.logits_name]
        for key, value in zip(self.present_key_names, self.present_value_names, strict=True):
            names += [key, value]
        return tuple(names)


class TextGenerator:
    """One loaded text model: its graph's tensor names, its session and its tokenizer.

    Generation itself runs in :mod:`attnserve_server.text.continuous`, which batches every
    active sequence of the model into one call per step through a :mod:`~attnserve_server.text.kv_cache`.
    """

    # Whether a long prompt may be fed over several steps (an encoder-decoder encodes its source whole).
    chunked_prefill = True

    def __init__(self, spec: TextModelSpec, session: OrtSession, tokenizer: TextTokenizer, executor: Executor) -> None:
        self.spec = spec
        self.session = session
        self.tokenizer = tokenizer
        self._executor = executor

    def new_kv_cache(self, slots: int) -> KVCache:
        """A cache for up to ``slots`` sequences, in the layout the graph was exported with."""
        if self.spec.kv_cache_layout == "shared_buffer":
            return SharedBufferKVCache(self, slots)
        return ConcatKVCache(self)

    @property
    def max_prompt_bytes(self) -> int:
        """No prompt longer than this (in UTF-8 bytes) can fit the context: it is refused untokenized."""
        return self.spec.context_length * self.tokenizer.max_token_bytes

    async def encode(self, prompt: str) -> list[int]:
        """Tokenize; a long prompt off the event loop, where it cannot stall other streams.

        A prompt that cannot fit the context is refused before any tokenizing, so the work is
        bounded whatever the client sends. A short prompt takes microseconds in the Rust tokenizer,
        far less than the hop to a worker thread and back, and that hop would sit on every
        request's time to first token.
        """
        limit = self.max_prompt_bytes
        # A character is 1 to 4 UTF-8 bytes: only a prompt between limit / 4 and limit characters
        # long needs encoding to tell.
        too_long = len(prompt) > limit or (4 * len(prompt) > limit and len(prompt.encode("utf-8")) > limit)
        if too_long:
            raise InvalidArgumentError(
                f"the prompt is longer than any prompt that fits this model's context of "
                f"{self.spec.context_length} tokens ({limit} bytes at most); shorten it"
            )
        if len(prompt) <= INLINE_TOKENIZE_CHARS:
            return self.tokenizer.encode(prompt)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.tokenizer.encode, prompt)

    def describe(self) -> str:
        """For the load log line."""
        return f"context {self.spec.context_length}"

    def output_context(self, prompt_ids: list[int]) -> list[int]:
        """Tokens the output continues: the detokenizer's left context and the repetition penalty's history."""
        return prompt_ids

    def fit(self, params: GenerationParams, prompt_tokens: int) -> int:
        """Tokens to generate so that prompt plus completion fit the context window."""
        return fit_context(params, prompt_tokens, self.spec.context_length)

    def empty_past(self, batch: int) -> list[FloatArray]:
        """Zero-length KV cache for a prefill call: each ``(B, nh, 0, hs)``."""
        shape = (batch, self.spec.num_heads, 0, self.spec.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.spec.num_layers)]

    def forward(
        self, input_ids: Int64Array, attention_mask: Int64Array, position_ids: Int64Array, past: Sequence[FloatArray]
    ) -> tuple[FloatArray, list[FloatArray]]:
        """One call of a ``concat``-layout graph: the last position's logits ``(B, vocab)`` and the new cache."""
        spec = self.spec
        feed: dict[str, npt.NDArray[np.generic]] = {
            spec.input_ids_name: input_ids,  # (B, T)
            spec.attention_mask_name: attention_mask,  # (B, past_len + T)
            spec.position_ids_name: position_ids,  # (B, T)
        }
        for layer in range(spec.num_layers):
            feed[spec.past_key_names[layer]] = past[2 * layer]  # (B, nh, past_len, hs)
            feed[spec.past_value_names[layer]] = past[2 * layer + 1]
        logits, *present = self.session.run(spec.output_names, feed)
        return logits[:, -1, :], present  # (B, T, V) -> (B, V)
