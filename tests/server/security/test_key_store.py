"""The parts of API keys that need no server: the scope table, the token bucket, the key file and its store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnserve_server.api.auth import ANY_SCOPE, METHOD_SCOPES, OPEN, scope_of
from attnserve_server.security.keys import (
    SCOPES,
    KeyEntry,
    KeyFile,
    KeyFileError,
    KeyStore,
    bearer_token,
    hash_key,
    new_key,
    read_key_file,
    write_key_file,
)
from attnserve_server.security.rate_limit import TokenBucket
from attnserve_server.server import SERVICE_NAMES


def test_every_served_method_has_a_scope_in_the_table() -> None:
    from google.protobuf import descriptor_pool

    from attnserve_server.kserve.reflection import reflection_pool

    pool = reflection_pool(SERVICE_NAMES)
    missing = []
    for service in SERVICE_NAMES:
        if service.startswith("grpc.reflection."):
            continue  # needs a valid key of any scope (it describes the API, and is off by default with keys)
        found = None
        for candidate in (pool, descriptor_pool.Default()):
            try:
                found = candidate.FindServiceByName(service)
                break
            except KeyError:
                continue
        assert found is not None, service
        missing += [f"/{service}/{m.name}" for m in found.methods if f"/{service}/{m.name}" not in METHOD_SCOPES]
    assert not missing, f"methods without a scope: {missing}"
    assert set(METHOD_SCOPES.values()) == {*SCOPES, OPEN}
    assert scope_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == ANY_SCOPE


def test_the_bucket_allows_its_burst_then_refills_at_its_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60  # never more than the burst
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("abc", None),
        (b"x", None),
    ],
)
def test_bearer_token(value: str | bytes, token: str | None) -> None:
    assert bearer_token(value) == token


def _file(path: Path, *entries: KeyEntry) -> None:
    write_key_file(path, KeyFile(keys=entries))


def test_the_store_identifies_keys_and_keeps_buckets_across_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    one, two = new_key(), new_key()
    limited = KeyEntry(name="one", sha256=hash_key(one), scopes=("infer",), rate=0.001, burst=1)
    _file(path, limited)
    store = KeyStore(path)
    first = store.identify(one)
    assert first is not None and first.name == "one" and first.scopes == {"infer"}
    assert first.bucket is not None and first.bucket.take() and not first.bucket.take()
    assert store.identify(two) is None and store.identify(None) is None

    _file(path, limited, KeyEntry(name="two", sha256=hash_key(two), scopes=("models:read",)))
    again = store.identify(one)
    assert again is not None and again.bucket is first.bucket  # what the key spent stays spent
    assert store.identify(two) is not None and store.names == ("one", "two")

    os.unlink(path)  # gone: the keys read before stay in force
    assert store.identify(two) is not None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("keys: [{name: a, sha256: " + "a" * 64 + ", scopes: [admin]}]", "scopes"),
        ("keys: [{name: 'a b', sha256: " + "a" * 64 + ", scopes: [infer]}]", "name"),
        ("keys: [{name: a, sha256: " + "a" * 64 + ", scopes: [infer], burst: 3}]", "a burst needs a rate"),
        ("keys: [{name: a, sha256: " + "a" * 64 + ", scopes: [infer], key: x}]", "Extra inputs"),
        (
            "keys: [{name: a, sha256: "
            + "a" * 64
            + ", scopes: [infer]}, {name: a, sha256: "
            + "b" * 64
            + ", scopes: [infer]}]",
            "same name",
        ),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_invalid_key_files_are_refused_with_the_reason(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=needle):
        read_key_file(path)


def test_json_and_yaml_files_read_the_same(tmp_path: Path) -> None:
    entries = (KeyEntry(name="ci", sha256=hash_key("k"), scopes=("infer", "models:read"), rate=5),)
    for name in ("keys.json", "keys.yaml"):
        _file(tmp_path / name, *entries)
        assert read_key_file(tmp_path / name).keys == entries
    assert entries[0].bucket_size() == 5
    assert read_key_file(tmp_path / "keys.json") == read_key_file(tmp_path / "keys.yaml")
