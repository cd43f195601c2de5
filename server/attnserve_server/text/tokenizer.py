"""A thin typed wrapper over a Hugging Face ``tokenizers`` file (ours or GPT-2's ``tokenizer.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    """Encodes prompts and decodes generated ids. Never adds special tokens: the model sees the prompt as is."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        # No token stands for more UTF-8 bytes than its own text has (byte-level BPE writes one
        # character per byte); what a normalizer might drop is not counted, so this only over-estimates.
        self.max_token_bytes = max((len(token.encode("utf-8")) for token in vocab), default=1)

    @classmethod
    def from_file(cls, path: Path) -> TextTokenizer:
        """Load a ``tokenizer.json``."""
        return cls(Tokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        """Number of ids, including added (special) tokens."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Through ``encode_batch``, which releases the GIL while it runs (``encode`` holds it for the
        whole call), so tokenizing in a worker thread never stalls the event loop.
        """
        (encoding,) = self._tokenizer.encode_batch([text], add_special_tokens=False)
        return list(encoding.ids)

    def encode_with_texts(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids of ``text`` and each token's text (its slice of ``text``); releases the GIL like :meth:`encode`."""
        (encoding,) = self._tokenizer.encode_batch([text], add_special_tokens=False)
        return list(encoding.ids), [text[start:end] for start, end in encoding.offsets]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, without special tokens. Incomplete UTF-8 at the end decodes to U+FFFD."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def piece(self, token_id: int) -> str:
        """One token's text, special tokens included (``<s>``): for showing tokens one by one."""
        return str(self._tokenizer.decode([token_id], skip_special_tokens=False))

    def token_to_id(self, token: str) -> int | None:
        """Id of a token's text, or ``None`` if it is not in the vocabulary."""
        found = self._tokenizer.token_to_id(token)
        return None if found is None else int(found)
