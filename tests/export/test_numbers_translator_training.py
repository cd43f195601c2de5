"""The numbers-translator's data, tokenizer and training loop."""

from __future__ import annotations

import random
from pathlib import Path

from attnserve_export.number_data import (
    DIRECTIONS,
    LANGUAGES,
    SPECIAL_TOKENS,
    Example,
    fixed_set,
    sample,
    split_of,
    train_tokenizer,
    words,
)
from attnserve_export.translator_train import TranslatorTrainConfig, load_translator, train_translator


def test_every_direction_between_the_four_languages_is_used() -> None:
    assert set(LANGUAGES) >= {"en", "de", "fr", "nl"}
    assert len(DIRECTIONS) == len(LANGUAGES) * (len(LANGUAGES) - 1)
    seen = {(e.source_language, e.target_language) for e in sample(random.Random(0), 2000, "train", 999_999)}
    assert seen == set(DIRECTIONS)


def test_the_split_is_by_number_so_no_test_number_is_trained_on_in_any_language() -> None:
    test_numbers = {e.number for e in fixed_set("test", 500, 999_999)}
    trained = {e.number for e in sample(random.Random(7), 20_000, "train", 999_999)}
    assert test_numbers and not test_numbers & trained
    assert all(split_of(n) == "test" for n in test_numbers)
    shares = [sum(split_of(n) == s for n in range(20_000)) / 20_000 for s in ("validation", "test")]
    assert all(0.04 < share < 0.06 for share in shares)


def test_an_example_reads_as_the_issue_describes_it() -> None:
    example = Example(97, "de", "en")
    assert example.source == "<2en> siebenundneunzig"
    assert example.target == "ninety-seven"
    assert Example(97, "en", "de").target == words(97, "de") == "siebenundneunzig"


def test_the_tokenizer_has_fixed_special_ids_and_round_trips_every_language() -> None:
    tokenizer = train_tokenizer(max_number=9_999, vocab_size=300)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for example in fixed_set("test", 40, 9_999):
        for text in (example.target, words(example.number, example.source_language)):
            assert tokenizer.decode(tokenizer.encode(text).ids) == text
        assert tokenizer.encode(example.source).tokens[0] == f"<2{example.target_language}>"


def test_a_short_training_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path: Path) -> None:
    cfg = TranslatorTrainConfig(
        preset="tiny",
        max_number=999,
        vocab_size=300,
        batch_size=16,
        max_steps=40,
        warmup_steps=5,
        lr=3e-3,
        eval_interval=20,
        eval_examples=8,
        threads=1,
    )
    results = train_translator(cfg, tmp_path)
    losses = [h["loss"] for h in results["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    model, tokenizer = load_translator(tmp_path)
    assert model.num_parameters() == results["parameters"]
    assert tokenizer.get_vocab_size() == model.config.vocab_size


def test_the_commands_train_and_export_a_version_with_its_test_accuracy(tmp_path: Path) -> None:
    from attnserve_export.__main__ import main
    from attnserve_server.model_format.metadata import read_metadata
    from attnserve_server.text2text.metadata import Text2TextGenerationMetadata

    run = tmp_path / "run"
    common = ["--preset", "tiny", "--max-number", "999", "--vocab-size", "300", "--threads", "1"]
    assert main(["train", "translator", "--out", str(run), *common, "--max-steps", "10", "--eval-interval", "5"]) == 0
    assert main(["translator-onnx", "--run", str(run), "--repository", str(tmp_path / "repo"), "--name", "t"]) == 0
    metadata = read_metadata(tmp_path / "repo" / "t" / "1", {"text2text-generation": Text2TextGenerationMetadata})
    section = metadata.section
    assert isinstance(section, Text2TextGenerationMetadata)
    assert section.target_tags == ["<2en>", "<2de>", "<2fr>", "<2nl>"]
    accuracy = metadata.provenance["test_exact_match"]
    assert accuracy["examples_per_direction"] == 100 and len(accuracy) == 2 + 12  # 12 directions, "all"
    assert metadata.provenance["parity"]["max_abs_logit_diff"] < 1e-4
    # Embed's graph (the encoder) and Explain's (a teacher-forced pass) are two files: Explain needs the target.
    assert section.embeddings is not None and section.embeddings.file == "embeddings.onnx"
    assert section.explain is not None and section.explain.layout == "encoder_decoder"
    assert (tmp_path / "repo" / "t" / "1" / section.explain.file).is_file()
    assert metadata.provenance["explain_parity"]["passed"]
