from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from attnserve_server.settings import ServerSettings, build_parser, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"ATTNSERVE_{name.upper()}", raising=False)
    settings = load_settings([])
    assert settings.model_repository == Path("models")
    assert settings.host == "127.0.0.1"
    assert settings.port == 50051
    assert settings.intra_op_threads == 0


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNSERVE_PORT", "6000")
    monkeypatch.setenv("ATTNSERVE_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("ATTNSERVE_GRACE_PERIOD_S", "2.5")
    settings = load_settings([])
    assert settings.port == 6000
    assert settings.model_repository == Path("/srv/models")
    assert settings.grace_period_s == 2.5


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNSERVE_PORT", "6000")
    monkeypatch.setenv("ATTNSERVE_HOST", "0.0.0.0")
    settings = load_settings(["--port", "7000", "--log-level", "debug"])
    assert settings.port == 7000  # flag wins
    assert settings.host == "0.0.0.0"  # env kept where no flag is given
    assert settings.log_level == "DEBUG"


def test_every_setting_has_a_flag_and_a_description() -> None:
    usage = build_parser().format_help()
    for name, field in ServerSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in usage
        assert field.description


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        load_settings(["--port", "70000"])
    monkeypatch.setenv("ATTNSERVE_MAX_CONCURRENT_REQUESTS", "0")
    with pytest.raises(ValidationError):
        load_settings([])


def test_bad_flag_type_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(["--port", "abc"])


def test_image_limits_have_flags_and_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"ATTNSERVE_{name.upper()}", raising=False)
    defaults = load_settings([])
    assert defaults.max_image_pixels == 40_000_000  # well below Pillow's 89 MP bomb warning
    assert defaults.max_images_per_request == 64
    # A full request of typical images (2 MiB each) fits in one message.
    assert defaults.max_message_bytes >= defaults.max_images_per_request * 2 * 1024 * 1024
    monkeypatch.setenv("ATTNSERVE_MAX_IMAGE_PIXELS", "1000")
    monkeypatch.setenv("ATTNSERVE_MAX_IMAGES_PER_REQUEST", "3")
    settings = load_settings(["--max-images-per-request", "5"])
    assert (settings.max_image_pixels, settings.max_images_per_request) == (1000, 5)
