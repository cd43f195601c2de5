"""A loaded encoder–decoder: the encoder graph per admission, the decoder graph per step.

It plugs into the text task's continuous batcher as a :class:`TextGenerator` whose KV cache
(:class:`Seq2SeqKVCache`) also holds, per slot, the cross-attention keys and values of the
sequence's source. "Prefill" of a sequence is: encode its source into its slot, then run the
decoder on ``<s>`` to get the first token's logits. Decode steps then never touch the source
again: its keys and values stay in the slot until the sequence leaves.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np
import numpy.typing as npt

from attnserve_server.errors import InvalidArgumentError
from attnserve_server.runtime import OrtSession
from attnserve_server.text.generator import TextGenerator, TextModelSpec
from attnserve_server.text.kv_cache import FloatArray, KVCache, SharedBufferKVCache
from attnserve_server.text.params import GenerationParams
from attnserve_server.text.tokenizer import TextTokenizer
from attnserve_server.text2text.metadata import Text2TextGenerationMetadata

# Unknown tags are listed back to the client only up to this many characters.
_MAX_TAG_ECHO = 32


def check_target_tag(meta: Text2TextGenerationMetadata, source: str) -> None:
    """A model with target tags needs its source to start with one; INVALID_ARGUMENT says which."""
    tags = meta.target_tags
    if not tags:
        return
    first = source.split(maxsplit=1)[0] if source.strip() else ""
    if first not in tags:
        shown = first if len(first) <= _MAX_TAG_ECHO else first[:_MAX_TAG_ECHO] + "..."
        raise InvalidArgumentError(
            f"the source must start with a target-language tag, one of {', '.join(tags)}, then the text "
            f"(e.g. {tags[0]!r} + ' ...'); it starts with {shown!r}"
        )


class Seq2SeqGenerator(TextGenerator):
    """The decoder step as the text task's generator, plus the encoder and the source's rules."""

    chunked_prefill = False  # a source is encoded whole, in one call

    def __init__(
        self,
        spec: TextModelSpec,
        session: OrtSession,
        tokenizer: TextTokenizer,
        executor: Executor,
        *,
        encoder: OrtSession,
        meta: Text2TextGenerationMetadata,
    ) -> None:
        super().__init__(spec, session, tokenizer, executor)
        self.encoder = encoder
        self.meta = meta
        layers = range(meta.num_decoder_layers)
        names = meta.encoder
        self.cross_key_names = tuple(names.cross_key_template.format(layer=i) for i in layers)
        self.cross_value_names = tuple(names.cross_value_template.format(layer=i) for i in layers)

    @property
    def source_context_length(self) -> int:
        return self.meta.source_context_length

    @property
    def max_prompt_bytes(self) -> int:
        return self.meta.source_context_length * self.tokenizer.max_token_bytes

    def describe(self) -> str:
        return f"source {self.meta.source_context_length} tokens, target {self.spec.context_length}"

    def new_kv_cache(self, slots: int) -> KVCache:
        return Seq2SeqKVCache(self, slots)

    def output_context(self, prompt_ids: list[int]) -> list[int]:
        """The target starts fresh: the source is neither detokenizer context nor penalised by repetition."""
        return []

    def fit(self, params: GenerationParams, prompt_tokens: int) -> int:
        """Tokens to generate: the target (after ``<s>``) must fit the decoder's context, whatever the source."""
        if prompt_tokens > self.meta.source_context_length:
            raise InvalidArgumentError(
                f"the source is {prompt_tokens} tokens but this model's encoder reads at most "
                f"{self.meta.source_context_length}; shorten it"
            )
        room = self.spec.context_length - 1  # position 0 holds <s>
        if params.max_new_tokens <= room:
            return params.max_new_tokens
        if params.max_new_tokens_explicit:
            raise InvalidArgumentError(
                f"max_new_tokens ({params.max_new_tokens}) exceeds the {room} tokens this model's decoder can "
                f"write; lower max_new_tokens to at most {room}"
            )
        return room

    async def encode(self, prompt: str) -> list[int]:
        """Check the target tag, then tokenize (bounded as for any text model)."""
        check_target_tag(self.meta, prompt)
        return await super().encode(prompt)

    def run_encoder(self, source_ids: npt.NDArray[np.int64], source_mask: npt.NDArray[np.int64]) -> list[FloatArray]:
        """Cross keys and values per decoder layer, in order key 0, value 0, key 1, ... each ``(B, nh, S, hs)``."""
        names = self.meta.encoder
        outputs = [n for pair in zip(self.cross_key_names, self.cross_value_names, strict=True) for n in pair]
        return self.encoder.run(outputs, {names.source_ids: source_ids, names.source_mask: source_mask})


class Seq2SeqKVCache(SharedBufferKVCache):
    """The decoder's in-place self-attention cache, and each slot's source: cross keys, values and mask."""

    def __init__(self, generator: Seq2SeqGenerator, slots: int) -> None:
        super().__init__(generator, slots)
        self._seq2seq = generator
        spec = generator.spec
        shape = (slots, spec.num_heads, generator.source_context_length, spec.head_dim)
        self._cross = [np.zeros(shape, dtype=np.float32) for _ in range(2 * spec.num_layers)]  # k0, v0, k1, ...
        self._source_mask = np.zeros((slots, generator.source_context_length), dtype=np.int64)

    def _extra_inputs(self, rows: slice) -> dict[str, npt.NDArray[np.generic]]:
        generator = self._seq2seq
        # The full source width of each slot: padding columns are masked, and slicing would copy.
        feed: dict[str, npt.NDArray[np.generic]] = {generator.meta.encoder.source_mask: self._source_mask[rows]}
        for layer in range(generator.spec.num_layers):
            feed[generator.cross_key_names[layer]] = self._cross[2 * layer][rows]
            feed[generator.cross_value_names[layer]] = self._cross[2 * layer + 1][rows]
        return feed

    def _swap(self, a: int, b: int) -> None:
        super()._swap(a, b)
        buffers: list[npt.NDArray[np.generic]] = [*self._cross, self._source_mask]
        for buffer in buffers:
            held = buffer[a].copy()
            buffer[a] = buffer[b]
            buffer[b] = held

    def prefill_many(self, chunks: Sequence[tuple[int, Sequence[int]]]) -> FloatArray:
        """The sources admitted in one step: ONE encoder call over them (right-padded, masked), their
        cross keys and values into their slots, then ONE decoder call on ``<s>`` for all of them.

        Returns the logits of each sequence's first target token, in the order of ``chunks``.
        """
        generator = self._seq2seq
        for _, token_ids in chunks:
            if not 0 < len(token_ids) <= generator.source_context_length:
                raise ValueError(f"a source of {len(token_ids)} tokens does not fit the encoder")
        seq_ids = [seq_id for seq_id, _ in chunks]
        for seq_id in seq_ids:
            self._slot(seq_id)
        first = self._gather(seq_ids)  # one contiguous range of slots, in slot order below
        by_slot = sorted(range(len(chunks)), key=lambda i: self._slot_of[seq_ids[i]])
        batch, width = len(chunks), max(len(token_ids) for _, token_ids in chunks)
        source = np.full((batch, width), generator.meta.pad_token_id, dtype=np.int64)  # (B, S)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, index in enumerate(by_slot):
            token_ids = chunks[index][1]
            source[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        rows = slice(first, first + batch)
        for buffer, value in zip(self._cross, generator.run_encoder(source, mask), strict=True):
            buffer[rows, :, :width] = value  # (B, nh, S, hs)
        self._source_mask[rows] = 0
        self._source_mask[rows, :width] = mask
        for slot in range(first, first + batch):
            self._lengths[slot] = 0
        start = np.full((batch, 1), generator.meta.bos_token_id, dtype=np.int64)
        logits = self._run(first, start, [0] * batch)
        for slot in range(first, first + batch):
            self._lengths[slot] = 1
        ordered: FloatArray = np.empty_like(logits)
        ordered[by_slot] = logits  # back to the order of chunks
        return ordered
