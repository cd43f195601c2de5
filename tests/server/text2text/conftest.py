"""A random-weight encoder–decoder, exported by the real exporter and served by a real server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

MODEL = "tiny-translator"
SOURCE_CONTEXT, TARGET_CONTEXT = 32, 1024


@dataclass
class Translator:
    """The served model, and the PyTorch module and tokenizer it was exported from (the reference)."""

    server: Any  # tests/conftest.py's ServerProcess
    probe: Any  # tests/conftest.py's DecodingProbe of this model
    model: Any  # attnserve_export.seq2seq.Seq2Seq (torch is imported lazily)
    tokenizer: Tokenizer

    @property
    def address(self) -> str:
        return self.server.address

    def decoded_tokens(self) -> int:
        """Decode-step tokens so far, once nothing is in flight (see DecodingProbe)."""
        return int(self.probe.settled())


@pytest.fixture(scope="session")
def translator(
    tmp_path_factory: pytest.TempPathFactory,
    session_server_launcher: Callable[..., Any],
    decoding_probe: Callable[[Any, str], Any],
) -> Translator:
    import torch

    from attnserve_export.number_data import LANGUAGES, fixed_set, tag, train_tokenizer
    from attnserve_export.seq2seq import PRESETS, Seq2Seq
    from attnserve_export.translator_export import export_translator

    tokenizer = train_tokenizer(max_number=9_999, vocab_size=300)
    config = PRESETS["tiny"].with_(
        vocab_size=tokenizer.get_vocab_size(), source_context=SOURCE_CONTEXT, target_context=TARGET_CONTEXT
    )
    torch.manual_seed(0)
    model = Seq2Seq(config).eval()
    repository: Path = tmp_path_factory.mktemp("text2text")
    export_translator(
        model,
        tokenizer,
        repository / MODEL / "1",
        target_tags=[tag(lang) for lang in LANGUAGES],
        parity_sources=[e.source for e in fixed_set("test", 4, 9_999)],
        description="random weights, for tests",
    )
    (repository / MODEL / "config.yaml").write_text("max_new_tokens_limit: 1023\n")
    server = session_server_launcher(repository)
    return Translator(server, decoding_probe(server, MODEL), model, tokenizer)
