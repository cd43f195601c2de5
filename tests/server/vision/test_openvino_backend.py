"""The OpenVINO backend for image models, through real servers and the real client.

- The shipped digit models (fp32 version 1) on OpenVINO bf16 give the same top-1 as on ONNX
  Runtime for every image of the digits test split; one model chooses OpenVINO in its config.yaml,
  the other takes the server-wide ``--image-backend openvino``.
- A failed parity check refuses the load and says why: once with a tolerance set tighter than
  bf16 can meet, and once on the shipped int8 version, whose ONNX Runtime dynamic-quantization
  ops OpenVINO computes its own way (its logits really differ, even at f32).
- A server where ``import openvino`` fails (simulated by a shadow package on PYTHONPATH) refuses
  a model that asks for it, with the reason, and serves the others.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as triton

from attnserve_client import Client

REPO = Path(__file__).resolve().parents[3]
SHIPPED = REPO / "models"
# Skipped where the extra is missing, except in CI, where `make test` installs it: there it must run.
needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None and not os.environ.get("CI"),
    reason="attnserve-server[openvino] is not installed; `make test` installs it",
)


def digit_test_pngs() -> tuple[list[bytes], list[int]]:
    """The 360 images of the fixed digits test split, as PNG files."""
    from attnserve_export.image_data import load_digits_splits

    images, labels = [], []
    for image, label in load_digits_splits().test:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(buffer.getvalue())
        labels.append(label)
    return images, labels


def shipped_copy(root: Path, model: str, name: str, config: str) -> None:
    """``root/name``: the shipped ``model`` with ``config`` as its config.yaml."""
    shutil.copytree(SHIPPED / model, root / name, ignore=shutil.ignore_patterns("README.md", "config.yaml"))
    (root / name / "config.yaml").write_text(config)


def top1(client: Client, model: str, images: list[bytes]) -> list[int]:
    found: list[int] = []
    for start in range(0, len(images), 64):
        batch = client.classify_batch(images[start : start + 64], model=model, top_k=1)
        found += [predictions[0].index for predictions in batch]
    return found


def repository_index(address: str) -> dict[str, tuple[str, str]]:
    """Each model's state and reason, as the v2 repository index reports them."""
    with triton.InferenceServerClient(address) as client:
        return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


VERSION_1 = "version_policy:\n  specific:\n    versions: [1]\n"


@needs_openvino
def test_openvino_bf16_classifies_the_shipped_digit_models_like_onnx_runtime(
    tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    root = tmp_path / "models"
    shipped_copy(root, "digits-vit", "vit-openvino", VERSION_1 + "backend: openvino\nprecision: bf16\n")
    shipped_copy(root, "digits-swin", "swin-openvino", VERSION_1)  # the server-wide default below
    shipped_copy(root, "digits-vit", "vit-ort", VERSION_1 + "backend: onnxruntime\n")
    shipped_copy(root, "digits-swin", "swin-ort", VERSION_1 + "backend: onnxruntime\n")
    server = server_launcher(root, "--image-backend", "openvino", "--image-precision", "bf16")
    log = server.stderr()
    for name, engine in (
        ("vit-openvino", "OpenVINO bf16"),
        ("swin-openvino", "OpenVINO bf16"),
        ("vit-ort", "ONNX Runtime f32"),
        ("swin-ort", "ONNX Runtime f32"),
    ):
        assert f"loaded model {name} version 1" in log and engine in log.split(f"loaded model {name} version 1")[1]
    assert "agrees with ONNX Runtime" in log
    images, labels = digit_test_pngs()
    with Client(server.address, timeout=120.0) as client:
        for family in ("vit", "swin"):
            on_openvino = top1(client, f"{family}-openvino", images)
            on_ort = top1(client, f"{family}-ort", images)
            differ = [i for i, (a, b) in enumerate(zip(on_openvino, on_ort, strict=True)) if a != b]
            assert not differ, f"{family}: top-1 differs on test images {differ}"
            correct = sum(p == label for p, label in zip(on_openvino, labels, strict=True))
            assert correct >= 0.97 * len(labels), f"{family} on OpenVINO: {correct}/{len(labels)}"


@needs_openvino
def test_a_failed_parity_check_refuses_the_load_with_the_figures(
    tmp_path: Path, server_launcher: Callable[..., Any]
) -> None:
    root = tmp_path / "models"
    # bf16 rounds the logits by about 1 % of their scale: a tolerance of 1e-6 cannot be met.
    shipped_copy(root, "digits-vit", "too-tight", VERSION_1 + "backend: openvino\nparity_tolerance: 1.0e-6\n")
    # Version 2 is ONNX Runtime's int8 dynamic quantization of version 1.
    int8 = "version_policy:\n  specific:\n    versions: [2]\nbackend: openvino\nprecision: f32\n"
    shipped_copy(root, "digits-vit", "int8-on-openvino", int8)
    shipped_copy(root, "digits-vit", "int8-on-ort", "version_policy:\n  specific:\n    versions: [2]\n")
    server = server_launcher(root, "--exit-on-error=false", "--strict-readiness=false")
    states = repository_index(server.address)
    for name in ("too-tight", "int8-on-openvino"):
        state, reason = states[name]
        assert state == "UNAVAILABLE", (name, state)
        assert "disagrees with ONNX Runtime on 8 generated inputs" in reason, reason
        assert "max |Δlogit|" in reason and "tolerance" in reason, reason
        assert str(root) not in reason
    assert "tolerance 1e-06" in states["too-tight"][1] and "OpenVINO (bf16)" in states["too-tight"][1]
    assert "OpenVINO (f32)" in states["int8-on-openvino"][1]
    assert states["int8-on-ort"][0] == "READY"  # the same file serves on ONNX Runtime
    with Client(server.address, timeout=60.0) as client:
        images, _ = digit_test_pngs()
        assert len(client.classify_batch(images[:4], model="int8-on-ort", top_k=1)) == 4


def test_a_backend_that_is_not_installed_refuses_the_load(tmp_path: Path, server_launcher: Callable[..., Any]) -> None:
    # What a server without attnserve-server[openvino] sees: `import openvino` fails.
    shadow = tmp_path / "no-openvino"
    (shadow / "openvino").mkdir(parents=True)
    (shadow / "openvino" / "__init__.py").write_text("raise ImportError(\"No module named 'openvino'\")\n")
    root = tmp_path / "models"
    shipped_copy(root, "digits-vit", "wants-openvino", "backend: openvino\n")
    shipped_copy(root, "digits-swin", "on-ort", "")
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    server = server_launcher(root, "--exit-on-error=false", "--strict-readiness=false", env={"PYTHONPATH": path})
    state, reason = repository_index(server.address)["wants-openvino"]
    assert state == "UNAVAILABLE"
    assert "backend openvino is not installed in this server" in reason, reason
    assert "attnserve-server[openvino]" in reason
    with Client(server.address, timeout=60.0) as client:
        images, _ = digit_test_pngs()
        assert len(client.classify_batch(images[:2], model="on-ort", top_k=1)) == 2
