"""The client's TLS and API key settings are checked before anything is sent (the calls against real
guarded servers are in tests/server/security)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import grpc
import pytest

from attnserve_client import AsyncClient, AuthenticationError, Client, InvalidArgumentError, PermissionDeniedError
from attnserve_client.cli import CONNECTION_OPTIONS, build_parser, main
from attnserve_client.errors import from_rpc_error
from attnserve_client.security import channel_security

# Not a real certificate: grpc only parses PEM when it connects, and these tests never do.
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture
def pem_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(PEM)
    return path


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_a_missing_certificate_file_is_a_clear_error(client: type[Any], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(InvalidArgumentError, match=r"cannot read the CA certificate '.*nowhere/ca.pem': No such file"):
        client("127.0.0.1:1", ca=missing)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"cert": "PEM"}, "go together"),
        ({"key": "PEM"}, "go together"),
        ({"ca": "NOT_PEM"}, "is not PEM"),
        ({"ca": b"not pem"}, "given as bytes is not PEM"),
        ({"ca": 42}, "must be a path or PEM bytes"),
        ({"api_key": "two words"}, "printable ASCII without spaces"),
        ({"api_key": "key\n"}, "printable ASCII without spaces"),
        ({"api_key": ""}, "non-empty"),
        ({"tls": True, "credentials": grpc.ssl_channel_credentials()}, "not both"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    settings: dict[str, Any], message: str, pem_file: Path, tmp_path: Path
) -> None:
    (tmp_path / "plain.txt").write_text("hello")
    resolved = {
        name: pem_file if value == "PEM" else tmp_path / "plain.txt" if value == "NOT_PEM" else value
        for name, value in settings.items()
    }
    with pytest.raises(InvalidArgumentError, match=message):
        channel_security(**resolved)


@pytest.mark.parametrize("client", [Client, AsyncClient])
def test_the_clients_take_exactly_the_connection_settings(client: type[Any]) -> None:
    # The clients spell the settings out for their users; the core hands them on by name.
    settings = inspect.signature(channel_security).parameters
    constructor = inspect.signature(client.__init__).parameters
    assert [constructor[name] for name in settings] == list(settings.values())
    assert list(constructor)[-len(settings) :] == list(settings)


def test_what_each_setting_makes(pem_file: Path) -> None:
    assert channel_security().credentials is None  # plaintext
    assert channel_security(api_key="k").metadata == (("authorization", "Bearer k"),)
    assert channel_security(tls=True).credentials is not None  # the system's roots
    assert channel_security(ca=pem_file).credentials is not None  # ca implies tls
    assert channel_security(ca=PEM, cert=pem_file, key=str(pem_file)).credentials is not None
    given = grpc.ssl_channel_credentials()
    assert channel_security(credentials=given, api_key="k").credentials is given


def test_auth_codes_have_their_own_errors() -> None:
    class Failed(grpc.RpcError):
        def __init__(self, code: grpc.StatusCode) -> None:
            self._code = code

        def code(self) -> grpc.StatusCode:
            return self._code

        def details(self) -> str:
            return "no"

    assert isinstance(from_rpc_error(Failed(grpc.StatusCode.UNAUTHENTICATED)), AuthenticationError)
    assert isinstance(from_rpc_error(Failed(grpc.StatusCode.PERMISSION_DENIED)), PermissionDeniedError)


def _common_options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in commands.choices[command]._actions}


@pytest.mark.parametrize("command", ["generate", "classify", "models", "health"])
def test_every_command_takes_the_connection_options(command: str) -> None:
    assert set(CONNECTION_OPTIONS) <= _common_options(build_parser(), command)


def test_the_cli_options_default_to_the_environment(monkeypatch: pytest.MonkeyPatch, pem_file: Path) -> None:
    monkeypatch.setenv("ATTNSERVE_TLS", "yes")
    monkeypatch.setenv("ATTNSERVE_TLS_CA", str(pem_file))
    monkeypatch.setenv("ATTNSERVE_TLS_CLIENT_CERT", "client.pem")
    monkeypatch.setenv("ATTNSERVE_TLS_CLIENT_KEY", "client.key")
    monkeypatch.setenv("ATTNSERVE_API_KEY", "attn_from_env")
    args = build_parser().parse_args(["models"])
    assert (args.tls, args.ca, args.cert, args.key, args.api_key) == (
        True,
        str(pem_file),
        "client.pem",
        "client.key",
        "attn_from_env",
    )
    assert build_parser().parse_args(["models", "--no-tls", "--api-key", "flag"]).api_key == "flag"


def test_the_cli_names_a_missing_certificate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["models", "--target", "127.0.0.1:1", "--ca", str(tmp_path / "missing.pem")]) == 1
    err = capsys.readouterr().err
    assert "cannot read the CA certificate" in err and "missing.pem" in err
