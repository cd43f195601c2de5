from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from attnserve_client import Client, InvalidArgumentError
from attnserve_server.__main__ import main
from attnserve_server.settings import ServerSettings, SettingsError, build_parser, load_settings


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
    monkeypatch.setenv("ATTNSERVE_MAX_ACTIVE_SEQUENCES", "0")
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


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(f"ATTNSERVE_{name.upper()}", raising=False)
    return monkeypatch


def test_config_file_then_environment_then_flags(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "attnserve.yaml"
    config.write_text(
        "model_repository: /srv/models\nport: 6001\nmetrics_port: 9001\nlog_format: json\nmetrics: false\n"
    )
    from_file = load_settings(["--config", str(config)])
    assert from_file.config == config
    assert (from_file.model_repository, from_file.port, from_file.metrics_port) == (Path("/srv/models"), 6001, 9001)
    assert (from_file.log_format, from_file.metrics) == ("json", False)
    assert from_file.host == "127.0.0.1"  # not in the file: the default

    clean_env.setenv("ATTNSERVE_PORT", "6002")
    clean_env.setenv("ATTNSERVE_METRICS_PORT", "9002")
    env_over_file = load_settings(["--config", str(config)])
    assert (env_over_file.port, env_over_file.metrics_port) == (6002, 9002)
    assert env_over_file.model_repository == Path("/srv/models")

    flags = load_settings(["--config", str(config), "--port", "6003", "--metrics"])
    assert flags.port == 6003  # flag > env > file
    assert flags.metrics_port == 9002  # env > file
    assert flags.metrics is True  # flag > file
    assert flags.log_format == "json"  # file > default


def test_log_level_is_case_insensitive_everywhere(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "server.yaml").write_text("log_level: warning\n")
    assert load_settings(["--config", str(tmp_path / "server.yaml")]).log_level == "WARNING"
    clean_env.setenv("ATTNSERVE_LOG_LEVEL", "debug")
    assert load_settings([]).log_level == "DEBUG"
    assert load_settings(["--log-level", "error"]).log_level == "ERROR"


def test_the_config_file_can_come_from_the_environment(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("port: 7001\n")
    (tmp_path / "b.yaml").write_text("port: 7002\n")
    clean_env.setenv("ATTNSERVE_CONFIG", str(tmp_path / "a.yaml"))
    assert load_settings([]).port == 7001
    assert load_settings(["--config", str(tmp_path / "b.yaml")]).port == 7002  # the flag names the file


def test_an_empty_config_file_changes_nothing(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_settings(["--config", str(tmp_path / "empty.yaml")]).port == 50051


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read config file"),
        ("- port\n- 1\n", "must hold a mapping"),
        ("port: [1\n", "not valid YAML"),
        ("config: other.yaml\n", "cannot name another config file"),
    ],
    ids=["missing", "list", "broken", "nested"],
)
def test_a_bad_config_file_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str | None, message: str
) -> None:
    config = tmp_path / "server.yaml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(["--config", str(config)])


def test_config_file_values_are_validated(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("metrics_prot: 1\n")  # a typo must not be ignored
    with pytest.raises(ValidationError, match="metrics_prot"):
        load_settings(["--config", str(config)])
    config.write_text("metrics_port: 70000\n")
    with pytest.raises(ValidationError, match="metrics_port"):
        load_settings(["--config", str(config)])


def test_main_exits_2_on_a_bad_config_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("log_format: xml\n")
    assert main(["--config", str(config)]) == 2
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2


def test_help_shows_every_setting_with_its_default_and_variable() -> None:
    usage = " ".join(build_parser().format_help().split())  # argparse wraps lines
    for name, field in ServerSettings.model_fields.items():
        default = "none" if field.default is None else str(field.default)
        entry = re.search(rf"--{name.replace('_', '-')}\b.*?\[env ATTNSERVE_{name.upper()}; default: (\S+?)\]", usage)
        assert entry, f"--{name.replace('_', '-')} has no [env ...; default: ...] in --help"
        assert entry.group(1) == default
    assert "--no-metrics" in usage


def test_help_of_the_installed_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attnserve_server", "--help"], capture_output=True, text=True, check=True, timeout=60
    )
    assert "default: 9464" in result.stdout
    assert "flags win over the environment, which wins over the config file" in " ".join(result.stdout.split())


def test_a_real_server_takes_the_file_then_the_environment_then_flags(
    image_repository: Path, server_launcher: Callable[..., Any], tmp_path: Path
) -> None:
    config = tmp_path / "server.yaml"
    # 100 pixels would refuse the 20x20 images below; 1 image per request would refuse a pair.
    config.write_text("log_format: json\nmax_images_per_request: 1\nmax_image_pixels: 100\n")
    env = {"ATTNSERVE_CONFIG": str(config), "ATTNSERVE_MAX_IMAGES_PER_REQUEST": "2"}
    server = server_launcher(image_repository, "--max-image-pixels", "1000000", env=env)
    image = io.BytesIO()
    Image.new("L", (20, 20), 128).save(image, format="PNG")
    with Client(server.address, timeout=30) as client:
        assert len(client.classify_batch([image.getvalue()] * 2, model="tiny-digits")) == 2  # env > file, flag > file
        with pytest.raises(InvalidArgumentError, match="limit of 2 per request"):
            client.classify_batch([image.getvalue()] * 3, model="tiny-digits")
    assert server.terminate() == 0
    lines = [line for line in server.stderr().splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)  # the file's log_format
