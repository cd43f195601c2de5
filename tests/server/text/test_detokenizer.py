from __future__ import annotations

import pytest

from attnserve_server.text.detokenizer import IncrementalDetokenizer
from attnserve_server.text.tokenizer import TextTokenizer

SAMPLES = ["Grüße aus München!", "日本語のテキストです。", "🙂🚀 naïve façade", "plain ascii text", "Привет 🙂 мир"]


def stream(tokenizer: TextTokenizer, ids: list[int], prompt: list[int] | None = None) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, prompt)
    deltas = [detok.push(i) for i in ids]
    deltas.append(detok.flush())
    return deltas


@pytest.mark.parametrize("text", SAMPLES)
def test_deltas_join_to_the_decoded_text(bpe_tokenizer: TextTokenizer, text: str) -> None:
    ids = bpe_tokenizer.encode(text)
    assert "".join(stream(bpe_tokenizer, ids)) == text


def byte_level_char(byte: int) -> str:
    """GPT-2's byte-to-unicode map: how byte-level BPE spells a single byte as a token."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if byte in printable:
        return chr(byte)
    return chr(256 + [b for b in range(256) if b not in printable].index(byte))


def byte_ids(tokenizer: TextTokenizer, text: str) -> list[int]:
    """One token per UTF-8 byte, so that every multi-byte character arrives in pieces."""
    ids = [tokenizer.token_to_id(byte_level_char(b)) for b in text.encode()]
    assert None not in ids
    return [i for i in ids if i is not None]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_by_byte_never_splits_a_character(bpe_tokenizer: TextTokenizer, text: str) -> None:
    deltas = stream(bpe_tokenizer, byte_ids(bpe_tokenizer, text))
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_leading_byte_alone_emits_nothing(bpe_tokenizer: TextTokenizer) -> None:
    ids = byte_ids(bpe_tokenizer, "🙂")  # 4 bytes
    detok = IncrementalDetokenizer(bpe_tokenizer)
    assert [detok.push(i) for i in ids] == ["", "", "", "🙂"]


def test_prompt_context_is_not_emitted(bpe_tokenizer: TextTokenizer) -> None:
    prompt = bpe_tokenizer.encode("The café ")
    ids = bpe_tokenizer.encode("serves crème")
    assert "".join(stream(bpe_tokenizer, ids, prompt)) == "serves crème"


def test_incomplete_character_at_the_end_is_flushed_as_replacement(bpe_tokenizer: TextTokenizer) -> None:
    detok = IncrementalDetokenizer(bpe_tokenizer)
    assert detok.push(byte_ids(bpe_tokenizer, "a🙂")[1]) == ""
    assert detok.flush() == "\ufffd"
