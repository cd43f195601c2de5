from __future__ import annotations

from pathlib import Path

import pytest

from attnserve_server.text.tokenizer import TextTokenizer


@pytest.mark.parametrize("text", ["hello world", "Grüße 日本語 🙂", " leading and trailing spaces  ", "a\nb\tc"])
def test_round_trip(bpe_tokenizer: TextTokenizer, text: str) -> None:
    assert bpe_tokenizer.decode(bpe_tokenizer.encode(text)) == text


def test_special_tokens_are_not_added_and_are_skipped_when_decoding(bpe_tokenizer: TextTokenizer) -> None:
    eos = bpe_tokenizer.token_to_id("<|endoftext|>")
    assert eos is not None
    ids = bpe_tokenizer.encode("hi")
    assert eos not in ids
    assert bpe_tokenizer.decode([*ids, eos]) == "hi"


def test_unknown_token_is_none(bpe_tokenizer: TextTokenizer) -> None:
    assert bpe_tokenizer.token_to_id("<|no such token|>") is None


def test_from_file(bpe_tokenizer: TextTokenizer, tiny_repository: Path) -> None:
    loaded = TextTokenizer.from_file(tiny_repository / "tiny-gpt" / "1" / "tokenizer.json")
    assert loaded.vocab_size > 256
    assert loaded.decode(loaded.encode("naïve 🙂")) == "naïve 🙂"
