"""tritonclient, an independent KServe v2 client, through mTLS and an API key with its own options:
``ssl=True, root_certificates=, private_key=, certificate_chain=`` and ``headers={"authorization": ...}``."""

from __future__ import annotations

import contextlib
import functools
import queue
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from .conftest import Guarded, Pki

IMAGE_MODEL = "tiny-digits"
TIMEOUT = 30.0


@pytest.fixture
def secured(
    pki: Pki, image_repository: Path, tmp_path: Path, guarded_launcher: Callable[..., Guarded]
) -> Iterator[tuple[triton.InferenceServerClient, dict[str, str], str]]:
    """A tritonclient over mTLS to a server that also wants a key; the headers that carry the key."""
    ca, clients_ca = pki.ca("server-ca"), pki.ca("clients-ca")
    cert = pki.issue(ca, "server")
    client_cert = pki.issue(clients_ca, "triton", server=False)
    key_file = tmp_path / "keys.yaml"
    add = ["keys", "add", "triton", "--key-file", str(key_file), "--scopes", "infer,models:read"]
    added = subprocess.run(
        [sys.executable, "-m", "attnserve_server", *add],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = added.stdout.splitlines()[-1]
    server = guarded_launcher(
        image_repository,
        *("--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)),
        *("--tls-client-ca", str(clients_ca.cert_path), "--api-key-file", str(key_file)),
    )
    client = triton.InferenceServerClient(
        server.address,
        ssl=True,
        root_certificates=str(ca.cert_path),
        private_key=str(client_cert.key_path),
        certificate_chain=str(client_cert.cert_path),
    )
    yield client, {"authorization": f"Bearer {key}"}, key
    client.close()


def test_tritonclient_infers_over_mtls_with_a_key(
    secured: tuple[triton.InferenceServerClient, dict[str, str], str],
) -> None:
    client, headers, _ = secured
    assert client.is_server_live()  # open: probes need no key
    metadata = client.get_model_metadata(IMAGE_MODEL, headers=headers, as_json=True)
    (image_input,) = (i for i in metadata["inputs"] if i["datatype"] == "FP32")
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16)).astype(np.float32)
    tensor = triton.InferInput(image_input["name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(IMAGE_MODEL, [tensor], headers=headers, client_timeout=TIMEOUT)
    (output,) = metadata["outputs"]
    assert result.as_numpy(output["name"]).shape == (2, 10)


def test_tritonclient_streams_with_a_key(secured: tuple[triton.InferenceServerClient, dict[str, str], str]) -> None:
    client, headers, _ = secured
    responses: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=functools.partial(lambda sink, result, error: sink.put((result, error)), responses))
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    # The server refuses a keyless stream as it opens; tritonclient may learn that before this request is
    # queued, and then raises here (the callback has the server's error either way).
    with contextlib.suppress(InferenceServerException):
        client.async_stream_infer(IMAGE_MODEL, [tensor])
    result, error = responses.get(timeout=TIMEOUT)
    client.stop_stream()
    # The key passed (the stream was opened with no headers: refused)...
    assert result is None and "UNAUTHENTICATED" in str(error.status())

    client.start_stream(
        callback=functools.partial(lambda sink, result, error: sink.put((result, error)), responses), headers=headers
    )
    client.async_stream_infer(IMAGE_MODEL, [tensor])
    result, error = responses.get(timeout=TIMEOUT)
    client.stop_stream()
    # ...and with the key the request reaches the model, which refuses the bytes on their own merits.
    assert result is None and "INVALID_ARGUMENT" in str(error), error


def test_tritonclient_without_the_key_or_the_scope_is_refused(
    secured: tuple[triton.InferenceServerClient, dict[str, str], str],
) -> None:
    client, headers, _ = secured
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_repository_index()
    assert missing.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as denied:
        client.unload_model(IMAGE_MODEL, headers=headers)
    assert denied.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "models:control" in denied.value.message()
