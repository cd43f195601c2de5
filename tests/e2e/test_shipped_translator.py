"""The shipped numbers-translator, measured through the real server: exact match on held-out numbers.

The test numbers are drawn here, by the documented rule (100 and up; CRC-32 of the decimal digits,
mod 100, in 5..9), and the expected translations come from ``num2words`` itself, not from the training code.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from num2words import num2words

from attnserve_client import AsyncClient

REPO = Path(__file__).resolve().parents[2]
MODEL = "numbers-translator"
LANGUAGES = ("en", "de", "fr", "nl")
EXAMPLES = 200
TARGET = 0.95


def held_out_test_numbers(count: int, seed: int = 2026) -> list[int]:
    """Test-split numbers (100 and up), with as many of each length (3 to 6 digits)."""
    rng = random.Random(seed)
    numbers: list[int] = []
    while len(numbers) < count:
        length = rng.randint(3, 6)
        n = rng.randint(10 ** (length - 1), 10**length - 1)
        if 5 <= zlib.crc32(str(n).encode()) % 100 < 10:
            numbers.append(n)
    return numbers


@pytest.fixture(scope="module")
def translator_address(tmp_path_factory: pytest.TempPathFactory, session_server_launcher: Callable[..., Any]) -> str:
    repository = tmp_path_factory.mktemp("translator")
    shutil.copytree(REPO / "models" / MODEL, repository / MODEL)
    return str(session_server_launcher(repository).address)


async def translate_all(address: str, sources: list[str]) -> list[str]:
    async with AsyncClient(address, timeout=120.0) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(source: str) -> str:
            async with semaphore:
                return (await client.generate(source, model=MODEL, temperature=0.0)).text

        return list(await asyncio.gather(*(one(s) for s in sources)))


def test_exact_match_on_held_out_numbers_through_the_server(translator_address: str) -> None:
    rng = random.Random(7)
    cases = []
    for number in held_out_test_numbers(EXAMPLES):
        source_language, target_language = rng.sample(LANGUAGES, 2)
        source = f"<2{target_language}> {num2words(number, lang=source_language)}"
        cases.append((source, num2words(number, lang=target_language), f"{source_language}->{target_language}"))
    outputs = asyncio.run(translate_all(translator_address, [source for source, _, _ in cases]))
    hits, totals = Counter[str](), Counter[str]()
    for (_, expected, direction), output in zip(cases, outputs, strict=True):
        totals[direction] += 1
        hits[direction] += output == expected
    accuracy = sum(hits.values()) / EXAMPLES
    by_direction = {d: f"{hits[d]}/{totals[d]}" for d in sorted(totals)}
    assert accuracy >= TARGET, f"exact match {accuracy:.3f} < {TARGET}: {by_direction}"
