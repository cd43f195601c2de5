"""Shared fixtures for the export tests: a tiny corpus and a tokenizer trained on it."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from attnserve_export.tokenizer import train_bpe_tokenizer

CORPUS = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n\n"
    "JULIET.\nO Romeo, Romeo, wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n\n"
    "HAMLET.\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles.\n\n"
)


@pytest.fixture(scope="session")
def corpus_text() -> str:
    return CORPUS * 20


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus_text: str) -> Tokenizer:
    return train_bpe_tokenizer([corpus_text], vocab_size=400)
