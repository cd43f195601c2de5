"""API keys: the key file, its hashes, scopes and rate limits, and the store that serves and reloads it.

A key is a random string (``attn_`` and 43 URL-safe characters: 256 bits). The key file stores
only its SHA-256, which is enough for a random, high-entropy key (a slow password KDF protects
guessable secrets; nobody can guess 256 random bits). The file is YAML or JSON (YAML reads both)::

    keys:
    - name: ci-bot                      # shown in logs and in the metrics' key label
      sha256: 5e8f...                   # hex SHA-256 of the key
      scopes: [infer, models:read]      # what the key may call
      rate: 10                          # optional: requests per second, on average
      burst: 20                         # optional: requests at once (default: the rate, rounded up)

:class:`KeyStore` identifies a presented key by comparing its hash with every stored hash in
constant time (``hmac.compare_digest``, without stopping at a match), and re-reads the file when
its modification time, size or inode changes (one ``stat`` per call).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attnserve_server.security.rate_limit import TokenBucket

logger = logging.getLogger(__name__)

Scope = Literal["infer", "models:read", "models:control"]
INFER: Scope = "infer"
MODELS_READ: Scope = "models:read"
MODELS_CONTROL: Scope = "models:control"
SCOPES: tuple[Scope, ...] = (INFER, MODELS_READ, MODELS_CONTROL)

KEY_PREFIX = "attn_"
KEY_BYTES = 32
# Names end up in log lines and metric labels: short, and nothing that needs quoting.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
BEARER = "bearer"


class KeyFileError(Exception):
    """The key file cannot be read, or does not hold valid keys."""


class KeyEntry(BaseModel):
    """One key as the file stores it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    scopes: tuple[Scope, ...] = Field(min_length=1)
    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False, description="requests per second")
    burst: int | None = Field(default=None, ge=1, description="requests at once; default: the rate, rounded up")

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> KeyEntry:
        if self.burst is not None and self.rate is None:
            raise ValueError(f"key {self.name!r}: a burst needs a rate")
        return self

    def bucket_size(self) -> int | None:
        """The burst in force: the one given, else the rate rounded up; None without a rate limit."""
        if self.rate is None:
            return None
        return self.burst if self.burst is not None else max(1, math.ceil(self.rate))


class KeyFile(BaseModel):
    """The whole key file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [entry.name for entry in self.keys]
        hashes = [entry.sha256 for entry in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("two keys have the same name")
        if len(set(hashes)) != len(hashes):
            raise ValueError("two keys have the same hash")
        return self


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as the key file stores it."""
    return hashlib.sha256(key.encode("utf-8", errors="surrogateescape")).hexdigest()


def bearer_token(value: str | bytes | None) -> str | None:
    """The key of an ``authorization: Bearer <key>`` value; None if the value is no bearer credential."""
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == BEARER and token else None


def read_key_file(path: Path) -> KeyFile:
    """Parse and check a key file (YAML or JSON); an empty file holds no keys."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"the key file {path} is not valid YAML or JSON: {exc}") from None
    try:
        return KeyFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise KeyFileError(f"the key file {path} is invalid: {problems}") from None


def write_key_file(path: Path, keys: KeyFile) -> None:
    """Write ``keys`` to ``path`` (JSON if it ends in ``.json``, else YAML), atomically: a server that
    re-reads the file sees the old one or the new one, never half of one."""
    data = keys.model_dump(mode="json", exclude_none=True)
    if path.suffix.lower() == ".json":
        text = json.dumps(data, indent=2) + "\n"
    else:
        text = "# attnserve API keys: only SHA-256 hashes of the keys are stored here.\n"
        text += yaml.safe_dump(data, sort_keys=False)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)  # hashes only: a server running as another user must read it
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key the server accepts: its name, hash, scopes and, with a rate limit, its bucket."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    bucket: TokenBucket | None


FileSignature = tuple[int, int, int]


def _signature(path: Path) -> FileSignature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def _api_keys(entries: Sequence[KeyEntry], old: Sequence[ApiKey]) -> tuple[ApiKey, ...]:
    """The keys of a file; one whose name and limits did not change keeps its bucket (and what it spent)."""
    buckets = {key.name: key.bucket for key in old}
    keys = []
    for entry in entries:
        size = entry.bucket_size()
        bucket = None
        if entry.rate is not None and size is not None:
            kept = buckets.get(entry.name)
            same = kept is not None and (kept.rate, kept.burst) == (entry.rate, size)
            bucket = kept if same else TokenBucket(entry.rate, size)
        keys.append(ApiKey(entry.name, bytes.fromhex(entry.sha256), frozenset(entry.scopes), bucket))
    return tuple(keys)


class KeyStore:
    """The keys of one key file, re-read when the file changes.

    A file that turns unreadable or invalid is reported once (ERROR) and the keys read before stay
    in force: a bad edit must not lock every client out. Raises :class:`KeyFileError` at
    construction when the file is bad from the start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = _signature(path)
        self._keys = _api_keys(read_key_file(path).keys, ())
        self._failed: FileSignature | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self._keys)

    def identify(self, presented: str | None) -> ApiKey | None:
        """The key whose hash matches ``presented``; None for no key or an unknown one."""
        self.refresh()
        if presented is None:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", errors="surrogateescape")).digest()
        found = None
        for key in self._keys:  # every hash is compared: the time taken says nothing about which matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found

    def refresh(self) -> None:
        """Re-read the file if its modification time, size or inode changed since the last read."""
        signature = _signature(self.path)
        if signature == self._signature or (signature is not None and signature == self._failed):
            return
        if signature is None:
            if self._failed is None:
                kept = len(self._keys)
                logger.error("the key file %s is gone; the %d keys read before stay in force", self.path, kept)
                self._failed = (-1, -1, -1)
            return
        try:
            entries = read_key_file(self.path).keys
        except KeyFileError as exc:
            logger.error("%s; the %d keys read before stay in force", exc, len(self._keys))
            self._failed = signature
            return
        self._keys = _api_keys(entries, self._keys)
        self._signature, self._failed = signature, None
        logger.info("read %d API key(s) from %s", len(self._keys), self.path)
