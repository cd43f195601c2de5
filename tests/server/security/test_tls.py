"""TLS and mTLS on the gRPC port, against real servers, with certificates made in the test.

Rotation: the certificate files are rewritten while the server runs, and a NEW connection must be
served the new certificate (its serial number is read from the handshake).
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from attnserve_client import Client, UnavailableError

from .conftest import Guarded, Issued, Pki

MODEL = "tiny-gpt"


def served_certificate(address: str, ca: Path, client: Issued | None = None) -> x509.Certificate:
    """The certificate a new TLS connection to ``address`` is served (verified against ``ca``)."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def replace(path: Path, data: bytes) -> None:
    """Write a file the way Kubernetes updates a mounted Secret: a new file put in place at once."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@pytest.fixture
def tls_server(pki: Pki, tiny_repository: Path, guarded_launcher: Callable[..., Guarded]) -> tuple[Guarded, Issued]:
    ca = pki.ca("test-ca")
    cert = pki.issue(ca, "server-one", file_name="server")
    server = guarded_launcher(tiny_repository, "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path))
    return server, ca


def test_tls_calls_succeed_with_the_servers_ca(tls_server: tuple[Guarded, Issued]) -> None:
    server, ca = tls_server
    with Client(server.address, ca=ca.cert_path, timeout=30) as client:
        assert [model.name for model in client.models()] == [MODEL]
        assert client.generate("ROMEO:", model=MODEL, max_new_tokens=3, seed=1).usage.completion_tokens == 3
        assert client.health()
    assert "listening on" in server.stderr() and "(TLS;" in server.stderr()


def test_tls_refuses_plaintext_and_a_wrong_ca(tls_server: tuple[Guarded, Issued], pki: Pki) -> None:
    server, _ = tls_server
    with Client(server.address, retries=0, timeout=5) as plaintext, pytest.raises(UnavailableError):
        plaintext.models()
    other = pki.ca("other-ca")
    with Client(server.address, ca=other.cert_path, retries=0, timeout=5) as wrong, pytest.raises(UnavailableError):
        wrong.models()


def test_mtls_needs_a_client_certificate_from_the_client_ca(
    pki: Pki, tiny_repository: Path, guarded_launcher: Callable[..., Guarded]
) -> None:
    ca = pki.ca("server-ca")
    clients_ca = pki.ca("clients-ca")
    cert = pki.issue(ca, "server")
    flags = ["--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)]
    server = guarded_launcher(tiny_repository, *flags, "--tls-client-ca", str(clients_ca.cert_path))
    good = pki.issue(clients_ca, "client-good", server=False)
    stranger = pki.issue(pki.ca("stranger-ca"), "client-stranger", server=False)

    with Client(server.address, ca=ca.cert_path, cert=good.cert_path, key=good.key_path, timeout=30) as client:
        assert [model.name for model in client.models()] == [MODEL]
    with Client(server.address, ca=ca.cert_path, retries=0, timeout=5) as anonymous, pytest.raises(UnavailableError):
        anonymous.models()
    with (
        Client(
            server.address, ca=ca.cert_path, cert=stranger.cert_path, key=stranger.key_path, retries=0, timeout=5
        ) as foreign,
        pytest.raises(UnavailableError),
    ):
        foreign.models()
    assert "(mTLS;" in server.stderr()


def test_a_rotated_certificate_is_served_to_new_connections(tls_server: tuple[Guarded, Issued], pki: Pki) -> None:
    server, ca = tls_server
    before = served_certificate(server.address, ca.cert_path)
    assert before.subject.rfc4514_string() == "CN=server-one"
    with Client(server.address, ca=ca.cert_path, timeout=30) as old_channel:
        old_channel.models()

        rotated = pki.issue(ca, "server-two", file_name="rotated")
        # Rewritten in place, the key after the certificate, as `cp` or an editor would.
        (pki.root / "server.crt").write_bytes(rotated.cert_pem)
        (pki.root / "server.key").write_bytes(rotated.key_pem)

        after = served_certificate(server.address, ca.cert_path)
        assert after.serial_number == rotated.certificate.serial_number != before.serial_number
        assert after.subject.rfc4514_string() == "CN=server-two"
        with Client(server.address, ca=ca.cert_path, timeout=30) as new_channel:
            assert [model.name for model in new_channel.models()] == [MODEL]
        old_channel.models()  # the connection made before keeps working
    assert "TLS certificate reloaded" in server.stderr()


def test_a_mismatched_pair_is_not_served_until_it_is_whole(tls_server: tuple[Guarded, Issued], pki: Pki) -> None:
    server, ca = tls_server
    before = served_certificate(server.address, ca.cert_path)
    rotated = pki.issue(ca, "server-three", file_name="rotated")
    replace(pki.root / "server.crt", rotated.cert_pem)  # the key is still the old one: a half-done rotation

    assert served_certificate(server.address, ca.cert_path).serial_number == before.serial_number
    assert "TLS certificate not rotated" in server.stderr()

    replace(pki.root / "server.key", rotated.key_pem)
    assert served_certificate(server.address, ca.cert_path).serial_number == rotated.certificate.serial_number


def test_the_health_port_is_plaintext_beside_a_tls_port(tls_server: tuple[Guarded, Issued]) -> None:
    server, _ = tls_server
    with Client(server.health_address, retries=0, timeout=5) as probe:
        assert probe.health()
    with Client(server.address, retries=0, timeout=5) as plaintext:
        assert not plaintext.health()  # the main port does not speak plaintext


@pytest.mark.parametrize(
    ("problem", "needle"),
    [
        ("mismatched", "are not a PEM certificate chain and its key"),
        ("missing", "cannot read"),
    ],
)
def test_bad_certificate_files_stop_the_server_at_startup(
    pki: Pki, tiny_repository: Path, server_launcher: Callable[..., object], problem: str, needle: str
) -> None:
    ca = pki.ca("ca")
    one, two = pki.issue(ca, "one"), pki.issue(ca, "two")
    key = two.key_path if problem == "mismatched" else pki.root / "absent.key"
    server = server_launcher(tiny_repository, "--tls-cert", str(one.cert_path), "--tls-key", str(key), wait=False)
    assert server.process.wait(60) == 1  # type: ignore[attr-defined]
    assert needle in server.stderr()  # type: ignore[attr-defined]


def test_half_a_tls_setting_is_an_invalid_setting(
    pki: Pki, tiny_repository: Path, server_launcher: Callable[..., object]
) -> None:
    ca = pki.ca("ca")
    server = server_launcher(tiny_repository, "--tls-cert", str(ca.cert_path), wait=False)
    assert server.process.wait(60) == 2  # type: ignore[attr-defined]
    assert "tls_cert and tls_key go together" in server.stderr()  # type: ignore[attr-defined]
