"""A model repository with one random-weight model of each layout, exported through attnserve-export
(which writes the explain graph), the PyTorch modules they came from, and a real server on it.

- ``ex-gpt``: the ``tiny`` GPT with rotary positions and a 1024-token context, ``config.yaml``
  raising the explain token cap to 1000 (room to exceed the 4 MiB response limit);
- ``ex-gpt-capped``: the same files, capped at 8 tokens and 2 maps;
- ``ex-vit``: the ``tiny`` ViT (1 x 16 x 16); ``ex-swin``: the ``tiny`` Swin (1 x 20 x 20: a 10 x 10
  first stage in 4 x 4 windows, so padded edges and shifted blocks);
- ``ex-translator``: the ``tiny`` encoder-decoder, with target-language tags;
- ``ex-legacy``: the ViT with its metadata's explain entry removed, as versions made before it.

Tests call the server through the generated ``attnserve.v1`` stubs, as a client in any language would.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from attnserve_client.pb import explain_pb2, explain_pb2_grpc
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
    "The cat sat on the mat. ROMEO.\nBut soft, what light through yonder window breaks?\n"
    "Le café est très chaud; la crème brûlée est délicieuse. Grüße aus München! 日本語のテキストです。🙂\n"
)


@dataclass
class Reference:
    """The PyTorch modules behind the served models, and how the server sees their inputs."""

    modules: dict[str, Any]
    specs: dict[str, ImageSpec]
    tokenizer: Any  # the GPTs' tokenizers.Tokenizer
    translator_tokenizer: Any

    def pixels(self, name: str, png: bytes) -> torch.Tensor:
        """One image ``(1, C, H, W)``, preprocessed as the server does."""
        with Image.open(io.BytesIO(png)) as image:
            return torch.from_numpy(preprocess(image, self.specs[name])[None])


def png(seed: int, size: int = 16) -> bytes:
    """A random grey PNG."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _spec(size: int) -> ImageSpec:
    return ImageSpec(channels=1, height=size, width=size, resample="bilinear", mean=(0.5,), std=(0.5,))


def _export_translator(root: Path) -> tuple[Any, Any]:
    from attnserve_export.number_data import LANGUAGES, fixed_set, tag, train_tokenizer
    from attnserve_export.seq2seq import PRESETS, Seq2Seq
    from attnserve_export.translator_export import export_translator

    tokenizer = train_tokenizer(max_number=9_999, vocab_size=300)
    config = PRESETS["tiny"].with_(vocab_size=tokenizer.get_vocab_size(), source_context=32, target_context=64)
    torch.manual_seed(0)
    model = Seq2Seq(config).eval()
    export_translator(
        model,
        tokenizer,
        root / "ex-translator" / "1",
        target_tags=[tag(lang) for lang in LANGUAGES],
        parity_sources=[e.source for e in fixed_set("test", 4, 9_999)],
        description="random weights, for tests",
    )
    return model, tokenizer


@pytest.fixture(scope="session")
def explain_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Reference]:
    root = tmp_path_factory.mktemp("explain-models")
    tokenizer = train_bpe_tokenizer([CORPUS * 8], vocab_size=400)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    modules: dict[str, Any] = {}
    torch.manual_seed(1)
    config = GPT_PRESETS["tiny"].with_(vocab_size=vocab, pos_encoding="rotary", context_length=1024)
    modules["ex-gpt"] = GPT(config).eval()
    export_gpt(modules["ex-gpt"], tokenizer, root / "ex-gpt" / "1")
    (root / "ex-gpt" / "config.yaml").write_text("explain:\n  max_tokens: 1000\n")
    shutil.copytree(root / "ex-gpt" / "1", root / "ex-gpt-capped" / "1")
    (root / "ex-gpt-capped" / "config.yaml").write_text("explain:\n  max_tokens: 8\n  max_maps: 2\n")
    specs = {"ex-vit": _spec(16), "ex-swin": _spec(20), "ex-legacy": _spec(16)}
    for name, build in (("ex-vit", lambda: ViT(VIT_PRESETS["tiny"])), ("ex-swin", lambda: Swin(SWIN_PRESETS["tiny"]))):
        torch.manual_seed(2)
        modules[name] = build().eval()
        size = specs[name].height
        images = np.random.default_rng(0).standard_normal((4, 1, size, size)).astype(np.float32)
        export_classifier(modules[name], specs[name], LABELS, images, root / name / "1")
    shutil.copytree(root / "ex-vit" / "1", root / "ex-legacy" / "1")
    metadata_file = root / "ex-legacy" / "1" / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata["image_classification"]["explain"]
    metadata_file.write_text(json.dumps(metadata))
    modules["ex-translator"], translator_tokenizer = _export_translator(root)
    return root, Reference(modules, specs, tokenizer, translator_tokenizer)


@pytest.fixture(scope="session")
def reference(explain_reference: tuple[Path, Reference]) -> Reference:
    return explain_reference[1]


@pytest.fixture(scope="session")
def explain_server(explain_reference: tuple[Path, Reference], session_server_launcher: Callable[..., Any]) -> Any:
    return session_server_launcher(explain_reference[0])


@pytest.fixture
def channel(explain_server: Any) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(explain_server.address) as ch:
        yield ch


@pytest.fixture
def explain(channel: grpc.Channel) -> Callable[..., explain_pb2.ExplainResponse]:
    """Call Explain with the given request fields (a 60 s deadline)."""
    stub = explain_pb2_grpc.ExplainServiceStub(channel)

    def call(**fields: Any) -> explain_pb2.ExplainResponse:
        response: explain_pb2.ExplainResponse = stub.Explain(explain_pb2.ExplainRequest(**fields), timeout=60)
        return response

    return call


def tensor(message: explain_pb2.Tensor) -> np.ndarray:
    """A response tensor as a numpy array of its shape."""
    return np.asarray(message.values, dtype=np.float32).reshape(tuple(message.shape))
