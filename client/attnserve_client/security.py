"""How a client reaches a guarded server: TLS (and mTLS) channel credentials, and an API key.

:func:`channel_security` checks everything before anything is sent: a certificate file that is
missing, unreadable or not PEM, a client certificate without its key, or a key that cannot be
sent as metadata raises :class:`~attnserve_client.InvalidArgumentError` (a ``ValueError``) at once,
naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import grpc

from attnserve_client.errors import InvalidArgumentError

__all__ = ["AUTHORIZATION", "PemSource", "Security", "channel_security"]

AUTHORIZATION = "authorization"
PemSource = Union[str, "os.PathLike[str]", bytes]
"""A PEM file's path, or its contents as bytes."""


@dataclass(frozen=True, slots=True)
class Security:
    """What a client's channel and calls carry: channel credentials (None: plaintext) and call metadata."""

    credentials: grpc.ChannelCredentials | None = None
    metadata: tuple[tuple[str, str], ...] | None = None


def _pem(source: PemSource | None, what: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as pem:
                data = pem.read()
        except OSError as error:
            raise InvalidArgumentError(f"cannot read the {what} {os.fspath(source)!r}: {error.strerror}") from None
    else:
        raise InvalidArgumentError(f"the {what} must be a path or PEM bytes, got {type(source).__name__}")
    if b"-----BEGIN " not in data:
        shown = repr(os.fspath(source)) if not isinstance(source, bytes) else "given as bytes"
        raise InvalidArgumentError(f"the {what} {shown} is not PEM (no '-----BEGIN' line)")
    return data


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    if api_key is None:
        return None
    # gRPC metadata values are printable ASCII; a key copied with a newline would fail later, less clearly.
    if not isinstance(api_key, str) or not api_key or not all("!" <= c <= "~" for c in api_key):
        raise InvalidArgumentError("api_key must be a non-empty string of printable ASCII without spaces")
    return ((AUTHORIZATION, f"Bearer {api_key}"),)


def channel_security(
    *,
    tls: bool = False,
    ca: PemSource | None = None,
    cert: PemSource | None = None,
    key: PemSource | None = None,
    api_key: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Security:
    """The channel credentials and call metadata for these settings; see :class:`~attnserve_client.Client`.

    ``ca``, ``cert`` or ``key`` imply ``tls``. Without ``ca`` the system's root certificates verify
    the server. ``cert`` and ``key`` (a client certificate, for mTLS) go together.
    """
    metadata = _metadata(api_key)
    wants_tls = tls or any(source is not None for source in (ca, cert, key))
    if credentials is not None:
        if wants_tls:
            raise InvalidArgumentError("pass credentials, or tls/ca/cert/key, not both")
        return Security(credentials, metadata)
    if (cert is None) != (key is None):
        raise InvalidArgumentError("a client certificate (cert) and its private key (key) go together")
    if not wants_tls:
        return Security(None, metadata)
    root = _pem(ca, "CA certificate")
    chain = _pem(cert, "client certificate")
    private = _pem(key, "client key")
    return Security(grpc.ssl_channel_credentials(root, private, chain), metadata)
