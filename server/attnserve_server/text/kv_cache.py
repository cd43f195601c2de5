"""KV caches for batched generation, one class per cache layout a model's graph can have.

The scheduler talks to both through the same calls: ``prefill_many`` (a chunk of the prompt of
each of several sequences, batched where the layout allows), ``prefill`` (one such chunk),
``decode`` (one new token for each of several sequences, in ONE model call) and ``release``.
Each cache knows how many tokens every sequence holds, so positions come from here and never
drift from what the model has seen.

- :class:`SharedBufferKVCache` (layout ``shared_buffer``): the graph's attention operator writes
  the new keys and values into the cache buffer it reads from. The buffers are preallocated per
  sequence slot, bound to ONNX Runtime in place, and no step copies the cache; attention only
  reads each sequence's own length.
- :class:`ConcatKVCache` (layout ``concat``, the original export format): the graph returns
  ``past + new`` as a fresh tensor. Sequences of different lengths are left-padded into one batch
  with the attention mask hiding the padding, so every step copies the whole cache. Kept so that
  older model versions still serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from attnserve_server.text.generator import TextGenerator

FloatArray = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]


class KVCache(Protocol):
    """Per-sequence KV state behind batched model calls. Not thread-safe: one step at a time."""

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> FloatArray:
        """Append a chunk of ``seq_id``'s prompt; return the logits ``(vocab,)`` after its last token."""
        ...

    def prefill_many(self, chunks: Sequence[tuple[int, Sequence[int]]]) -> FloatArray:
        """Append a prompt chunk to each ``(seq_id, token_ids)``; return the logits ``(len(chunks), vocab)``
        after each chunk's last token, in order. The same logits as ``prefill`` one chunk at a time."""
        ...

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> FloatArray:
        """Feed one token to each sequence in one model call; return logits ``(len(seq_ids), vocab)`` in order."""
        ...

    def release(self, seq_id: int) -> None:
        """Forget a sequence (finished, stopped or cancelled). Unknown ids are ignored."""
        ...

    def length(self, seq_id: int) -> int:
        """Tokens of ``seq_id`` in the cache (0 if unknown)."""
        ...


class ConcatKVCache:
    """Each sequence's cache as its own arrays; batches are assembled (left-padded) for every decode."""

    def __init__(self, generator: TextGenerator) -> None:
        self._generator = generator
        self._caches: dict[int, list[FloatArray]] = {}  # per layer key, value: (1, nh, len, hs)

    def length(self, seq_id: int) -> int:
        cache = self._caches.get(seq_id)
        return 0 if cache is None else int(cache[0].shape[2])

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> FloatArray:
        start = self.length(seq_id)
        past = self._caches.get(seq_id) or self._generator.empty_past(batch=1)
        n = len(token_ids)
        logits, present = self._generator.forward(
            np.asarray([token_ids], dtype=np.int64),  # (1, T)
            np.ones((1, start + n), dtype=np.int64),  # (1, past_len + T)
            np.arange(start, start + n, dtype=np.int64)[None, :],  # (1, T)
            past,
        )
        self._caches[seq_id] = present
        result: FloatArray = logits[0]
        return result

    def prefill_many(self, chunks: Sequence[tuple[int, Sequence[int]]]) -> FloatArray:
        # One call per chunk: left-padding prompts would put padding inside each sequence's cache.
        return np.stack([self.prefill(seq_id, ids) for seq_id, ids in chunks])

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> FloatArray:
        lengths = [self.length(s) for s in seq_ids]
        batch, longest = len(seq_ids), max(lengths)
        spec = self._generator.spec
        # Left-pad every sequence's cache to the longest one; the mask hides the padding.
        past = [
            np.zeros((batch, spec.num_heads, longest, spec.head_dim), dtype=np.float32)
            for _ in range(2 * spec.num_layers)
        ]
        mask = np.ones((batch, longest + 1), dtype=np.int64)  # (B, past_len + 1)
        for row, (seq_id, length) in enumerate(zip(seq_ids, lengths, strict=True)):
            mask[row, : longest - length] = 0
            for tensor, own in zip(past, self._caches[seq_id], strict=True):
                tensor[row, :, longest - length :] = own[0]  # (nh, len, hs)
        logits, present = self._generator.forward(
            np.asarray(tokens, dtype=np.int64)[:, None],  # (B, 1)
            mask,
            np.asarray(lengths, dtype=np.int64)[:, None],  # (B, 1): each sequence's own position
            past,
        )
        for row, (seq_id, length) in enumerate(zip(seq_ids, lengths, strict=True)):
            # Views into this step's present tensors, without the padding columns.
            self._caches[seq_id] = [p[row : row + 1, :, longest - length :] for p in present]
        return logits

    def release(self, seq_id: int) -> None:
        self._caches.pop(seq_id, None)


class SharedBufferKVCache:
    """Preallocated ``(slots, nh, capacity, hs)`` buffers per layer that the graph updates in place
    (``capacity`` grows by doubling up to ``context_length``, see INITIAL_CAPACITY).

    A model call runs over a contiguous range of slots, so before it the sequences it feeds are
    moved next to each other: a decode call's into slots ``0..B-1``, a batched prefill's into the
    range that costs the fewest copies. A move copies only the positions a sequence holds, and
    only when a sequence left a hole or was prefilled elsewhere.

    Fresh prompts (nothing cached yet) are prefilled together. Prompts of one length take ONE
    call. Prompts of different lengths take two, because the graph returns the logits of the last
    column only: all but each prompt's last token, right-padded to the longest (the operator
    takes each row's true length from ``seqlens_k`` and attends causally, so no real position
    sees the padding, whose keys and values land past the row's length, where its next tokens
    overwrite them), then every prompt's last token in one decode-shaped call.
    """

    # A batched prefill pads every prompt to the longest; past this ratio of padded to real tokens,
    # the rest go in another call.
    MAX_PADDING_RATIO = 2.0
    # Positions per slot to start with. ONNX Runtime's CPU GroupQueryAttention costs in proportion to
    # the buffer's length, not to the tokens in it (a batch-16 decode step of gpt2-small at position
    # 140: 22 ms with a 160-position buffer, 29 to 49 ms with 1024), so the buffers start short and
    # double (a copy of the positions in use) when a sequence needs more, up to the context length.
    INITIAL_CAPACITY = 32

    def __init__(self, generator: TextGenerator, slots: int) -> None:
        spec = generator.spec
        self._generator = generator
        self._slots = slots
        self._capacity = min(spec.context_length, self.INITIAL_CAPACITY)
        self._keys, self._values = self._new_buffers(self._capacity)
        self._slot_of: dict[int, int] = {}
        self._owner: list[int | None] = [None] * slots
        self._lengths = [0] * slots

    def length(self, seq_id: int) -> int:
        slot = self._slot_of.get(seq_id)
        return 0 if slot is None else self._lengths[slot]

    def _new_buffers(self, capacity: int) -> tuple[list[FloatArray], list[FloatArray]]:
        spec = self._generator.spec
        shape = (self._slots, spec.num_heads, capacity, spec.head_dim)
        # np.zeros takes fresh zero pages from the OS: memory is only used where tokens are written.
        return (
            [np.zeros(shape, dtype=np.float32) for _ in range(spec.num_layers)],
            [np.zeros(shape, dtype=np.float32) for _ in range(spec.num_layers)],
        )

    def _reserve(self, positions: int) -> None:
        """Make every slot hold at least ``positions`` positions: double the buffers until they do."""
        if positions <= self._capacity:
            return
        capacity = self._capacity
        while capacity < positions:
            capacity *= 2
        capacity = min(capacity, self._generator.spec.context_length)
        keys, values = self._new_buffers(capacity)
        used = max(self._lengths)
        for old, new in zip((*self._keys, *self._values), (*keys, *values), strict=True):
            new[:, :, :used] = old[:, :, :used]  # (slots, nh, used, hs)
        self._keys, self._values, self._capacity = keys, values, capacity

    def _slot(self, seq_id: int) -> int:
        slot = self._slot_of.get(seq_id)
        if slot is None:
            try:
                slot = self._owner.index(None)
            except ValueError:
                raise RuntimeError(f"all {self._slots} KV cache slots are in use") from None
            self._owner[slot] = seq_id
            self._slot_of[seq_id] = slot
            self._lengths[slot] = 0
        return slot

    def _swap(self, a: int, b: int) -> None:
        """Exchange the contents of two slots (only the positions in use are copied)."""
        len_a, len_b = self._lengths[a], self._lengths[b]
        for buffer in (*self._keys, *self._values):
            held = buffer[a, :, :len_a].copy()  # (nh, len_a, hs)
            buffer[a, :, :len_b] = buffer[b, :, :len_b]
            buffer[b, :, :len_a] = held
        owner_a, owner_b = self._owner[a], self._owner[b]
        self._owner[a], self._owner[b] = owner_b, owner_a
        self._lengths[a], self._lengths[b] = len_b, len_a
        for owner, slot in ((owner_b, a), (owner_a, b)):
            if owner is not None:
                self._slot_of[owner] = slot

    def _extra_inputs(self, rows: slice) -> dict[str, npt.NDArray[np.generic]]:
        """Per-slot inputs besides the cache that a subclass's graph takes (an encoder-decoder's source)."""
        return {}

    def _gather(self, seq_ids: Sequence[int], first: int | None = None) -> int:
        """Move ``seq_ids`` (each already holding a slot) into one contiguous range; return its first slot.

        ``first`` fixes the range; otherwise the range whose other occupants hold the fewest
        cached positions is taken (those are the copies a move costs).
        """
        n, group = len(seq_ids), set(seq_ids)
        if first is None:
            first = min(
                range(self._slots - n + 1),
                key=lambda s: sum(self._lengths[t] for t in range(s, s + n) if self._owner[t] not in group),
            )
        outside = [self._slot_of[i] for i in seq_ids if not first <= self._slot_of[i] < first + n]
        for target in range(first, first + n):
            if self._owner[target] not in group:
                self._swap(target, outside.pop())
        return first

    def _run(
        self, first_slot: int, input_ids: Int64Array, lengths: Sequence[int], new: Sequence[int] | None = None
    ) -> FloatArray:
        """One model call over slots ``first_slot .. first_slot + B - 1``: row ``b`` holds ``lengths[b]``
        tokens and gets ``new[b]`` real tokens of ``input_ids`` ``(B, T)`` (the rest is padding; by
        default every column is real). Returns the logits ``(B, V)`` of the last column (the graph
        computes no others)."""
        spec = self._generator.spec
        batch, width = input_ids.shape
        starts = np.asarray(lengths, dtype=np.int64)[:, None]  # (B, 1)
        real = np.asarray([width] * batch if new is None else new, dtype=np.int32)  # (B,)
        feed: dict[str, npt.NDArray[np.generic]] = {
            spec.input_ids_name: input_ids,  # (B, T)
            spec.position_ids_name: starts + np.arange(width, dtype=np.int64)[None, :],  # (B, T)
            # The operator's convention: total tokens after this call, minus one, per sequence.
            spec.seqlens_k_name: np.asarray(lengths, dtype=np.int32) + real - 1,  # (B,)
            spec.total_sequence_length_name: np.asarray(max(lengths) + width, dtype=np.int32),  # ()
        }
        in_place: dict[str, str] = {}
        rows = slice(first_slot, first_slot + batch)
        for layer in range(spec.num_layers):
            feed[spec.past_key_names[layer]] = self._keys[layer][rows]  # (B, nh, capacity, hs), a view
            feed[spec.past_value_names[layer]] = self._values[layer][rows]
            in_place[spec.past_key_names[layer]] = spec.present_key_names[layer]
            in_place[spec.past_value_names[layer]] = spec.present_value_names[layer]
        feed.update(self._extra_inputs(rows))
        (logits,) = self._generator.session.run_in_place([spec.logits_name], feed, in_place)
        result: FloatArray = logits[:, -1, :]  # (B, 1, V) -> (B, V)
        return result

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> FloatArray:
        row: FloatArray = self.prefill_many([(seq_id, token_ids)])[0]
        return row

    def prefill_many(self, chunks: Sequence[tuple[int, Sequence[int]]]) -> FloatArray:
        context = self._generator.spec.context_length
        out: list[FloatArray | None] = [None] * len(chunks)  # rows as the graph returns them
        for seq_id, token_ids in chunks:
            if not token_ids:
                raise ValueError("a prompt chunk needs at least one token")
            if self.length(seq_id) + len(token_ids) > context:
                raise ValueError("prompt chunk runs past the context window")
        self._reserve(max(self.length(seq_id) + len(ids) for seq_id, ids in chunks))
        fresh: list[int] = []  # indices into chunks
        for index, (seq_id, _) in enumerate(chunks):
            self._slot(seq_id)
            if self.length(seq_id) == 0:
                fresh.append(index)
            else:  # a later chunk of a long prompt: the operator batches equal chunk lengths only
                out[index] = self._prefill_call([chunks[index]])[0]
        for group in self._padding_groups([len(chunks[i][1]) for i in fresh]):
            indices = [fresh[g] for g in group]
            for index, row in zip(indices, self._prefill_call([chunks[i] for i in indices]), strict=True):
                out[index] = row
        return np.stack([row for row in out if row is not None])

    def _padding_groups(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices of ``lengths`` grouped longest first, so that no group pads past MAX_PADDING_RATIO.

        Equal lengths always share a group; a one-token prompt joins only other one-token prompts
        (it has no head to prefill before its last token).
        """
        groups: list[list[int]] = []
        real = 0
        for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            length = lengths[index]
            if groups:
                head = lengths[groups[-1][0]]
                padded = (len(groups[-1]) + 1) * head
                if length == head or (length > 1 and padded <= self.MAX_PADDING_RATIO * (real + length)):
                    groups[-1].append(index)
                    real += length
                    continue
            groups.append([index])
            real = length
        return groups

    def _prefill_call(self, chunks: Sequence[tuple[int, Sequence[int]]]) -> FloatArray:
        """Model calls for ``chunks``: fresh prompts (see the class docstring), or a single chunk."""
        seq_ids = [seq_id for seq_id, _ in chunks]
        first = self._gather(seq_ids)
        by_slot = sorted(range(len(chunks)), key=lambda i: self._slot_of[seq_ids[i]])
        widths = [len(chunks[i][1]) for i in by_slot]
        ids = np.zeros((len(chunks), max(widths)), dtype=np.int64)  # (B, T) in slot order, right-padded
        for row, index in enumerate(by_slot):
            ids[row, : widths[row]] = chunks[index][1]
        slots = range(first, first + len(chunks))
        lengths = [self._lengths[s] for s in slots]
        if min(widths) == max(widths):
            logits = self._run(first, ids, lengths, widths)
        else:  # fresh prompts of different lengths (every one at least 2 tokens long)
            heads = [w - 1 for w in widths]
            self._run(first, ids[:, : max(heads)], lengths, heads)  # (B, T - 1): fills the cache only
            last = ids[np.arange(len(chunks)), np.asarray(heads)][:, None]  # (B, 1)
            logits = self._run(first, last, heads, [1] * len(chunks))
        for slot, width in zip(slots, widths, strict=True):
            self._lengths[slot] += width
        ordered: FloatArray = np.empty_like(logits)
        ordered[by_slot] = logits  # back to the caller's order
        return ordered

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> FloatArray:
        batch = len(seq_ids)
        self._reserve(max(self.length(seq_id) for seq_id in seq_ids) + 1)
        self._gather(seq_ids, first=0)
        by_slot = sorted(range(batch), key=lambda i: self._slot_of[seq_ids[i]])
        ids = np.asarray([[tokens[i]] for i in by_slot], dtype=np.int64)  # (B, 1) in slot order
        lengths = [self._lengths[s] for s in range(batch)]
        logits = self._run(0, ids, lengths, [1] * batch)
        for slot in range(batch):
            self._lengths[slot] += 1
        ordered: FloatArray = np.empty_like(logits)
        ordered[by_slot] = logits  # back to the caller's order
        return ordered

    def release(self, seq_id: int) -> None:
        slot = self._slot_of.pop(seq_id, None)
        if slot is not None:
            self._owner[slot] = None
            self._lengths[slot] = 0
            if not self._slot_of and self._capacity > self.INITIAL_CAPACITY:  # empty: start short again
                self._capacity = min(self._generator.spec.context_length, self.INITIAL_CAPACITY)
                self._keys, self._values = self._new_buffers(self._capacity)
