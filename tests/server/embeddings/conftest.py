"""A model repository with one random-weight model of each family, exported through attnserve-export
(which writes the embeddings graph), the PyTorch modules they came from, and a real server on it.

- ``emb-gpt``: the ``tiny`` GPT (learned positions), with ``config.yaml`` caps: 1000 texts per
  request and 32 tokens per text (room enough to exceed the 4 MiB token-wise limit).
- ``emb-gpt-rotary``: the ``tiny`` GPT with rotary positions (the shipped GPT's kind).
- ``emb-vit``: the ``tiny`` ViT (1 x 16 x 16, class token); ``emb-swin``: the ``tiny`` Swin (1 x 20 x 20).
- ``emb-legacy``: a ViT exported without the embeddings graph, as versions made before it existed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from attnserve_client import Client
from attnserve_export.gpt import GPT
from attnserve_export.gpt import PRESETS as GPT_PRESETS
from attnserve_export.image_data import ImageSpec
from attnserve_export.image_export import export_classifier
from attnserve_export.onnx_export import export_gpt
from attnserve_export.swin import PRESETS as SWIN_PRESETS
from attnserve_export.swin import Swin
from attnserve_export.tokenizer import train_bpe_tokenizer
from attnserve_export.vit import PRESETS as VIT_PRESETS
from attnserve_export.vit import ViT
from attnserve_server.model_format.preprocess import preprocess

LABELS = [str(i) for i in range(10)]
CORPUS = (
    "ROMEO.\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
    "Le café est très chaud; la crème brûlée est délicieuse. Grüße aus München! 日本語のテキストです。🙂\n"
)


@dataclass
class Reference:
    """The PyTorch modules behind the served models, and how the server sees their inputs."""

    modules: dict[str, torch.nn.Module]
    specs: dict[str, ImageSpec]
    tokenizer: Any

    def text_states(self, name: str, text: str) -> list[np.ndarray]:
        """Every layer ``(T, D)`` of one text, alone (no padding)."""
        ids = torch.tensor([self.tokenizer.encode(text).ids], dtype=torch.int64)
        model = self.modules[name]
        assert isinstance(model, GPT)
        with torch.no_grad():
            return [s[0].numpy() for s in model.hidden_states(ids, torch.ones_like(ids))]

    def image_states(self, name: str, png: bytes) -> list[np.ndarray]:
        """Every layer ``(T, D)`` of one image, preprocessed as the server does."""
        with Image.open(io.BytesIO(png)) as image:
            pixels = preprocess(image, self.specs[name])[None]  # (1, C, H, W)
        with torch.no_grad():
            return [s[0].numpy() for s in self.modules[name].hidden_states(torch.from_numpy(pixels))]  # type: ignore[operator]


def png(seed: int, size: int = 16) -> bytes:
    """A random grey PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _spec(size: int) -> ImageSpec:
    return ImageSpec(channels=1, height=size, width=size, resample="bilinear", mean=(0.5,), std=(0.5,))


@pytest.fixture(scope="session")
def embeddings_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    root = tmp_path_factory.mktemp("embedding-models")
    tokenizer = train_bpe_tokenizer([CORPUS * 8], vocab_size=400)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    modules: dict[str, torch.nn.Module] = {}
    for name, changes in (("emb-gpt", {}), ("emb-gpt-rotary", {"pos_encoding": "rotary"})):
        torch.manual_seed(1)
        modules[name] = GPT(GPT_PRESETS["tiny"].with_(vocab_size=vocab, **changes)).eval()
        export_gpt(modules[name], tokenizer, root / name / "1", kv_cache_layout="concat")
    (root / "emb-gpt" / "config.yaml").write_text("embeddings:\n  max_inputs: 1000\n  max_tokens_per_text: 32\n")
    specs = {"emb-vit": _spec(16), "emb-swin": _spec(20), "emb-legacy": _spec(16)}
    images = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    for name, build in (
        ("emb-vit", lambda: ViT(VIT_PRESETS["tiny"])),
        ("emb-swin", lambda: Swin(SWIN_PRESETS["tiny"])),
    ):
        torch.manual_seed(2)
        modules[name] = build().eval()
        size = specs[name].height
        export_classifier(
            modules[name],
            specs[name],
            LABELS,
            images[:, :, :size, :size]
            if size == 16
            else np.random.default_rng(0).standard_normal((4, 1, size, size)).astype(np.float32),
            root / name / "1",
        )
    # A version from before the embeddings graph: the same export, then the entry and file removed.
    legacy = root / "emb-legacy" / "1"
    export_classifier(modules["emb-vit"], specs["emb-vit"], LABELS, images, legacy)
    _drop_embeddings(legacy)
    return root, Reference(modules=modules, specs=specs, tokenizer=tokenizer)


def _drop_embeddings(version_dir: Path) -> None:
    import json

    metadata = json.loads((version_dir / "metadata.json").read_text())
    del metadata["image_classification"]["embeddings"]
    del metadata["image_classification"]["explain"]  # the same file holds both graphs
    (version_dir / "metadata.json").write_text(json.dumps(metadata))
    (version_dir / "explain.onnx").unlink()


@pytest.fixture(scope="session")
def reference(embeddings_reference: tuple[Path, Reference]) -> Reference:
    return embeddings_reference[1]


@pytest.fixture(scope="session")
def embeddings_server(embeddings_reference: tuple[Path, Reference], session_server_launcher: Callable[..., Any]) -> Any:
    return session_server_launcher(embeddings_reference[0])


@pytest.fixture(scope="session")
def embeddings_address(embeddings_server: Any) -> str:
    address: str = embeddings_server.address
    return address


@pytest.fixture
def client(embeddings_address: str) -> Iterator[Client]:
    with Client(embeddings_address, timeout=60) as c:
        yield c
