"""Numbers written out in words, between languages: the numbers-translator's data.

Every example comes from the ``num2words`` package (a registry package), so nothing is
downloaded. A source is the target language's tag and the number in the source language,
``"<2en> siebenundneunzig"``; its target is the number in the target language,
``"ninety-seven"``. Every direction between :data:`LANGUAGES` is used.

The split is by number value and fixed: :func:`split_of` hashes the number, so a test
number never appears in training, in any language or direction. Numbers below 100, the words
that the others are made of, are all training.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from typing import Literal

from num2words import num2words
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

Split = Literal["train", "validation", "test"]

LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "nl")
DIRECTIONS: tuple[tuple[str, str], ...] = tuple(permutations(LANGUAGES, 2))
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# Ids 0..2 and the tags right after them: fixed, so that the model's special ids never depend on training.
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, *(f"<2{lang}>" for lang in LANGUAGES))
# Percent of the hash space held out: [0, 5) validation, [5, 10) test, the rest training.
VALIDATION_PERCENT, TEST_PERCENT = 5, 5
ALWAYS_TRAINED = 100


def special_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token, which every numbers-translator tokenizer has."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {token} token")
    return int(token_id)


def tag(language: str) -> str:
    """The target-language tag that starts a source, e.g. ``<2en>``."""
    return f"<2{language}>"


def split_of(number: int) -> Split:
    """The split that ``number`` belongs to, in every language: CRC-32 of its decimal digits, mod 100.

    Numbers below :data:`ALWAYS_TRAINED` are all training: they are the task's words (``zero``,
    ``siebzehn``, ``quatre-vingt-dix``), and no model can translate a word it has never seen. Every
    larger number is written with them, so holding it out tests what a translator must do.
    """
    if number < ALWAYS_TRAINED:
        return "train"
    bucket = zlib.crc32(str(number).encode()) % 100
    if bucket < VALIDATION_PERCENT:
        return "validation"
    if bucket < VALIDATION_PERCENT + TEST_PERCENT:
        return "test"
    return "train"


@lru_cache(maxsize=200_000)
def words(number: int, language: str) -> str:
    """``number`` written out in ``language`` (num2words' spelling)."""
    text: str = num2words(number, lang=language)
    return text


@dataclass(frozen=True)
class Example:
    number: int
    source_language: str
    target_language: str

    @property
    def source(self) -> str:
        return f"{tag(self.target_language)} {words(self.number, self.source_language)}"

    @property
    def target(self) -> str:
        return words(self.number, self.target_language)


def draw_number(rng: random.Random, max_number: int) -> int:
    """A number in ``[0, max_number]`` whose count of digits is uniform.

    A uniform draw over 0..999,999 almost never picks a number under 1,000, so a model trained on it
    reads "siebenundneunzig" as the start of "siebenundneunzigtausend..."; drawing the length first
    gives every magnitude the same share.
    """
    length = rng.randint(1, len(str(max_number)))
    low = 0 if length == 1 else 10 ** (length - 1)
    return rng.randint(low, min(10**length - 1, max_number))


def sample(rng: random.Random, count: int, split: Split, max_number: int) -> list[Example]:
    """``count`` examples of ``split``: numbers from :func:`draw_number`, directions uniform."""
    examples: list[Example] = []
    while len(examples) < count:
        number = draw_number(rng, max_number)
        if split_of(number) == split:
            examples.append(Example(number, *rng.choice(DIRECTIONS)))
    return examples


def fixed_set(split: Split, count: int, max_number: int, seed: int = 1234) -> list[Example]:
    """A reproducible evaluation set: the same ``seed`` gives the same examples."""
    return sample(random.Random(seed), count, split, max_number)


def per_direction(split: Split, count: int, max_number: int, seed: int = 4321) -> list[Example]:
    """``count`` examples of every direction (different numbers in each), reproducibly."""
    rng = random.Random(seed)
    return [
        Example(e.number, source, target)
        for source, target in DIRECTIONS
        for e in sample(rng, count, split, max_number)
    ]


def tokenizer_corpus(max_number: int, count: int = 20_000, seed: int = 0) -> Iterator[str]:
    """Training-split sentences in every language, for learning the BPE merges."""
    rng = random.Random(seed)
    for example in sample(rng, count, "train", max_number):
        yield words(example.number, example.source_language)


def train_tokenizer(max_number: int, vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer shared by every language, with :data:`SPECIAL_TOKENS` as ids 0..6.

    Every byte is in the alphabet, so any input encodes without unknown tokens.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_corpus(max_number), trainer=trainer)
    return tokenizer
