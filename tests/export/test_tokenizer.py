"""The byte-level BPE tokenizer: round trips, special token, and the tokenizer.json format."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from attnserve_export.tokenizer import EOS_TOKEN, load_tokenizer, train_bpe_tokenizer


@pytest.mark.parametrize(
    "text",
    ["naïve — ☃", "ROMEO.\nBut soft!  What light?\n\n", "  leading and trailing  ", "emoji 🎭 and 日本語", ""],
)
def test_round_trip(tiny_tokenizer: Tokenizer, text: str) -> None:
    ids = tiny_tokenizer.encode(text).ids
    assert tiny_tokenizer.decode(ids) == text


def test_vocab_and_special_token(tiny_tokenizer: Tokenizer) -> None:
    size = tiny_tokenizer.get_vocab_size()
    assert 257 <= size <= 400
    assert tiny_tokenizer.token_to_id(EOS_TOKEN) == size - 1
    # Merges were learned: a frequent word is one token.
    assert len(tiny_tokenizer.encode(" Romeo").ids) == 1
    assert tiny_tokenizer.encode(EOS_TOKEN).ids == [size - 1]


def test_save_and_load(tiny_tokenizer: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tiny_tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    text = "To be, or not — naïve ☃"
    assert loaded.encode(text).ids == tiny_tokenizer.encode(text).ids
    assert loaded.decode(loaded.encode(text).ids) == text


def test_too_small_vocab() -> None:
    with pytest.raises(ValueError):
        train_bpe_tokenizer(["abc"], vocab_size=100)
