"""Incremental detokenization: turn a growing list of token ids into text deltas.

Byte-level BPE tokens can end in the middle of a multi-byte UTF-8 character, and decoders like
Metaspace change how a token reads depending on what precedes it. So instead of decoding one
token at a time we decode a small window twice (with and without the newest tokens) and emit the
difference, holding text back while it ends in an incomplete character (the same scheme as
Hugging Face TGI).
"""

from __future__ import annotations

from attnserve_server.text.tokenizer import TextTokenizer

# Decoders turn an incomplete UTF-8 sequence into U+FFFD; while the text ends with it, wait.
_INCOMPLETE = "\ufffd"
# Prompt tokens kept as left context so that the first generated token decodes as it would in place.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only text made of complete characters."""

    def __init__(self, tokenizer: TextTokenizer, prompt_ids: list[int] | None = None) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list((prompt_ids or [])[-_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # start of the window that gives the decoding context
        self._read_offset = len(self._ids)  # tokens before this have been emitted

    def push(self, token_id: int) -> str:
        """Add one token and return the newly complete text (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_INCOMPLETE):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Text still held back at the end of generation (an incomplete character becomes U+FFFD)."""
        prefix_text = self._tokenizer.decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._tokenizer.decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]
