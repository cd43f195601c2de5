"""TLS and mTLS for the gRPC port, with certificates that rotate without a restart.

The server's credentials are gRPC's *dynamic* SSL credentials: gRPC asks
:meth:`CertificateFiles.fetch` for the certificate configuration at every new connection's
handshake. That runs often, so it only compares the files' modification times, sizes and inodes
with the last ones it read (three ``stat`` calls) and reads the files again only when one of them
changed. Connections already open keep the certificate they were made with; new ones get the new
one. Kubernetes updates a mounted Secret by swapping a symlink, which gives the files a new inode:
that counts as a change too (a ``subPath`` mount is never updated, so do not use one).

A new certificate and key are checked as a pair (Python's ``ssl`` loads them) before they are
served. A pair caught half-written (the certificate already new, the key still old) or broken is
refused with one ERROR line, and the previous one stays in force until the files change again.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

logger = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int] | None, ...]


class TlsError(Exception):
    """The certificate, its key or the client CA cannot be read or do not fit together."""


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _no_password() -> bytes:
    raise TlsError("the private key is encrypted; gRPC needs an unencrypted key (protect the file instead)")


@dataclass
class CertificateFiles:
    """The server's certificate chain and key and, for mTLS, the CAs that sign client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        self._signature: Signature | None = None
        self._refused: Signature | None = None

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key) if self.client_ca is None else (self.cert, self.key, self.client_ca)

    def signature(self) -> Signature:
        return tuple(_stat(path) for path in self._paths())

    def load(self) -> grpc.ServerCertificateConfiguration:
        """Read and check the files; raises TlsError naming the file and the problem."""
        signature = self.signature()
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror or exc}") from None
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            check.load_cert_chain(self.cert, self.key, password=_no_password)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"{self.cert} and {self.key} are not a PEM certificate chain and its key: {exc}") from None
        if ca is not None:
            try:
                check.load_verify_locations(cadata=ca.decode("ascii", errors="replace"))
            except (ssl.SSLError, ValueError) as exc:
                raise TlsError(f"{self.client_ca} holds no PEM CA certificate: {exc}") from None
        if self.signature() != signature:
            raise TlsError("the certificate files changed while they were read")
        self._signature = signature
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: a new configuration if the files changed, else None
        (keep the current one). Never raises: a failure here would fail the handshake."""
        try:
            signature = self.signature()
            if signature in (self._signature, self._refused):
                return None
            configuration = self.load()
        except TlsError as exc:
            logger.error("TLS certificate not rotated, the previous one stays in force: %s", exc)
            self._refused = signature
            return None
        except Exception:
            logger.exception("TLS certificate not rotated, the previous one stays in force")
            return None
        logger.info("TLS certificate reloaded from %s", self.cert)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials, loaded now (raises TlsError) and re-read by :meth:`fetch`."""
        initial = self.load()
        # grpc-stubs leave out that the fetcher may return None ("keep the current configuration").
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self.fetch)
        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=self.mutual)
