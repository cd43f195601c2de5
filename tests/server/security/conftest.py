"""Fixtures of the security tests: certificates made here with ``cryptography``, key files, and servers
guarded by them.

- ``pki``: a :class:`Pki` in a fresh folder: ``pki.ca(name)`` makes a CA, ``pki.issue(ca, name,
  server=True)`` a certificate it signs (for 127.0.0.1 and localhost), written as PEM files.
- ``guarded_launcher``: ``launch(repository, *flags)`` starts a real server with a plaintext health
  port (``--health-port``) and waits on that port until it is SERVING, since its main port may
  demand TLS and a key; returns a :class:`Guarded` (main address, health address, the process).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

START_TIMEOUT_S = 60.0
SERVING = health_pb2.HealthCheckResponse.SERVING
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, in memory and as PEM files."""

    name: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_path.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_path.read_bytes()


class Pki:
    """Makes CAs and the certificates they sign, as files in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _write(self, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
        cert_path, key_path = self.root / f"{name}.crt", self.root / f"{name}.key"
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return Issued(name, certificate, key, cert_path, key_path)

    def ca(self, name: str) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(CA_KEY_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        return self._write(name, certificate, key)

    def issue(self, ca: Issued, name: str, *, server: bool = True, file_name: str | None = None) -> Issued:
        """A certificate for ``name`` signed by ``ca``: a server's (for 127.0.0.1 and localhost) or a client's."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(ca.key, hashes.SHA256())
        return self._write(file_name or name, certificate, key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    return Pki(root)


@dataclass(frozen=True)
class Guarded:
    """A server whose main port may demand TLS and keys, and its plaintext health port."""

    address: str
    health_address: str
    server: Any  # tests/conftest.py's ServerProcess

    def stderr(self) -> str:
        return str(self.server.stderr())


def wait_for_health(server: Any, health_address: str) -> None:
    """Poll grpc.health.v1 on the plaintext health port until SERVING; fail with the log if the server dies."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(health_address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.stderr()}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not SERVING after {START_TIMEOUT_S:.0f} s:\n{server.stderr()}")
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def guarded_launcher(server_launcher: Callable[..., Any]) -> Callable[..., Guarded]:
    """``launch(repository, *flags, env=None)``: a real server with a plaintext health port, SERVING."""

    def launch(repository: Path, *flags: str, env: dict[str, str] | None = None) -> Guarded:
        health_port = free_port()
        server = server_launcher(repository, "--health-port", str(health_port), *flags, env=env, wait=False)
        health_address = f"127.0.0.1:{health_port}"
        wait_for_health(server, health_address)
        return Guarded(server.address, health_address, server)

    return launch
