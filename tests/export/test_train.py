"""Training smoke tests on a small corpus file: the loss falls, resume is exact, and the CLI exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from attnserve_export.__main__ import main
from attnserve_export.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(corpus_text)
    return path


def config(corpus: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        preset="tiny",
        model_overrides={"vocab_size": 300},
        seed=3,
        corpus=[str(corpus)],
        batch_size=4,
        max_steps=40,
        lr=3e-3,
        warmup_steps=5,
        eval_interval=10,
        checkpoint_interval=10,
        threads=1,
    )
    return TrainConfig(**{**base.__dict__, **changes})


def test_loss_falls(corpus_file: Path, tmp_path: Path) -> None:
    results = train(config(corpus_file, max_steps=120, eval_interval=40), tmp_path / "run")
    history = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["history"]
    assert results["finished"] and results["step"] == 120
    assert [h["step"] for h in history] == [40, 80, 120]
    assert history[-1]["val_bpc"] < history[0]["val_bpc"] - 0.5
    assert results["validation_bpc"] < 3.0 and results["test_bpc"] < 3.0


def test_resume_reproduces_weights(corpus_file: Path, tmp_path: Path) -> None:
    train(config(corpus_file, max_steps=25), tmp_path / "straight")
    stopped = train(config(corpus_file, max_steps=25, stop_at_step=13), tmp_path / "resumed")
    assert stopped == {"step": 13, "finished": False}
    train(config(corpus_file, max_steps=25), tmp_path / "resumed", resume=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / name))
        b = load_file(str(tmp_path / "resumed" / "checkpoint" / name))
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].equal(b[key]), key


def test_cli_train_then_export(corpus_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--preset", "tiny", "--vocab-size", "300", "--corpus", str(corpus_file), "--batch-size", "4"]
    assert main(["train", "gpt", *common, "--out", str(run), "--max-steps", "10", "--threads", "1"]) == 0
    repo = tmp_path / "models"
    assert main(["onnx", "--checkpoint", str(run), "--name", "tiny-gpt", "--repository", str(repo)]) == 0
    meta = json.loads((repo / "tiny-gpt" / "1" / "metadata.json").read_text())
    assert meta["provenance"]["training"]["step"] == 10
    assert "test_bpc" in meta["provenance"]["training"]
    assert meta["provenance"]["parity"]["passed"]
    # A second export goes to the next version.
    assert main(["onnx", "--checkpoint", str(run), "--name", "tiny-gpt", "--repository", str(repo)]) == 0
    assert (repo / "tiny-gpt" / "2" / "model.onnx").exists()
