"""KV caches for batched generation, one class per cache layout a model's graph can have.

The scheduler talks to both through the same three calls: ``prefill`` (a chunk of one
sequence's prompt), ``decode`` (one new token for each of several sequences, in ONE model call)
and ``release``. Each cache knows how many tokens every sequence holds, so positions come from
here and never drift from what the model has seen.

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
    """Preallocated ``(slots, nh, context_length, hs)`` buffers per layer that the graph updates in place.

    A decode call runs over slots ``0..B-1``, so before it the decoding sequences are moved into
    the lowest slots (a copy of one sequence's cache, only when a sequence left a hole there or
    just finished its prefill above them).
    """

    def __init__(self, generator: TextGenerator, slots: int) -> None:
        spec = generator.spec
        self._generator = generator
        self._slots = slots
        shape = (slots, spec.num_heads, spec.context_length, spec.head_dim)
        # np.zeros takes fresh zero pages from the OS: memory is only used where tokens are written.
        self._keys = [np.zeros(shape, dtype=np.float32) for _ in range(spec.num_layers)]
        self._values = [np.zeros(shape, dtype=np.float32) for _ in range(spec.num_layers)]
        self._slot_of: dict[int, int] = {}
        self._owner: list[int | None] = [None] * slots
        self._lengths = [0] * slots

    def length(self, seq_id: int) -> int:
        slot = self._slot_of.get(seq_id)
        return 0 if slot is None else self._lengths[slot]

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

    def _run(self, first_slot: int, input_ids: Int64Array, lengths: Sequence[int]) -> FloatArray:
        """One model call over slots ``first_slot .. first_slot + B - 1``, each holding ``lengths[b]`` tokens."""
        spec = self._generator.spec
        batch, new = input_ids.shape
        starts = np.asarray(lengths, dtype=np.int64)[:, None]  # (B, 1)
        feed: dict[str, npt.NDArray[np.generic]] = {
            spec.input_ids_name: input_ids,  # (B, T)
            spec.position_ids_name: starts + np.arange(new, dtype=np.int64)[None, :],  # (B, T)
            # The operator's convention: total tokens after this call, minus one, per sequence.
            spec.seqlens_k_name: (np.asarray(lengths, dtype=np.int32) + (new - 1)),  # (B,)
            spec.total_sequence_length_name: np.asarray(max(lengths) + new, dtype=np.int32),  # ()
        }
        in_place: dict[str, str] = {}
        rows = slice(first_slot, first_slot + batch)
        for layer in range(spec.num_layers):
            feed[spec.past_key_names[layer]] = self._keys[layer][rows]  # (B, nh, context, hs), a view
            feed[spec.past_value_names[layer]] = self._values[layer][rows]
            in_place[spec.past_key_names[layer]] = spec.present_key_names[layer]
            in_place[spec.past_value_names[layer]] = spec.present_value_names[layer]
        feed.update(self._extra_inputs(rows))
        (logits,) = self._generator.session.run_in_place([spec.logits_name], feed, in_place)
        result: FloatArray = logits[:, -1, :]  # (B, T or 1, V) -> (B, V)
        return result

    def prefill(self, seq_id: int, token_ids: Sequence[int]) -> FloatArray:
        slot = self._slot(seq_id)
        start = self._lengths[slot]
        if start + len(token_ids) > self._generator.spec.context_length:
            raise ValueError("prompt chunk runs past the context window")
        logits = self._run(slot, np.asarray([token_ids], dtype=np.int64), [start])
        self._lengths[slot] = start + len(token_ids)
        row: FloatArray = logits[0]
        return row

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> FloatArray:
        batch = len(seq_ids)
        wanted = set(seq_ids)
        for seq_id in seq_ids:
            slot = self._slot_of[seq_id]
            if slot >= batch:  # move it down into a slot no decoding sequence needs
                target = next(s for s in range(batch) if self._owner[s] not in wanted)
                self._swap(slot, target)
        by_slot = sorted(range(batch), key=lambda i: self._slot_of[seq_ids[i]])
        ids = np.asarray([[tokens[i]] for i in by_slot], dtype=np.int64)  # (B, 1) in slot order
        lengths = [self._lengths[s] for s in range(batch)]
        logits = self._run(0, ids, lengths)
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
